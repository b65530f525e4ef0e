"""A real ``celery flower`` process watching a real snakepit worker with ``-E``.

Flower shows a snakepit task in exactly the states plain Celery shows
(STARTED, RETRY, SUCCESS, FAILURE; never a custom one), counts Celery's task
events in ``flower_events_total`` and every snakepit event in its per-worker
event counter (``/workers?json=1``). Flower's task page and API show only
Celery's own task fields, so the run facts come from ``celery snakepit task``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import states
from prometheus_client.parser import text_string_to_metric_families

from snakepit_celery.breaker import CircuitBreaker
from snakepit_celery.celery.task import TASK_FACTS_EVENT
from snakepit_celery.store import Store, store_from_url
from snakepit_celery.testing import wait_until
from snakepit_celery.testing.workers import WorkerNode
from tests.apps.observe_app import GATE, add_tasks
from tests.support.cli import run
from tests.support.events import Capture
from tests.support.fleet import CPU_HARDWARE, ROOT, make_app, write_hardware

pytest.importorskip("flower")

APP = "tests.apps.observe_app"
NODE = "obs@test"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FlowerWatch:
    """A worker (prefork, ``-E``) and a Flower process on a free port, on one test's Redis keys."""

    def __init__(self, redis_url: str, key_prefix: str, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.app = add_tasks(make_app(redis_url, key_prefix))
        self.store: Store = store_from_url(redis_url, key_prefix=key_prefix)
        self.port = free_port()
        env = {
            "WORKER_APP_REDIS_URL": redis_url,
            "WORKER_APP_KEY_PREFIX": key_prefix,
            "PYTHONPATH": str(ROOT),
            "SNAKEPIT_HARDWARE": str(write_hardware(tmp_path / "hw.json", CPU_HARDWARE)),
        }
        self.env = env
        self.worker = WorkerNode(
            APP,
            NODE,
            concurrency=2,
            env=env,
            extra_args=("-E",),
            cwd=str(ROOT),
            pool="prefork",
            flags=("--without-mingle", "--without-gossip"),
            log_path=tmp_path / "worker.log",
        )
        self.flower: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.worker.start().wait_ready(60)
        with (self.tmp_path / "flower.log").open("wb") as out:
            self.flower = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    APP,
                    "flower",
                    f"--port={self.port}",
                    "--address=127.0.0.1",
                ],
                env={**os.environ, **self.env, "FLOWER_UNAUTHENTICATED_API": "true"},
                cwd=str(ROOT),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(self._answers, 60, what="flower to answer")
        wait_until(lambda: NODE in self.get("/api/workers?refresh=1"), 60, what="flower's worker")

    def _answers(self) -> bool:
        try:
            self.get("/healthcheck", raw=True)
        except OSError:
            return False
        return True

    def get(self, path: str, *, raw: bool = False) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read().decode()
        return body if raw else json.loads(body)

    def task(self, task_id: str) -> dict[str, Any] | None:
        try:
            info: dict[str, Any] = self.get(f"/api/task/info/{task_id}")
        except OSError:
            return None
        return info

    def state_of(self, task_id: str, state: str, timeout: float = 30) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            info = self.task(task_id)
            return info if info is not None and info["state"] == state else None

        return wait_until(reached, timeout, what=f"task {task_id} {state} in flower")

    def close(self) -> None:
        if self.flower is not None:
            self.flower.terminate()
            try:
                self.flower.wait(10)
            except subprocess.TimeoutExpired:
                self.flower.kill()
        self.worker.stop()
        client = self.app.broker_connection().default_channel.client
        keys = list(client.scan_iter(match=f"{self.store.key_prefix}*", count=500))
        if keys:
            client.delete(*keys)
        self.app.close()


