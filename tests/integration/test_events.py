"""The signal -> Celery event bridge: pure conversion, and a real Receiver on a real worker."""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.events.state import State

from snakepit_celery import signals
from snakepit_celery.celery.events import (
    EVENT_TYPES,
    EventBridge,
    event_type,
    json_safe,
    lost_events,
    signal_event,
)
from snakepit_celery.celery.task import TASK_FACTS_EVENT
from tests.support.events import Capture
from tests.support.fleet import CPU_HARDWARE, Fleet, fleet_fixture

# -- pure parts --------------------------------------------------------------------------


def test_event_type_uses_hyphens() -> None:
    assert event_type("breaker_opened") == "snakepit-breaker-opened"


def test_no_event_type_is_a_celery_task_event() -> None:
    """Celery's state machine turns any unknown ``task-<x>`` event into a custom state X."""
    types = {event_type(name) for name in signals.ALL_SIGNALS} | {TASK_FACTS_EVENT}
    assert types == set(EVENT_TYPES)
    assert not [type_ for type_ in types if type_.startswith("task-")]


def test_a_snakepit_event_leaves_the_celery_task_state_alone() -> None:
    state = State()
    state.event(
        {
            "type": "task-started",
            "uuid": "t1",
            "hostname": "w",
            "timestamp": 1.0,
            "local_received": 1.0,
            "clock": 1,
        }
    )
    _, fields = signal_event(
        Celery("t", set_as_current=False), "retry_attempt", {"task_id": "t1", "attempt": 1}
    )
    state.event(
        {
            "type": event_type("retry_attempt"),
            "hostname": "w",
            "timestamp": 2.0,
            "local_received": 2.0,
            "clock": 2,
            **fields,
        }
    )
    assert state.tasks["t1"].state == "STARTED"


class Color(enum.StrEnum):
    RED = "red"


@dataclass(frozen=True)
class Info:
    reason: str
    code: int

    def as_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "code": self.code}


def test_json_safe_turns_rich_values_into_plain_ones() -> None:
    value = {
        "error": ValueError("boom"),
        "info": Info("segfault", 139),
        "color": Color.RED,
        "items": (1, 2.5, None),
        "nan": float("nan"),
        "other": object,
    }
    assert json_safe(value) == {
        "error": "ValueError('boom')",
        "info": {"reason": "segfault", "code": 139},
        "color": "red",
        "items": [1, 2.5, None],
        "nan": "nan",
        "other": "<class 'object'>",
    }


def test_signal_event_without_task_is_fleet_level() -> None:
    app = Celery("t", set_as_current=False)
    type_, fields = signal_event(app, "breaker_opened", {"failure_count": 5, "pool": "db"})
    assert type_ == "snakepit-breaker-opened"
    assert fields == {"failure_count": 5, "pool": "db", "signal": "breaker_opened"}


def test_signal_event_with_task_id_carries_uuid() -> None:
    app = Celery("t", set_as_current=False)
    type_, fields = signal_event(app, "worker_crash", {"task_id": "abc", "pool": "p"})
    assert type_ == "snakepit-worker-crash"
    assert fields["uuid"] == "abc"
    assert "task_id" not in fields


def test_reserved_event_field_names_are_prefixed() -> None:
    app = Celery("t", set_as_current=False)
    _, fields = signal_event(app, "device_tainted", {"hostname": "h", "timestamp": 1})
    assert fields["snakepit_hostname"] == "h"
    assert fields["snakepit_timestamp"] == 1


def test_bridge_is_silent_outside_a_worker() -> None:
    published: list[Any] = []
    bridge = EventBridge(Celery("t", set_as_current=False), publish=lambda *a: published.append(a))
    bridge(sender=None, signal=signals.breaker_closed, pool="db")
    assert published == []


def test_bridge_never_raises_into_the_sender_and_counts_the_lost_event() -> None:
    def broken(*_: Any) -> None:
        raise ConnectionError("broker down")

    before = lost_events().get("snakepit-breaker-closed", 0)
    bridge = EventBridge(Celery("t", set_as_current=False), always=True, publish=broken)
    bridge(sender=None, signal=signals.breaker_closed, pool="db")
    assert lost_events()["snakepit-breaker-closed"] == before + 1


