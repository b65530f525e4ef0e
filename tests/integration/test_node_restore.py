"""The reaper moves a dead node's unacknowledged messages back to their queues, once.

A node's record lists the delivery tags of the messages it holds
unacknowledged. When the node is reaped, each of them moves from kombu's
``unacked`` bookkeeping to the head of its queue at once (not after kombu's
one-hour visibility timeout), marked ``redelivered``, in one atomic step that
only moves a message still unacknowledged: an acknowledged message, or one
restored already (by kombu or another reaper), never gets a second copy.
Before that, the crash ledger of barrier tasks is settled: a run the ledger
shows on the dead node counts as a crash (its lease would make the new
delivery look like a duplicate); a ``start_marks`` task never started is
marked given back unstarted.

These tests drive ``OrphanReaper.reap()`` in this process against real Redis
(broker under a key prefix, result backend and store).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from snakepit_celery.celery.app_context import app_group
from snakepit_celery.celery.bootsteps.in_flight import HeldDelivery
from snakepit_celery.celery.bootsteps.reaper import OrphanReaper
from snakepit_celery.celery.bootsteps.restore import UnackedRestorer
from snakepit_celery.store import Store
from tests.support.reaping import SHORT_TTL, reaper_app

QUEUE = "restore-test"


@pytest.fixture
def app(redis_url: str, key_prefix: str) -> Iterator[Celery]:
    yield from reaper_app(
        redis_url,
        key_prefix,
        {
            "restore.idem": {"idempotent": True},
            "restore.once": {},
            "restore.marked": {"crash_barrier": {"start_marks": True}},
        },
    )


@pytest.fixture
def store(redis_store: Store) -> Store:
    return redis_store


@pytest.fixture
def agent(app: Celery, store: Store) -> Iterator[OrphanReaper]:
    reaper = OrphanReaper(app, "reaper@test", store, grace=0.0)
    yield reaper
    reaper.restorer.close()


def hold(app: Celery, name: str) -> tuple[str, str]:
    """Publish a call of ``name`` and take it unacknowledged, as a node that then died would.

    Returns its delivery tag and task id.
    """
    task_id = str(app.send_task(name, args=(0.0,), queue=QUEUE).id)
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        message = channel.basic_get(QUEUE, no_ack=False)
        assert message is not None
        channel.qos._delivered.clear()  # dead: closing this connection restores nothing
        return str(message.delivery_tag), task_id


def dead_node(
    app: Celery,
    store: Store,
    name: str,
    held: list[list[str]],
    pids: tuple[int, ...] = (123,),
    *,
    running: tuple[str, ...] = (),
) -> None:
    """A node whose last heartbeat listed ``held`` messages (``running``: of those, the
    ids it was running), and that then died."""
    record = {
        "in_flight": list(running),
        "in_flight_tasks": {},
        "incarnation": "x",
        "held": held,
        "worker_pids": list(pids),
    }
    store.node_register(name, record, ttl=SHORT_TTL, group=app_group(app))
    time.sleep(SHORT_TTL + 0.1)


def live_node(app: Celery, store: Store, name: str, held: list[list[str]], pids: list[int]) -> None:
    """A live node (restarted under ``name``, say) holding ``held`` in processes ``pids``."""
    record = {"incarnation": "y", "held": held, "worker_pids": pids}
    store.node_register(name, record, ttl=30.0, group=app_group(app))


def queued(app: Celery, key_prefix: str) -> list[dict[str, Any]]:
    """The messages waiting in the test queue, head (next to be consumed) first."""
    raw = app.backend.client.lrange(f"{key_prefix}:{QUEUE}", 0, -1)
    return [json.loads(item) for item in reversed(raw)]


def unacked_tags(app: Celery, key_prefix: str) -> set[str]:
    return {t.decode() for t in app.backend.client.hkeys(f"{key_prefix}:unacked")}


def test_held_message_of_a_dead_node_is_back_at_the_head_of_its_queue(
    app: Celery, store: Store, agent: OrphanReaper, key_prefix: str
) -> None:
    tag, task_id = hold(app, "restore.idem")
    app.send_task("restore.idem", args=(0.0,), queue=QUEUE)  # waiting behind it
    dead_node(app, store, "dead@test", [[tag, task_id, "restore.idem"]])
    agent.reap()
    messages = queued(app, key_prefix)
    assert len(messages) == 2
    assert messages[0]["headers"]["id"] == task_id
    assert messages[0]["headers"]["redelivered"] is True
    assert messages[0]["properties"]["delivery_info"]["redelivered"] is True
    assert tag not in unacked_tags(app, key_prefix)
    assert not app.backend.client.zscore(f"{key_prefix}:unacked_index", tag)


def test_acknowledged_message_is_not_restored(
    app: Celery, store: Store, agent: OrphanReaper, key_prefix: str
) -> None:
    tag, task_id = hold(app, "restore.idem")
    app.backend.client.hdel(f"{key_prefix}:unacked", tag)  # acknowledged before the death
    dead_node(app, store, "dead@test", [[tag, task_id, "restore.idem"]])
    agent.reap()
    assert queued(app, key_prefix) == []


def test_entry_ages_are_checked_only_where_the_broker_clock_wrote_them(
    app: Celery, key_prefix: str
) -> None:
    """snakepit's transport scores deliveries with the broker's clock; kombu's stock one with
    the consumer's, against which a broker-clock age means nothing (it is not checked)."""
    tag, _ = hold(app, "restore.idem")
    stock = Celery("stock_transport", set_as_current=False)
    stock.conf.update(
        broker_url=app.conf.broker_url,
        broker_transport_options=app.conf.broker_transport_options,
        broker_transport="redis",
    )
    ours, theirs = UnackedRestorer(app), UnackedRestorer(stock)
    try:
        assert ours.restore([tag], min_age=60.0) == []  # taken under a second ago
        assert tag in unacked_tags(app, key_prefix)
        assert theirs.restore([tag], min_age=60.0) == [tag]
    finally:
        ours.close()
        theirs.close()
        stock.close()
    assert len(queued(app, key_prefix)) == 1


