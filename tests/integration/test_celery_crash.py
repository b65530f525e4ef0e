"""The crash barrier in real prefork workers, killed for real.

Tasks crash their own process (SIGSEGV, SIGKILL, abort) or their whole node
(parent included); executions are counted in Redis, so "ran exactly once"
and "at most max_restarts + 1 times" are facts, not guesses.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from snakepit_celery.barrier import CrashBarrier
from snakepit_celery.celery.app_context import app_group
from snakepit_celery.celery.headers import HEADER_CRASHES
from snakepit_celery.errors import WorkerCrashedError
from snakepit_celery.hardware.types import Device
from snakepit_celery.health import HealthMonitor
from snakepit_celery.store import store_from_url
from snakepit_celery.testing import wait_until
from snakepit_celery.testing.monitor import CommandLog, transactions
from tests.support.harness import Harness, harness_fixture

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

BARRIER: dict[str, Any] = {
    "snakepit_crash_barrier": {
        "enabled": True,
        "max_restarts": 1,
        "taint_duration": 10.0,
        "backoff": [0.05],
    }
}


@pytest.fixture
def harness(redis_url: str, key_prefix: str, tmp_path: Path) -> Iterator[Harness]:
    yield from harness_fixture(redis_url, key_prefix, tmp_path)


def _barrier(harness: Harness) -> CrashBarrier:
    store = store_from_url(harness.redis_url, key_prefix=harness.key_prefix)
    return CrashBarrier(BARRIER["snakepit_crash_barrier"], store=store)


@pytest.mark.parametrize("how", ["segv", "kill", "abort"])
def test_idempotent_task_runs_again_after_its_process_crashes(harness: Harness, how: str) -> None:
    harness.worker(f"once-{how}", conf=BARRIER)
    result = harness.send("crash_once", harness.key("runs"), how)
    assert result.get(timeout=60) == 2
    assert harness.count("runs") == 2


def test_crashed_task_is_re_published_in_one_transaction_with_its_ack(harness: Harness) -> None:
    """A node dying between the two would leave two copies (or none) of the task."""
    harness.worker("fold", conf=BARRIER)
    with CommandLog(harness.redis_url) as log:
        result = harness.send("crash_once", harness.key("runs"), "segv")
        assert result.get(timeout=60) == 2
        commands = log.commands
    assert len(_with_ack(commands, result.id, harness.key_prefix)) == 1


def test_a_copy_of_a_live_run_is_sent_again_in_one_transaction_with_its_ack(
    harness: Harness,
) -> None:
    """The gate's deferral goes out from the pool parent, with the old message's ack."""
    harness.worker("defer", conf=BARRIER)
    store = store_from_url(harness.redis_url, key_prefix=harness.key_prefix)
    record = {"incarnation": "other-1", "worker_pids": [4242], "heartbeat_interval": 0.1}
    assert store.node_register("other@host", record, ttl=30.0, group=app_group(harness.client))
    barrier = _barrier(harness)
    task_id = "deferred-copy-1"
    assert barrier.ledger_hold({task_id: "other@host/4242"}, 30.0) == {task_id: True}
    with CommandLog(harness.redis_url) as log:
        result = harness.send("noop_idempotent", task_id=task_id, headers={HEADER_CRASHES: 0})
        wait_until(
            lambda: len(_with_ack(log.commands, task_id, harness.key_prefix)) >= 1,
            30,
            what="the deferral",
        )
        barrier.ledger_hold({task_id: "other@host/4242"}, 0.0)  # the first run ended
        harness.wait_state(result, {"SUCCESS"}, timeout=30)


def _with_ack(commands: list[str], task_id: str, prefix: str) -> list[list[str]]:
    """Transactions on ``prefix``'s keys that publish ``task_id`` and end a delivery."""
    return [
        t
        for t in transactions(commands, prefix)
        if any(c.upper().startswith("LPUSH") and task_id in c for c in t)
        and any(c.upper().startswith("HDEL") and "unacked" in c for c in t)
    ]


