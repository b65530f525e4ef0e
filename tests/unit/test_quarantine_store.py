"""The quarantine in the store: bounded by a TTL and a size cap, on memory and on Redis."""

from __future__ import annotations

import json
import time

import pytest
from celery import Celery
from celery.app.task import Context
from celery.worker.request import Request
from kombu import Connection, Exchange, Queue
from kombu.message import Message

from snakepit_celery import signals
from snakepit_celery.celery.poison import kombu_message, quarantine_delivered, request_message
from snakepit_celery.errors import ConfigError
from snakepit_celery.policy.barrier_config import CrashBarrierConfig
from snakepit_celery.quarantine import Quarantine, QuarantinedMessage, message_digest
from snakepit_celery.store import Store, store_error_count


def _record(n: int) -> dict[str, object]:
    return {"task": "t", "n": n}


def test_added_message_is_listed_got_and_removed(each_store: Store) -> None:
    each_store.quarantine_add("a", _record(1), ttl=60, max_entries=10)
    [entry] = each_store.quarantine_list()
    assert (entry.entry_id, entry.record) == ("a", _record(1))
    assert entry.expires_at == pytest.approx(entry.quarantined_at + 60, abs=1)
    assert each_store.quarantine_get("a") == entry
    assert each_store.quarantine_remove("a") == entry
    assert each_store.quarantine_get("a") is None
    assert each_store.quarantine_remove("a") is None
    assert each_store.quarantine_list() == []


def test_adding_beyond_the_cap_evicts_the_oldest(each_store: Store) -> None:
    for n in range(3):
        assert each_store.quarantine_add(f"m{n}", _record(n), ttl=60, max_entries=2) == (
            ["m0"] if n == 2 else []
        )
    assert [e.entry_id for e in each_store.quarantine_list()] == ["m1", "m2"]


def test_expired_message_is_gone(each_store: Store) -> None:
    each_store.quarantine_add("short", _record(1), ttl=0.2, max_entries=10)
    each_store.quarantine_add("long", _record(2), ttl=60, max_entries=10)
    time.sleep(0.3)
    assert [e.entry_id for e in each_store.quarantine_list()] == ["long"]
    assert each_store.quarantine_get("short") is None


def test_crash_history_keeps_the_newest_and_is_forgotten_with_the_ledger(
    each_store: Store,
) -> None:
    for n in range(4):
        each_store.quarantine_note("task-1", {"n": n}, ttl=60, max_entries=3)
    each_store.ledger_crash("task-1", ttl=60)
    assert each_store.quarantine_history("task-1") == [{"n": 1}, {"n": 2}, {"n": 3}]
    each_store.quarantine_forget("task-1")
    assert each_store.quarantine_history("task-1") == []
    assert each_store.ledger_get("task-1") is None


def test_quarantine_adds_history_and_sends_the_signal(each_store: Store) -> None:
    seen: list[dict[str, object]] = []

    def receiver(sender: object = None, **fields: object) -> None:
        seen.append(fields)

    signals.task_quarantined.connect(receiver, weak=False)
    try:
        found = Quarantine(each_store, CrashBarrierConfig(max_restarts=1))
        found.note_crash("t1", {"classification": "segfault", "node": "a"})
        message = QuarantinedMessage.of(b"\xff\x00", headers={"task": "x", "id": "t1"})
        assert found.add("t1", message, reason="stopped", node="a", error="e", task_id="t1")
    finally:
        signals.task_quarantined.disconnect(receiver)
    [entry] = found.entries()
    assert entry.record["history"] == [{"classification": "segfault", "node": "a"}]
    assert QuarantinedMessage.from_dict(entry.record["message"]).raw_body() == b"\xff\x00"
    assert seen[0]["entry_id"] == "t1" and seen[0]["task_name"] == "x"


def test_quarantine_switched_off_keeps_nothing(each_store: Store) -> None:
    found = Quarantine(each_store, CrashBarrierConfig(quarantine=False))
    assert not found.add(
        "t1", QuarantinedMessage.of("{}", headers={}), reason="r", node="n", error=""
    )
    assert found.entries() == []


def test_message_digest_is_stable_and_tells_messages_apart() -> None:
    assert message_digest(b"[1]", {"task": "t"}) == message_digest("[1]", {"task": "t"})
    assert message_digest(b"[1]", {"task": "t"}) != message_digest(b"[2]", {"task": "t"})


@pytest.mark.parametrize(
    ("setting", "value"),
    [("quarantine_ttl", 0), ("quarantine_max_entries", 0), ("quarantine", "yes")],
)
def test_invalid_quarantine_setting_names_itself(setting: str, value: object) -> None:
    with pytest.raises(ConfigError, match=setting):
        CrashBarrierConfig.from_dict({setting: value})


def test_message_rebuilt_from_a_task_request_matches_the_delivered_one() -> None:
    """The crash-ledger gate runs in a pool child: it rebuilds the message from the request."""
    app = Celery("rebuild", broker="memory://", set_as_current=False)

    @app.task(name="rebuild.add")
    def add(x: int, y: int) -> int:
        return x + y

    with Connection("memory://") as conn:
        channel = conn.channel()
        queue = Queue("q", Exchange("q"), routing_key="q", channel=channel)
        queue.declare()
        with app.producer_or_acquire(conn.Producer()) as producer:
            app.amqp.send_task_message(
                producer,
                "rebuild.add",
                app.amqp.as_task_v2("id-1", "rebuild.add", (1, 2), {}),
                exchange="q",
                routing_key="q",
            )
        delivered = queue.get(no_ack=True)
    assert delivered is not None
    request = Request(delivered, app=app, task=add)
    rebuilt = request_message(add, Context(request.request_dict, args=(1, 2), kwargs={}))
    original = kombu_message(delivered)
    assert rebuilt.headers["id"] == original.headers["id"] == "id-1"
    assert rebuilt.headers["task"] == "rebuild.add"
    assert json.loads(rebuilt.body)[:2] == json.loads(original.body)[:2] == [[1, 2], {}]


def test_a_quarantine_the_store_cannot_take_is_reported_as_an_outage(
    open_failing: None, caplog: pytest.LogCaptureFixture
) -> None:
    """No traceback per message while the store is down: counted, like every outage."""
    app = Celery("quarantine_down", set_as_current=False)
    app.conf.update(broker_url="memory://", snakepit_store_url="redis://127.0.0.1:1/0")
    message = Message(body="{}", headers={"task": "t"}, content_type="application/json")
    before = store_error_count()
    quarantine_delivered(
        app, "n@h", message, reason="malformed", failure=RuntimeError("bad message")
    )
    assert store_error_count() > before
    assert not [r for r in caplog.records if r.exc_info]
