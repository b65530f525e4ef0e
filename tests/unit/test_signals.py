"""Signals as frozen payloads: what a ``SignalHook`` sees for each signal of the package."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from snakepit_celery import signals
from snakepit_celery.signals import (
    ALL_SIGNALS,
    PAYLOADS,
    BreakerOpened,
    DeviceTainted,
    SignalHook,
    SignalPayload,
)


class Recorder(SignalHook):
    def __init__(self) -> None:
        self.seen: list[SignalPayload] = []

    def handle(self, payload: SignalPayload) -> None:
        self.seen.append(payload)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    hook = Recorder()
    hook.connect("test-signals")
    yield hook
    SignalHook.disconnect("test-signals")


def test_every_signal_has_one_payload_type_named_after_it() -> None:
    assert set(PAYLOADS) == set(ALL_SIGNALS)
    assert all(cls.signal_name == name for name, cls in PAYLOADS.items())


def test_a_hook_receives_the_frozen_payload_of_a_sent_signal(recorder: Recorder) -> None:
    sender = object()
    signals.breaker_opened.send(sender=sender, failure_count=5, pool="db", reason="failures")
    [payload] = recorder.seen
    assert payload == BreakerOpened(pool="db", failure_count=5, reason="failures")
    assert payload.sender is sender
    with pytest.raises(dataclasses.FrozenInstanceError):
        payload.pool = "other"  # type: ignore[misc]


def test_payload_fields_are_the_keywords_sent_including_task_id_and_extras(
    recorder: Recorder,
) -> None:
    signals.device_tainted.send(
        sender=None, pool="p", node="gpu0@a", device="cuda:0", info=None, task_id="t1", code=139
    )
    [payload] = recorder.seen
    assert isinstance(payload, DeviceTainted)
    assert (payload.task_id, dict(payload.extra)) == ("t1", {"code": 139})
    assert payload.fields() == {
        "pool": "p",
        "node": "gpu0@a",
        "device": "cuda:0",
        "info": None,
        "task_id": "t1",
        "code": 139,
    }


def test_a_disconnected_hook_sees_nothing() -> None:
    hook = Recorder()
    hook.connect("test-signals-off")
    SignalHook.disconnect("test-signals-off")
    signals.breaker_closed.send(sender=None, pool="db")
    assert hook.seen == []


def test_connecting_twice_under_one_uid_delivers_once(recorder: Recorder) -> None:
    recorder.connect("test-signals")
    signals.retry_attempt.send(sender=None, attempt=1, delay=0.1)
    assert len(recorder.seen) == 1
