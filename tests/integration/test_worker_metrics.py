"""A real worker with ``snakepit_metrics_port`` serves ``/metrics`` by itself, children summed.

The ``flower`` extra is installed in the test environment, so Celery's command
plugins import prometheus-client before any snakepit code runs in the worker:
the prefork children's counts must still reach the scrape.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from snakepit_celery.celery.app_context import app_group, namespace
from snakepit_celery.policy.routing import node_queue
from snakepit_celery.store import store_from_url
from snakepit_celery.testing import wait_until
from snakepit_celery.testing.workers import WorkerNode
from tests.apps.observe_app import add_tasks
from tests.support.cli import CELERY, app, gpu_host
from tests.support.fleet import CPU_HARDWARE, ROOT, make_app, write_hardware

#: The fixture this module takes from tests.support.cli (named here so linters see it used).
__all__ = ["app", "gpu_host"]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class MetricsNodes:
    """Worker nodes of one test, on one port and (like ``--per-device``) one sample directory."""

    def __init__(self, redis_url: str, key_prefix: str, tmp_path: Path) -> None:
        self.app = add_tasks(make_app(redis_url, key_prefix))
        self.port = free_port()
        self.tmp_path = tmp_path
        (tmp_path / "samples").mkdir()
        self.env = {
            "WORKER_APP_REDIS_URL": redis_url,
            "WORKER_APP_KEY_PREFIX": key_prefix,
            "PYTHONPATH": str(ROOT),
            "SNAKEPIT_HARDWARE": str(write_hardware(tmp_path / "hw.json", CPU_HARDWARE)),
            "SNAKEPIT_METRICS_PORT": str(self.port),
        }
        self.nodes: list[WorkerNode] = []

    def start(self, name: str, **env: str) -> WorkerNode:
        node = WorkerNode(
            "tests.apps.observe_app",
            name,
            concurrency=2,
            env={**self.env, **env},
            cwd=str(ROOT),
            pool="prefork",
            flags=("--without-mingle", "--without-gossip"),
            log_path=self.tmp_path / f"{name.replace('@', '_')}.log",
        )
        self.nodes.append(node.start().wait_ready(60))
        return node

    def close(self) -> None:
        for node in self.nodes:
            node.stop()
        self.app.close()


@pytest.fixture
def nodes(
    redis_url: str, key_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[MetricsNodes]:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    running = MetricsNodes(redis_url, key_prefix, tmp_path)
    try:
        yield running
    finally:
        running.close()


def test_a_worker_serves_metrics_with_its_children_counts(nodes: MetricsNodes) -> None:
    pytest.importorskip("flower")  # the case where prometheus-client is imported first
    nodes.start("metrics@test")
    result = nodes.app.tasks["observe.flaky"].delay(str(nodes.tmp_path / "flaky"))
    assert result.get(timeout=60) == "second attempt"
    samples = wait_until(
        lambda: (
            (s := scrape(nodes.port))
            and value(s, "snakepit_retries_total", outcome="success") >= 1
            and s
        ),
        20,
        what="the child's retries in the worker's scrape",
    )
    assert value(samples, "snakepit_retries_total", outcome="attempt") == 1
    assert value(samples, "snakepit_hot_path_seconds_count", stage="before") == 2
    assert value(samples, "snakepit_events_total", type="snakepit-retry-attempt") == 1
    assert ("snakepit_store_script_errors_total", ()) in samples


def test_nodes_of_one_host_share_the_port_and_their_samples(nodes: MetricsNodes) -> None:
    shared = str(nodes.tmp_path / "samples")
    first = nodes.start("first@test", PROMETHEUS_MULTIPROC_DIR=shared)
    second = nodes.start("second@test", PROMETHEUS_MULTIPROC_DIR=shared)
    result = nodes.app.tasks["observe.flaky"].apply_async(
        (str(nodes.tmp_path / "flaky"),),
        queue=node_queue("second@test", prefix=namespace(nodes.app)),
    )
    assert result.get(timeout=60) == "second attempt"
    assert "another node of this host serves it" in second.logs()
    assert first.alive() and second.alive()
    wait_until(
        lambda: value(scrape(nodes.port), "snakepit_retries_total", outcome="success") >= 1,
        20,
        what="the second node's retry on the first node's endpoint",
    )


def test_per_device_nodes_of_a_host_serve_one_endpoint(
    redis_url: str, key_prefix: str, gpu_host: Path, app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``snakepit worker --per-device``: one node binds the port, the others say who serves."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    port = free_port()
    env = {
        **os.environ,
        "SNAKEPIT_STORE_URL": redis_url,
        "SNAKEPIT_KEY_PREFIX": key_prefix,
        "SNAKEPIT_HARDWARE": str(gpu_host),
        "SNAKEPIT_METRICS_PORT": str(port),
        "PYTHONPATH": str(ROOT),
    }
    argv = [str(CELERY), "-A", "tests.apps.cli_app", "snakepit", "worker", "--per-device"]
    launcher = subprocess.Popen(
        [*argv, "--pool=solo", "--without-mingle", "--without-gossip", "-l", "INFO"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    store = store_from_url(redis_url, key_prefix=key_prefix)
    try:
        group = app_group(app)
        wait_until(lambda: len(store.node_list(group=group)) == 3, 90, what="3 per-device nodes")
        samples = wait_until(lambda: scrape(port), 20, what="the host's metrics endpoint")
        assert ("snakepit_store_script_errors_total", ()) in samples
    finally:
        launcher.send_signal(signal.SIGTERM)
        _, stderr = launcher.communicate(timeout=60)
    assert launcher.returncode == 0, stderr[-2000:]
    assert stderr.count("another node of this host serves it") == 2, stderr[-3000:]