def test_crashed_task_runs_again_on_another_node(harness: Harness) -> None:
    harness.worker("first", conf=BARRIER)
    harness.worker("second", conf=BARRIER)
    result = harness.send("crash_once_where", harness.key("nodes"))
    result.get(timeout=60)
    crashed_on, ran_on = (n.decode() for n in harness.redis.lrange(harness.key("nodes"), 0, -1))
    assert ran_on != crashed_on


def test_non_idempotent_task_fails_with_worker_crashed_error_after_one_run(
    harness: Harness,
) -> None:
    worker = harness.worker("plain", conf=BARRIER)
    result = harness.send("crash_plain", harness.key("runs"), "segv")
    harness.wait_state(result, {"FAILURE"}, timeout=60)
    error = result.result
    assert isinstance(error, WorkerCrashedError)
    assert error.classification == "segfault"
    assert error.signal == signal.SIGSEGV
    assert error.worker_id == worker.name
    assert harness.count("runs") == 1


def test_crash_is_recorded_in_health_monitor_and_taints_the_worker(harness: Harness) -> None:
    worker = harness.worker("tainted", conf=BARRIER)
    result = harness.send("crash_plain", harness.key("runs"), "segv")
    harness.wait_state(result, {"FAILURE"}, timeout=60)
    store = store_from_url(harness.redis_url, key_prefix=harness.key_prefix)
    health = HealthMonitor(store=store).worker_health(worker.name)
    assert health.crash_count == 1
    assert _barrier(harness).worker_tainted(worker.name)


def test_poison_task_runs_at_most_max_restarts_plus_one_times(harness: Harness) -> None:
    harness.worker("poison", conf=BARRIER)
    result = harness.send("crash_always", harness.key("runs"), "segv")
    harness.wait_state(result, {"FAILURE"}, timeout=60)
    assert isinstance(result.result, WorkerCrashedError)
    assert result.result.classification == "segfault"
    assert harness.count("runs") == 2


# In `make chaos` only: since node groups and the reaper's restore joined, this test passes alone
# (13 s) but missed its 60 s wait in one of two full-suite runs; not yet diagnosed.
@pytest.mark.slow
def test_task_killing_whole_nodes_is_stopped_after_max_restarts(harness: Harness) -> None:
    def node(name: str) -> Any:
        return harness.worker(name, conf=BARRIER, visibility_timeout=3.0)

    first = node("doomed-1")
    result = harness.send("crash_always", harness.key("runs"), "node")
    first.wait_exit(timeout=30)
    assert harness.count("runs") == 1

    second = node("doomed-2")
    second.wait_exit(timeout=60)
    assert harness.count("runs") == 2

    node("survivor")
    harness.wait_state(result, {"FAILURE"}, timeout=60)
    assert isinstance(result.result, WorkerCrashedError)
    assert harness.count("runs") == 2


def test_disabled_barrier_keeps_celerys_worker_lost_failure(harness: Harness) -> None:
    harness.worker("disabled")
    result = harness.send("crash_plain", harness.key("runs"), "segv")
    harness.wait_state(result, {"FAILURE"}, timeout=60)
    assert type(result.result).__name__ == "WorkerLostError"
    assert harness.count("runs") == 1


def test_gpu_fatal_error_taints_the_device_and_recycles_the_process(
    harness: Harness, tmp_path: Path
) -> None:
    from tests.support.fleet import cuda_hardware, write_hardware

    hardware = write_hardware(tmp_path / "cuda.json", cuda_hardware(1))
    worker = harness.worker(
        "gpu", conf=BARRIER, concurrency=1, env={"SNAKEPIT_HARDWARE": str(hardware)}
    )
    result = harness.send("gpu_fatal", harness.key("runs"), harness.key("pids"), queue="celery")
    harness.wait_state(result, {"FAILURE"}, timeout=60)
    assert type(result.result) is RuntimeError
    assert "illegal memory access" in str(result.result)
    device = Device("cuda", 0, "GPU-test-0000")
    assert wait_until(lambda: _barrier(harness).device_tainted(worker.name, device), 10)
    crashed_pid = int(harness.redis.lrange(harness.key("pids"), 0, -1)[0])
    after = harness.send("where", queue="celery").get(timeout=30)
    assert after["pid"] != crashed_pid
    assert harness.count("runs") == 1
