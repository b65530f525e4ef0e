"""The quarantine with real worker nodes and the real ``celery`` command line.

A task the crash barrier stops for good stays in the quarantine with its
crash history, and ``celery -A proj snakepit quarantine`` lists, shows,
replays (with a fresh crash count) and drops it. Messages that made Celery's
main process exit (issue 14: a body that is not ``[args, kwargs, embed]``, a
``timelimit`` that is not two numbers, no ``id`` header) are quarantined by
the message guard at once: the nodes stay alive and go on consuming. One
the guard does not know is quarantined after ``max_restarts`` nodes died of it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Producer

from snakepit_celery.testing import wait_until
from tests.apps.killer_task import EXIT_CODE
from tests.support.chaos import ChaosFleet

ROOT = Path(__file__).resolve().parents[2]
CELERY = Path(sys.executable).parent / "celery"
BARRIER: dict[str, Any] = {"enabled": True, "max_restarts": 1, "backoff": [0.05]}

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fleet(redis_base_url: str) -> Iterator[ChaosFleet]:
    """Two chaos_app nodes (crash barrier on, max_restarts=1) for the module."""
    fleet = ChaosFleet.create(redis_base_url, "spquar", BARRIER)
    try:
        fleet.start_all(2)
        yield fleet
    finally:
        fleet.close()


def _cli(fleet: ChaosFleet, *args: str) -> subprocess.CompletedProcess[str]:
    """``celery -A tests.apps.chaos_app snakepit quarantine <args>`` in a subprocess."""
    return subprocess.run(
        [str(CELERY), "-A", "tests.apps.chaos_app", "snakepit", "quarantine", *args],
        cwd=ROOT,
        env={**os.environ, "CHAOS_CONF": json.dumps(fleet.conf), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _entries(fleet: ChaosFleet) -> dict[str, dict[str, Any]]:
    result = _cli(fleet, "list", "--json")
    assert result.returncode == 0, result.stderr
    return {entry["id"]: entry for entry in json.loads(result.stdout)}


def _final(fleet: ChaosFleet, task_id: str, timeout: float = 45.0) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        meta = fleet.states([task_id])[task_id]
        return meta if meta and meta["status"] in ("SUCCESS", "FAILURE") else None

    return wait_until(final, timeout, interval=0.1, what=f"task {task_id} to finish")


def test_poison_task_stopped_by_the_barrier_is_quarantined_replayed_and_dropped(
    fleet: ChaosFleet,
) -> None:
    task_id = fleet.send("chaos.poison", 0.01)
    assert _final(fleet, task_id)["result"]["exc_type"] == "WorkerCrashedError"
    entry = wait_until(lambda: _entries(fleet).get(task_id), 10, what="the quarantine entry")
    assert (entry["task"], entry["reason"], entry["crashes"]) == ("chaos.poison", "stopped", 2)
    assert [c["classification"] for c in entry["history"]] == ["segfault", "segfault"]
    shown = _cli(fleet, "show", task_id)
    assert shown.returncode == 0 and "segfault" in shown.stdout, shown.stderr

    replayed = _cli(fleet, "replay", task_id, "--json")
    assert replayed.returncode == 0, replayed.stderr
    assert json.loads(replayed.stdout) == {"id": task_id, "queue": fleet.queue}
    wait_until(lambda: task_id in _entries(fleet), 45, what="the replay to be quarantined")
    assert fleet.executions()[task_id] == 4  # a fresh count: max_restarts + 1 runs again
    assert _final(fleet, task_id)["status"] == "FAILURE"

    assert _cli(fleet, "drop", task_id).returncode == 0
    missing = _cli(fleet, "show", task_id)
    assert missing.returncode == 1 and "no quarantined message" in missing.stderr


def _publish(fleet: ChaosFleet, body: Any, **changes: Any) -> str:
    """Publish a chaos.idempotent message with ``changes`` to its headers (None: removed)."""
    task_id = str(uuid.uuid4())
    headers: dict[str, Any] = {
        "lang": "py",
        "task": "chaos.idempotent",
        "id": task_id,
        "root_id": task_id,
        "retries": 0,
        "timelimit": [None, None],
    }
    headers.update(changes)
    headers = {k: v for k, v in headers.items() if v is not None}
    with fleet.client.connection_for_write() as conn:
        Producer(conn).publish(
            body, routing_key=fleet.queue, exchange="", headers=headers, serializer="json"
        )
    return task_id


GOOD_BODY = [[0.01], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]


def test_messages_that_kill_celery_main_process_are_quarantined_and_nodes_keep_consuming(
    fleet: ChaosFleet,
) -> None:
    bad_body = _publish(fleet, {"a": 1})
    bad_limit = _publish(fleet, GOOD_BODY, timelimit="zz")
    _publish(fleet, GOOD_BODY, id=None)
    for bad in (bad_body, bad_limit):
        assert _final(fleet, bad)["result"]["exc_type"] == "InvalidTaskError"
    good = [fleet.send("chaos.idempotent", 0.01) for _ in range(4)]
    assert all(_final(fleet, task_id)["status"] == "SUCCESS" for task_id in good)

    assert len(fleet.alive()) == 2, fleet.logs()
    replies = fleet.client.control.ping(destination=list(fleet.nodes), timeout=3.0)
    assert len(replies) == 2
    entries = _entries(fleet)
    assert {bad_body, bad_limit} <= set(entries)
    no_id = [e for e in entries.values() if e["id"].startswith("msg-")]
    assert len(no_id) == 1 and no_id[0]["reason"] == "malformed"
    assert "timelimit" in entries[bad_limit]["error"]


@pytest.mark.slow
def test_task_whose_node_dies_past_max_restarts_is_quarantined_by_the_ledger_gate(
    redis_base_url: str,
) -> None:
    """Two whole-node deaths (SIGKILL) with a long task: the gate stops and quarantines it."""
    fleet = ChaosFleet.create(redis_base_url, "spquargate", BARRIER)
    try:
        name = fleet.node_name(0)
        fleet.start(name, concurrency=1).wait_ready(60)
        task_id = fleet.send("chaos.idempotent", 30.0)
        for runs in (1, 2):
            wait_until(lambda n=runs: fleet.executions()[task_id] >= n, 45, what=f"run {runs}")
            fleet.nodes[name].kill()
            fleet.start(name, concurrency=1).wait_ready(60)
        assert _final(fleet, task_id, timeout=60)["result"]["exc_type"] == "WorkerCrashedError"
        entry = wait_until(lambda: _entries(fleet).get(task_id), 10, what="the quarantine entry")
        assert (entry["reason"], entry["crashes"]) == ("stopped", 2)
        assert json.loads(entry["message"]["body"])[0] == [30.0]
        assert fleet.executions()[task_id] == 2
    finally:
        fleet.close()


def test_message_that_stops_main_processes_is_quarantined_after_max_restarts_deaths(
    redis_base_url: str,
) -> None:
    """A message Celery dies of (not one the guard knows): each node it stops counts a death.

    max_restarts=1: the first node that dies of it gives it back, the second
    quarantines it, ends its task FAILURE and acknowledges it; restarted
    nodes then run the next good task.
    """
    extra = {"imports": ["tests.apps.killer_task"]}
    fleet = ChaosFleet.create(redis_base_url, "spquarkill", BARRIER, extra=extra)
    try:
        fleet.start_all(2)
        with fleet.client.connection_for_write() as conn:
            task_id = str(uuid.uuid4())
            fleet.client.send_task(
                "killer.main_process", task_id=task_id, queue=fleet.queue, connection=conn
            )
        meta = _final(fleet, task_id, timeout=60)
        assert meta["result"]["exc_type"] == "WorkerCrashedError", fleet.logs()

        def exits() -> list[int | None] | None:
            codes = [node.process.poll() if node.process else None for node in fleet.nodes.values()]
            return None if None in codes else codes

        assert wait_until(exits, 30, what="both nodes to exit") == [EXIT_CODE, EXIT_CODE]
        entry = wait_until(lambda: _entries(fleet).get(task_id), 10, what="the quarantine entry")
        assert (entry["reason"], entry["crashes"]) == ("killed_nodes", 2)
        assert "held by 2 node(s)" in entry["error"] and "SystemExit" in entry["error"]
        assert fleet.executions()[task_id] == 0

        for name in list(fleet.nodes):
            fleet.start(name).wait_ready(60)
        good = fleet.send("chaos.idempotent", 0.01)
        assert _final(fleet, good)["status"] == "SUCCESS"
        assert task_id not in fleet.in_broker()
    finally:
        fleet.close()