def test_a_message_is_restored_once_however_often_it_is_asked(app: Celery, key_prefix: str) -> None:
    tag, _ = hold(app, "restore.idem")
    first, second = UnackedRestorer(app), UnackedRestorer(app)
    try:
        assert first.restore([tag]) == [tag]
        assert second.restore([tag]) == []
        assert first.restore([tag]) == []
    finally:
        first.close()
        second.close()
    assert len(queued(app, key_prefix)) == 1


def test_run_the_ledger_shows_on_the_dead_node_is_counted_as_a_crash(
    app: Celery, store: Store, agent: OrphanReaper
) -> None:
    tag, task_id = hold(app, "restore.idem")
    store.ledger_start(task_id, worker_id="dead@test/123", lease=3600.0, ttl=3600.0)
    dead_node(app, store, "dead@test", [[tag, task_id, "restore.idem"]])
    agent.reap()
    entry = store.ledger_get(task_id)
    assert entry is not None
    assert (entry.crashes, entry.running_on) == (1, None)


def test_start_marked_message_never_started_is_given_back_unstarted(
    app: Celery, store: Store, agent: OrphanReaper
) -> None:
    tag, task_id = hold(app, "restore.marked")
    dead_node(app, store, "dead@test", [[tag, task_id, "restore.marked"]])
    agent.reap()
    entry = store.ledger_get(task_id)
    assert entry is not None
    assert (entry.released, entry.crashes) == (True, 0)


