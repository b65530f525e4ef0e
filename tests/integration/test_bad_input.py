"""Bad input gets a clear error and breaks nothing else.

Malformed snakepit message headers, wrong-type task options, oversized crash
messages, invalid JSON in the hardware override and in lock files: each is
either tolerated (headers: a task still runs, and never more often than the
crash barrier allows) or rejected with a ``ConfigError`` naming the setting,
and what runs next is unaffected.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from billiard.exceptions import WorkerLostError
from celery import Celery

from snakepit_celery import hardware, lockfile
from snakepit_celery.barrier import MAX_REASON_CHARS, CrashBarrier
from snakepit_celery.celery.headers import HEADER_CRASHES, HEADER_DEFERRALS, HEADER_FIRST_TRY
from snakepit_celery.celery.install import install
from snakepit_celery.celery.task import snakepit_task
from snakepit_celery.errors import ConfigError
from snakepit_celery.health import HealthMonitor
from snakepit_celery.policy.crash import Classification, classify
from snakepit_celery.store import set_default_store, store_from_url
from snakepit_celery.testing import wait_until
from tests.support.chaos import ChaosFleet

MAX_RESTARTS = 1
BARRIER: dict[str, Any] = {"enabled": True, "max_restarts": MAX_RESTARTS, "backoff": [0.05]}
#: The app's retry policy on the node: a failing task runs this often in all.
MAX_ATTEMPTS = 3
RETRY_POLICY: dict[str, Any] = {"max_attempts": MAX_ATTEMPTS, "backoff": [0.05]}
HUGE = 100_000


# -- malformed headers, on a real worker node ---------------------------------------------


@pytest.fixture(scope="module")
def fleet(redis_base_url: str) -> Iterator[ChaosFleet]:
    """One chaos_app worker node (crash barrier on, max_restarts=1) for the module."""
    fleet = ChaosFleet.create(
        redis_base_url, "spbad", BARRIER, extra={"snakepit_retry_policy": RETRY_POLICY}
    )
    try:
        fleet.start_all(1)
        yield fleet
    finally:
        fleet.close()


def _final(fleet: ChaosFleet, task_id: str, timeout: float = 45.0) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        meta = fleet.states([task_id])[task_id]
        return meta if meta and meta["status"] in ("SUCCESS", "FAILURE") else None

    return wait_until(final, timeout, interval=0.1, what=f"task {task_id} to finish")


def _send(
    fleet: ChaosFleet, task: str, headers: dict[str, Any], args: tuple[Any, ...] = (0.01,)
) -> str:
    return str(fleet.client.send_task(task, args=args, headers=headers).id)


BAD_HEADERS = [
    pytest.param({HEADER_CRASHES: "banana"}, id="crashes-not-a-number"),
    pytest.param({HEADER_CRASHES: [1, 2]}, id="crashes-a-list"),
    pytest.param({HEADER_CRASHES: None}, id="crashes-null"),
    pytest.param({HEADER_DEFERRALS: "many"}, id="deferrals-not-a-number"),
    pytest.param({HEADER_FIRST_TRY: "yesterday"}, id="first-try-not-a-time"),
    pytest.param({HEADER_CRASHES: float("inf")}, id="crashes-infinity"),
    pytest.param({HEADER_CRASHES: float("nan")}, id="crashes-nan"),
    pytest.param({HEADER_DEFERRALS: float("inf")}, id="deferrals-infinity"),
    pytest.param({HEADER_DEFERRALS: 5}, id="deferrals-more-than-retries"),
    pytest.param({HEADER_FIRST_TRY: float("inf")}, id="first-try-infinity"),
]


@pytest.mark.integration
@pytest.mark.parametrize("headers", BAD_HEADERS)
def test_task_with_malformed_snakepit_header_runs_once_and_succeeds(
    fleet: ChaosFleet, headers: dict[str, Any]
) -> None:
    task_id = _send(fleet, "chaos.idempotent", headers)
    assert _final(fleet, task_id)["status"] == "SUCCESS"
    assert fleet.executions()[task_id] == 1


@pytest.mark.integration
@pytest.mark.parametrize("retries", ["two", 1.5, [1]], ids=repr)
def test_task_with_non_integer_retries_header_runs_once_and_succeeds(
    fleet: ChaosFleet, retries: Any
) -> None:
    task_id = str(fleet.client.send_task("chaos.idempotent", args=(0.01,), retries=retries).id)
    assert _final(fleet, task_id)["status"] == "SUCCESS"
    assert fleet.executions()[task_id] == 1


@pytest.mark.integration
def test_failing_task_with_more_deferrals_than_retries_spends_its_retry_policy(
    fleet: ChaosFleet,
) -> None:
    task_id = _send(fleet, "chaos.guarded", {HEADER_DEFERRALS: 5}, args=(True,))
    meta = _final(fleet, task_id)
    assert meta["status"] == "FAILURE"
    assert meta["result"]["exc_type"] == "RetryExhaustedError"
    assert fleet.executions()[task_id] == MAX_ATTEMPTS


@pytest.mark.integration
@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({HEADER_CRASHES: "banana"}, id="not-a-number"),
        pytest.param({HEADER_CRASHES: -5}, id="negative"),
        pytest.param({HEADER_CRASHES: "1e400"}, id="float-overflow-text"),
        pytest.param({HEADER_CRASHES: float("inf")}, id="infinity"),
    ],
)
def test_malformed_crash_count_never_buys_a_crashing_task_extra_runs(
    fleet: ChaosFleet, headers: dict[str, Any]
) -> None:
    task_id = _send(fleet, "chaos.poison", headers)
    meta = _final(fleet, task_id)
    assert meta["status"] == "FAILURE"
    assert meta["result"]["exc_type"] == "WorkerCrashedError"
    assert 1 <= fleet.executions()[task_id] <= MAX_RESTARTS + 1


@pytest.mark.integration
def test_node_with_invalid_hardware_override_refuses_to_start_naming_the_setting(
    fleet: ChaosFleet, tmp_path: Path
) -> None:
    bad = tmp_path / "hardware.json"
    bad.write_text('{"accelerator": "cuda",')
    name = f"badhw-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
    node = fleet.start(name, env={"SNAKEPIT_HARDWARE": str(bad)})
    assert node.process is not None
    assert node.process.wait(timeout=60) != 0
    assert "snakepit_hardware" in node.logs()
    assert "not valid JSON" in node.logs()


@pytest.mark.integration
def test_node_with_invalid_lock_file_refuses_to_start_naming_the_setting(
    fleet: ChaosFleet, tmp_path: Path
) -> None:
    bad = tmp_path / "snakepit.lock"
    bad.write_text("{not json")
    name = f"badlock-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
    node = fleet.start(name, env={"SNAKEPIT_LOCK_FILE": str(bad)})
    assert node.process is not None
    assert node.process.wait(timeout=60) == 1
    assert "snakepit_lock_file" in node.logs()


@pytest.mark.integration
def test_healthy_node_keeps_working_after_bad_nodes_and_bad_messages(fleet: ChaosFleet) -> None:
    task_id = str(fleet.client.send_task("chaos.once", args=(0.01,)).id)
    assert _final(fleet, task_id)["status"] == "SUCCESS"


# -- wrong-type task options --------------------------------------------------------------


def _body() -> None:
    """A task body."""


BAD_OPTIONS = [
    pytest.param({"timeout": "soon"}, "timeout", id="timeout-text"),
    pytest.param({"timeout": -1}, "timeout", id="timeout-negative"),
    pytest.param(
        {"retry_policy": 42},
        "retry_policy",
        id="retry-policy-int",
    ),
    pytest.param(
        {"retry_policy": {"max_attempts": 0}},
        "retry_policy",
        id="retry-policy-bad-dict",
    ),
    pytest.param(
        {"breaker": 3.5},
        "breaker",
        id="breaker-float",
    ),
    pytest.param(
        {"crash_barrier": {"retry": "sometimes"}},
        "retry",
        id="crash-barrier-retry",
    ),
    pytest.param(
        {"device": "quantum"},
        "device",
        id="device-unknown",
    ),
    pytest.param(
        {"idempotent": "yes"},
        "idempotent",
        id="idempotent-text",
    ),
]


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    app = Celery("bad_input", broker=redis_url, set_as_current=False)
    install(app)
    yield app
    app.close()
    set_default_store(None)


@pytest.mark.parametrize(("options", "setting"), BAD_OPTIONS)
def test_wrong_type_task_option_raises_config_error_at_decoration(
    app: Celery, options: dict[str, Any], setting: str
) -> None:
    name = f"bad.{uuid.uuid4().hex[:6]}"
    with pytest.raises(ConfigError) as caught:
        snakepit_task(app=app, name=name, **options)(_body)
    assert setting in str(caught.value)


# -- oversized crash messages -------------------------------------------------------------


def _huge_worker_lost(at_start: bool) -> WorkerLostError:
    crash = "Worker exited prematurely: signal 11 (SIGSEGV) Job: 7."
    filler = "x" * HUGE
    return WorkerLostError(f"{crash} {filler}" if at_start else f"{filler} {crash}")


@pytest.mark.timeout(10)
@pytest.mark.parametrize("at_start", [True, False], ids=["signal-first", "signal-last"])
def test_100kb_worker_lost_text_is_classified(at_start: bool) -> None:
    assert classify(message=str(_huge_worker_lost(at_start))) == Classification.SEGFAULT


@pytest.mark.timeout(10)
def test_100kb_text_without_a_crash_marker_is_unknown() -> None:
    assert classify(message="y" * HUGE) == Classification.UNKNOWN


@pytest.mark.timeout(20)
def test_oversized_crash_reason_is_truncated_in_stored_taint(
    redis_url: str, key_prefix: str
) -> None:
    store = store_from_url(redis_url, key_prefix=key_prefix)
    barrier = CrashBarrier(BARRIER, store=store)
    info = barrier.crash_info(_huge_worker_lost(at_start=True))
    assert info is not None
    assert barrier.taint_worker("node-huge", info)
    (taint,) = barrier.taints()
    assert taint.classification == Classification.SEGFAULT
    assert taint.reason is not None
    assert 0 < len(taint.reason) <= MAX_REASON_CHARS
    assert barrier.worker_tainted("node-huge")
    barrier.clear_taint()


@pytest.mark.timeout(20)
def test_oversized_crash_reason_is_recorded_by_the_health_monitor(
    redis_url: str, key_prefix: str
) -> None:
    monitor = HealthMonitor("huge", store=store_from_url(redis_url, key_prefix=key_prefix))
    monitor.record_crash("node-huge", reason=str(_huge_worker_lost(at_start=False)))
    assert monitor.worker_health("node-huge").crash_count == 1


# -- invalid JSON in the hardware override and in lock files -----------------------------


@pytest.fixture
def clean_hardware(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("SNAKEPIT_HARDWARE", raising=False)
    hardware.configure(None)
    yield
    hardware.configure(None)


@pytest.mark.usefixtures("clean_hardware")
def test_invalid_json_hardware_override_raises_config_error_naming_setting_and_file(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "hw.json"
    bad.write_text("{'accelerator': 'cpu'}")
    with pytest.raises(ConfigError) as caught:
        hardware.configure(bad)
    assert "snakepit_hardware" in str(caught.value)
    assert str(bad) in str(caught.value)
    assert "not valid JSON" in str(caught.value)


@pytest.mark.usefixtures("clean_hardware")
def test_invalid_json_in_env_override_raises_config_error_then_detection_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "hw.json"
    bad.write_text("")
    monkeypatch.setenv("SNAKEPIT_HARDWARE", str(bad))
    hardware.clear_cache()
    with pytest.raises(ConfigError, match="SNAKEPIT_HARDWARE"):
        hardware.detect()
    monkeypatch.delenv("SNAKEPIT_HARDWARE")
    hardware.clear_cache()
    assert hardware.identity()["accelerator"] in ("cpu", "cuda", "rocm", "mps")


@pytest.mark.usefixtures("clean_hardware")
def test_failed_override_leaves_the_previous_configuration_in_place(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"accelerator": "cpu", "platform": "linux-x86_64"}))
    hardware.configure(good)
    before = hardware.identity()
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    with pytest.raises(ConfigError):
        hardware.configure(bad)
    assert hardware.identity() == before


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("{not json", id="broken"),
        pytest.param("", id="empty"),
        pytest.param("[1, 2, 3]", id="not-an-object"),
        pytest.param('{"hardware": "cpu"}', id="hardware-not-an-object"),
    ],
)
def test_invalid_lock_file_raises_config_error_naming_the_setting(
    tmp_path: Path, text: str
) -> None:
    bad = tmp_path / "snakepit.lock"
    bad.write_text(text)
    with pytest.raises(ConfigError) as caught:
        lockfile.validate(bad)
    assert "snakepit_lock_file" in str(caught.value)
    assert str(bad) in str(caught.value)


def test_invalid_lock_file_is_usage_error_not_mismatch(tmp_path: Path) -> None:
    bad = tmp_path / "snakepit.lock"
    bad.write_text("{not json")
    code, line = lockfile.validate_command(bad)
    assert code == 2
    assert "not valid JSON" in line