@pytest.fixture(scope="module")
def watch(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[FlowerWatch]:
    tmp_path = tmp_path_factory.mktemp("flower")
    running = FlowerWatch(redis_url, f"snakepit-test-flower-{os.getpid()}", tmp_path)
    try:
        running.start()
        yield running
    finally:
        running.close()


def test_a_running_task_is_started_then_success(watch: FlowerWatch) -> None:
    release = watch.tmp_path / "release"
    result = watch.app.tasks["observe.hold"].delay(str(release))
    watch.state_of(result.id, states.STARTED)
    assert result.id in watch.get("/api/tasks?state=STARTED")
    release.write_text("go")
    info = watch.state_of(result.id, states.SUCCESS)
    assert info["worker"] == NODE
    assert info["exception"] is None


def test_a_retrying_task_is_retry_then_success(watch: FlowerWatch) -> None:
    result = watch.app.tasks["observe.flaky"].delay(str(watch.tmp_path / "flaky"))
    info = watch.state_of(result.id, states.RETRY)
    assert "first attempt fails" in info["exception"]
    watch.state_of(result.id, states.SUCCESS)


def test_a_task_deferred_by_an_open_breaker_is_retry(watch: FlowerWatch) -> None:
    breaker = CircuitBreaker(GATE, failure_threshold=1, reset_timeout=30, store=watch.store)
    breaker.record_failure()
    try:
        result = watch.app.tasks["observe.guarded"].delay()
        info = watch.state_of(result.id, states.RETRY)
        assert "CircuitOpenError" in info["exception"]
    finally:
        breaker.reset()


def test_a_failing_task_is_failure(watch: FlowerWatch) -> None:
    result = watch.app.tasks["observe.fail"].delay()
    info = watch.state_of(result.id, states.FAILURE)
    assert "fails for good" in info["exception"]


def test_a_task_that_segfaults_once_is_success_without_an_exception(watch: FlowerWatch) -> None:
    result = watch.app.tasks["observe.segfault_once"].delay(str(watch.tmp_path / "segv"))
    assert result.get(timeout=60) == "survived"
    info = watch.state_of(result.id, states.SUCCESS)
    assert info["exception"] is None
    logs = watch.worker.logs()
    assert "SIGSEGV" in logs, logs[-3000:]
    assert "node died" not in logs


def test_the_run_facts_flower_cannot_show_are_printed_by_the_cli(watch: FlowerWatch) -> None:
    result = watch.app.tasks["observe.segfault_once"].delay(str(watch.tmp_path / "segv-cli"))
    assert result.get(timeout=60) == "survived"
    shown = run(watch.app, "task", result.id, "--json")
    assert shown.exit_code == 0, shown.output
    facts = json.loads(shown.output)
    assert (facts["state"], facts["node"], facts["device"]) == ("SUCCESS", NODE, "cpu")
    assert (facts["crashes"], facts["name"]) == (1, "observe.segfault_once")
    human = run(watch.app, "task", result.id)
    assert NODE in human.output
    assert "crashes" in human.output


def test_a_rerun_after_a_crash_reports_its_crash_count(watch: FlowerWatch) -> None:
    with Capture(watch.app) as capture:
        result = watch.app.tasks["observe.segfault_once"].delay(str(watch.tmp_path / "segv-ev"))
        assert result.get(timeout=60) == "survived"
        event = capture.wait_for(TASK_FACTS_EVENT)
    assert (event["uuid"], event["node"], event["device"]) == (result.id, NODE, "cpu")
    assert event["crashes"] == 1
    crash = next(e for e in capture.events if e["type"] == "snakepit-worker-crash")
    assert crash["uuid"] == result.id


def test_a_retry_reports_its_attempt(watch: FlowerWatch) -> None:
    with Capture(watch.app) as capture:
        result = watch.app.tasks["observe.flaky"].delay(str(watch.tmp_path / "flaky-ev"))
        assert result.get(timeout=60) == "second attempt"
        event = capture.wait_for(TASK_FACTS_EVENT)
    assert (event["uuid"], event["attempt"], event["crashes"]) == (result.id, 2, 0)


def test_the_cli_exits_1_for_a_task_nobody_knows(watch: FlowerWatch) -> None:
    shown = run(watch.app, "task", "no-such-task", "--json")
    assert shown.exit_code == 1
    assert json.loads(shown.output)["known"] is False


def test_no_task_ever_shows_a_custom_state(watch: FlowerWatch) -> None:
    watch.app.tasks["observe.ok"].delay().get(timeout=30)
    tasks = watch.get("/api/tasks")
    assert tasks
    assert {task["state"] for task in tasks.values()} <= set(states.ALL_STATES)


def test_flower_counts_celery_and_snakepit_events(watch: FlowerWatch) -> None:
    result = watch.app.tasks["observe.flaky"].delay(str(watch.tmp_path / "flaky-count"))
    result.get(timeout=30)
    watch.state_of(result.id, states.SUCCESS)

    def run_events() -> int | None:
        worker = next(w for w in watch.get("/workers?json=1")["data"] if w["hostname"] == NODE)
        return worker.get("snakepit-run") or None

    assert wait_until(run_events, 20, what="snakepit-run counted by flower") >= 1
    text = watch.get("/metrics", raw=True)
    counted = {
        sample.labels["type"]
        for family in text_string_to_metric_families(text)
        if family.name == "flower_events"
        for sample in family.samples
        if sample.labels.get("worker") == NODE
    }
    assert {"task-received", "task-started", "task-succeeded"} <= counted
    assert not [type_ for type_ in counted if "snakepit" in type_]