def test_signals_sent_about_a_task_carry_its_id() -> None:
    published: list[Any] = []
    bridge = EventBridge(
        Celery("t", set_as_current=False), always=True, publish=lambda *a: published.append(a)
    )
    with signals.about_task("crashed-task"):
        bridge(sender=None, signal=signals.worker_tainted, pool="p", worker_id="w")
    assert published[0][2]["uuid"] == "crashed-task"


# -- a real worker, a real receiver --------------------------------------------------------


@pytest.fixture
def fleet(redis_url: str, key_prefix: str, tmp_path: Path) -> Iterator[Fleet]:
    yield from fleet_fixture(redis_url, key_prefix, tmp_path)


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_signal_inside_a_task_is_an_event_with_its_uuid(fleet: Fleet, pool: str) -> None:
    fleet.start("cpu@test", CPU_HARDWARE, pool=pool, concurrency=1)
    emit = fleet.app.tasks["worker_app.emit"]
    with Capture(fleet.app) as capture:
        result = emit.apply_async(("retry_attempt", {"attempt": 2, "delay": 0.2}), queue="celery")
        task_id = result.get(timeout=20)
        event = capture.wait_for("snakepit-retry-attempt")
    assert event["uuid"] == task_id
    assert (event["attempt"], event["delay"]) == (2, 0.2)
    assert event["hostname"] == "cpu@test"


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_signal_outside_a_task_is_a_fleet_event(fleet: Fleet) -> None:
    fleet.start("cpu@test", CPU_HARDWARE)
    emit = fleet.app.tasks["worker_app.emit"]
    fields = {"failure_count": 5, "pool": "payments", "reason": "failures"}
    with Capture(fleet.app) as capture:
        emit.apply_async(("breaker_opened", fields), {"detached": True}, queue="celery").get(20)
        event = capture.wait_for("snakepit-breaker-opened")
    assert event["pool"] == "payments"
    assert event["failure_count"] == 5
    assert "uuid" not in event


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_event_fields_are_json_safe(fleet: Fleet) -> None:
    fleet.start("cpu@test", CPU_HARDWARE)
    emit = fleet.app.tasks["worker_app.emit"]
    fields = {"attempts": 3, "total_duration": 1.5}
    with Capture(fleet.app) as capture:
        emit.apply_async(("retry_exhausted", fields), {"error": "boom"}, queue="celery").get(20)
        event = capture.wait_for("snakepit-retry-exhausted")
    assert event["last_error"] == "RuntimeError('boom')"


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_first_run_sends_no_run_event_even_with_task_events(fleet: Fleet) -> None:
    """Celery's own task-started gives a first run's node: no extra message per task."""
    fleet.start("cpu@test", CPU_HARDWARE, args=("-E",))
    with Capture(fleet.app) as capture:
        fleet.app.tasks["worker_app.device_used"].apply_async().get(timeout=20)
        emit = fleet.app.tasks["worker_app.emit"]
        emit.apply_async(("retry_attempt", {"attempt": 1, "delay": 0.1}), queue="celery").get(20)
        capture.wait_for("snakepit-retry-attempt")  # later than the run's would be
    assert not [e for e in capture.events if e["type"] == TASK_FACTS_EVENT]


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_no_per_run_event_without_task_events(fleet: Fleet) -> None:
    fleet.start("cpu@test", CPU_HARDWARE)
    with Capture(fleet.app) as capture:
        fleet.app.tasks["worker_app.device_used"].apply_async().get(timeout=20)
        emit = fleet.app.tasks["worker_app.emit"]
        emit.apply_async(("retry_attempt", {"attempt": 1, "delay": 0.1}), queue="celery").get(20)
        capture.wait_for("snakepit-retry-attempt")  # later than the run's would be
    assert not [e for e in capture.events if e["type"] == TASK_FACTS_EVENT]