@pytest.mark.parametrize("running", [False, True], ids=["prefetched", "running"])
def test_an_idempotent_message_of_a_dead_node_is_left_for_the_gate_to_count(
    app: Celery, store: Store, agent: OrphanReaper, running: bool
) -> None:
    """Not listed running at the node's last beat does not prove it never started (the
    record follows a start by up to IN_FLIGHT_POLL): without start marks a loss is a crash."""
    tag, task_id = hold(app, "restore.idem")
    in_flight = (task_id,) if running else ()
    dead_node(app, store, "dead@test", [[tag, task_id, "restore.idem"]], running=in_flight)
    agent.reap()
    assert store.ledger_get(task_id) is None  # redelivered, not released: the gate counts it


def test_message_of_a_task_without_start_marks_leaves_the_ledger_alone(
    app: Celery, store: Store, agent: OrphanReaper
) -> None:
    tag, task_id = hold(app, "restore.once")
    dead_node(app, store, "dead@test", [[tag, task_id, "restore.once"]])
    agent.reap()
    assert store.ledger_get(task_id) is None


def test_a_tag_a_live_node_holds_again_is_not_restored_nor_its_run_counted(
    app: Celery, store: Store, agent: OrphanReaper, key_prefix: str
) -> None:
    """kombu restored the dead node's message (same tag) and the restarted node runs it."""
    tag, task_id = hold(app, "restore.idem")
    store.ledger_start(task_id, worker_id="dead@test/456", lease=3600.0, ttl=3600.0)
    dead_node(app, store, "dead@test", [[tag, task_id, "restore.idem"]], pids=(123,))
    live_node(app, store, "dead@test", [[tag, task_id, "restore.idem"]], pids=[456])
    agent.reap()
    assert queued(app, key_prefix) == []
    assert tag in unacked_tags(app, key_prefix)
    entry = store.ledger_get(task_id)
    assert entry is not None and (entry.crashes, entry.running_on) == (0, "dead@test/456")


def take_again(app: Celery, tag: str) -> None:
    """kombu restores the message of ``tag`` (visibility timeout) and a live node takes it."""
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        channel.qos.restore_by_tag(tag, leftmost=True)
        message = channel.basic_get(QUEUE, no_ack=False)
        assert message is not None and str(message.delivery_tag) == tag
        channel.qos._delivered.clear()  # held on: closing this connection restores nothing


def test_a_tag_taken_again_after_the_dead_nodes_last_beat_is_left_to_its_new_holder(
    app: Celery, store: Store, agent: OrphanReaper, key_prefix: str
) -> None:
    """A node restarted under the dead one's name: kombu restored the message at its start and
    the node took it within its first heartbeat, so no live record lists the tag yet."""
    tag, task_id = hold(app, "restore.idem")
    dead_node(app, store, "dead@test", [[tag, task_id, "restore.idem"]])
    time.sleep(0.5)
    take_again(app, tag)
    agent.reap()
    assert queued(app, key_prefix) == []
    assert tag in unacked_tags(app, key_prefix)


def test_a_tag_the_reapers_own_node_holds_is_not_restored(
    app: Celery, store: Store, key_prefix: str
) -> None:
    tag, task_id = hold(app, "restore.idem")
    held = [HeldDelivery(tag, task_id, "restore.idem")]
    reaper = OrphanReaper(app, "reaper@test", store, grace=0.0, held=lambda: held)
    try:
        dead_node(app, store, "dead@test", [[tag, task_id, "restore.idem"]])
        reaper.reap()
    finally:
        reaper.restorer.close()
    assert queued(app, key_prefix) == []


def test_a_run_of_a_restarted_node_of_that_name_is_no_crash_of_the_dead_one(
    app: Celery, store: Store, agent: OrphanReaper
) -> None:
    tag, task_id = hold(app, "restore.idem")
    store.ledger_start(task_id, worker_id="dead@test/456", lease=3600.0, ttl=3600.0)
    dead_node(app, store, "dead@test", [[tag, task_id, "restore.idem"]], pids=(123,))
    live_node(app, store, "dead@test", [], pids=[456])
    agent.reap()
    entry = store.ledger_get(task_id)
    assert entry is not None and (entry.crashes, entry.running_on) == (0, "dead@test/456")
