"""``snakepit_celery.transport.redis``: no message is lost between its pop and its unacked record.

kombu's Redis transport pops a message (BRPOP) and writes its unacknowledged
record in a second round trip; a consumer killed in between loses it (kombu
#305). Here the pop writes the record in the same atomic step, so a consumer
that dies right after the pop leaves a message kombu's own restore brings
back. Real Redis, real kombu connections.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Connection, Exchange, Queue

from snakepit_celery.celery.install import REDIS_TRANSPORT, install, use_redis_transport
from snakepit_celery.testing.monitor import CommandLog, transactions
from snakepit_celery.testing.rabbitmq import AMQP_URL
from snakepit_celery.transport.redis import (
    POP_SCRIPT,
    Channel,
    ack_with_next_pop,
    bell_key,
    publish_with_ack,
)


@pytest.fixture
def connection(redis_url: str, key_prefix: str) -> Iterator[Connection]:
    """A kombu connection on this transport, every key under the test's prefix."""
    conn = Connection(
        redis_url,
        transport=REDIS_TRANSPORT,
        transport_options={"global_keyprefix": f"{key_prefix}:", "visibility_timeout": 0.5},
    )
    try:
        yield conn
    finally:
        conn.close()


def _queue(conn: Connection) -> Queue:
    queue = Queue("work", Exchange("work"), routing_key="work", channel=conn.default_channel)
    queue.declare()
    return queue


def _publish(conn: Connection, body: dict[str, Any]) -> None:
    conn.Producer().publish(body, exchange="work", routing_key="work", serializer="json")


def _taken(conn: Connection, body: dict[str, Any]) -> tuple[Queue, Any]:
    """The work queue, and ``body`` published to it and taken (held unacknowledged)."""
    queue = _queue(conn)
    _publish(conn, body)
    message = queue.get()
    assert message is not None
    return queue, message


def test_popped_message_is_in_the_unacked_hash_before_any_client_code_runs(
    connection: Connection, redis_client: redis.Redis, key_prefix: str
) -> None:
    _queue(connection)
    _publish(connection, {"n": 1})
    p = f"{key_prefix}:"
    keys = [f"{p}unacked", f"{p}unacked_index", f"{p}work", f"{p}{bell_key('work')}"]
    dest, item, recorded = redis_client.eval(POP_SCRIPT, 4, *keys, 1)  # the pop, then "death"
    assert (dest.decode(), recorded) == (f"{p}work", 1)
    assert redis_client.llen(f"{p}work") == 0
    tag = json.loads(item)["properties"]["delivery_tag"]
    message, exchange, routing_key = json.loads(redis_client.hget(f"{p}unacked", tag))
    assert (message["body"], exchange, routing_key) == (json.loads(item)["body"], "work", "work")
    assert redis_client.zscore(f"{p}unacked_index", tag) is not None


def _held_by_a_dead_consumer(
    conn: Connection, redis_client: redis.Redis, key_prefix: str, body: dict[str, Any]
) -> Queue:
    """The work queue, ``body`` popped from it by a consumer that then died holding it."""
    queue = _queue(conn)
    _publish(conn, body)
    p = f"{key_prefix}:"
    redis_client.eval(POP_SCRIPT, 3, f"{p}unacked", f"{p}unacked_index", f"{p}work", 1)
    return queue


def test_message_of_a_consumer_dead_after_the_pop_is_restored_and_delivered_again(
    connection: Connection, redis_client: redis.Redis, key_prefix: str
) -> None:
    queue = _held_by_a_dead_consumer(connection, redis_client, key_prefix, {"n": 2})
    assert queue.get(no_ack=True) is None
    time.sleep(0.6)  # past the visibility timeout
    connection.default_channel.qos.restore_visible(num=10, interval=1)
    again = queue.get(no_ack=True)
    assert again is not None and again.payload == {"n": 2} and again.delivery_info["redelivered"]


def test_a_consumer_killed_inside_the_restore_scan_holds_up_restores_for_seconds_only(
    connection: Connection, redis_client: redis.Redis, key_prefix: str
) -> None:
    """kombu's scan lock lives 300 s; a consumer SIGKILLed holding it stopped every restore."""
    queue = _held_by_a_dead_consumer(connection, redis_client, key_prefix, {"n": 3})
    channel = connection.default_channel
    expire = float(channel.unacked_mutex_expire)
    redis_client.set(f"{key_prefix}:unacked_mutex", "a-killed-consumer", px=int(expire * 1000))
    again = None
    deadline = time.monotonic() + 30
    while again is None and time.monotonic() < deadline:
        time.sleep(0.25)
        channel.qos.restore_visible(num=10, interval=1)
        again = queue.get(no_ack=True)
    assert again is not None and again.payload == {"n": 3}, f"lock kept {expire} s"


def _other_connection(conn: Connection, url: str) -> Connection:
    """A second connection to the same server and keys (a producer pool's, say)."""
    return Connection(url, transport=REDIS_TRANSPORT, transport_options=conn.transport_options)


def test_publish_inside_publish_with_ack_goes_out_with_the_ack_in_one_transaction(
    connection: Connection, redis_client: redis.Redis, key_prefix: str, redis_url: str
) -> None:
    queue, message = _taken(connection, {"n": "old"})
    p = f"{key_prefix}:"
    with _other_connection(connection, redis_url) as producer_conn, CommandLog(redis_url) as log:
        with publish_with_ack(message) as folded:
            _publish(producer_conn, {"n": "new"})
            assert folded and redis_client.llen(f"{p}work") == 0  # held back
            start = log.mark(redis_client)
            message.ack()
        end = log.mark(redis_client)
    assert redis_client.hlen(f"{p}unacked") == 0
    again = queue.get(no_ack=True)
    assert again is not None and again.payload == {"n": "new"}
    blocks = [{c.split()[0].upper() for c in t} for t in transactions(log.since(start, end), p)]
    assert any({"LPUSH", "ZREM", "HDEL"} <= block for block in blocks), blocks


def _old_with_new_held(conn: Connection) -> tuple[Queue, Any]:
    """A delivered message ``{"n": "old"}``, and ``{"n": "new"}`` held for its ack."""
    queue, message = _taken(conn, {"n": "old"})
    with publish_with_ack(message):
        _publish(conn, {"n": "new"})
    return queue, message


def test_publishes_held_for_an_ack_go_out_with_it_whenever_it_comes(
    connection: Connection, redis_client: redis.Redis, key_prefix: str
) -> None:
    _, message = _old_with_new_held(connection)
    assert redis_client.llen(f"{key_prefix}:work") == 0  # Celery acks later, on its loop
    message.ack()
    assert redis_client.llen(f"{key_prefix}:work") == 1
    assert redis_client.hlen(f"{key_prefix}:unacked") == 0


def test_a_message_given_back_instead_drops_the_publishes_held_for_its_ack(
    connection: Connection, redis_client: redis.Redis, key_prefix: str
) -> None:
    queue, message = _old_with_new_held(connection)
    message.reject(requeue=True)
    again = queue.get(no_ack=True)
    assert again is not None and again.payload == {"n": "old"}
    assert queue.get(no_ack=True) is None


def test_publish_with_ack_of_another_transport_publishes_at_once(
    redis_url: str, redis_client: redis.Redis, key_prefix: str
) -> None:
    options = {"global_keyprefix": f"{key_prefix}:"}
    with Connection(redis_url, transport="redis", transport_options=options) as stock:
        _, message = _taken(stock, {"n": "old"})
        with publish_with_ack(message) as folded:
            _publish(stock, {"n": "new"})
            assert not folded and redis_client.llen(f"{key_prefix}:work") == 1
        message.ack()


def test_acks_asked_to_wait_ride_on_the_next_pop_without_a_round_trip_of_their_own(
    connection: Connection, redis_client: redis.Redis, key_prefix: str, redis_url: str
) -> None:
    queue = _queue(connection)
    received: list[object] = []

    def on_message(body: object, message: object) -> None:
        received.append(body)
        assert ack_with_next_pop(message)
        message.ack()  # type: ignore[attr-defined]

    with CommandLog(redis_url) as log, connection.Consumer(queue, callbacks=[on_message]):
        start = log.mark(redis_client)
        for n in range(3):
            _publish(connection, {"n": n})
        for _ in range(30):
            with contextlib.suppress(TimeoutError):
                connection.drain_events(timeout=0.3)
            if len(received) == 3 and redis_client.hlen(f"{key_prefix}:unacked") == 0:
                break
        commands = log.since(start)
    assert received == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert redis_client.hlen(f"{key_prefix}:unacked") == 0
    assert redis_client.zcard(f"{key_prefix}:unacked_index") == 0
    own = [c for c in commands if c.upper().startswith(("HDEL", "ZREM")) and key_prefix in c]
    assert own == [], own  # every acknowledgement went with a pop (or the idle flush)


def test_the_pop_script_removes_the_unacked_records_of_the_tags_it_carries(
    connection: Connection, redis_client: redis.Redis, key_prefix: str
) -> None:
    _, message = _taken(connection, {"n": 1})
    p = f"{key_prefix}:"
    keys = [f"{p}unacked", f"{p}unacked_index", f"{p}work", f"{p}{bell_key('work')}"]
    assert redis_client.eval(POP_SCRIPT, 4, *keys, 1, message.delivery_tag) is None
    assert redis_client.hlen(f"{p}unacked") == 0 and redis_client.zcard(f"{p}unacked_index") == 0


def test_keep_visible_moves_delivery_times_of_held_messages_to_the_brokers_now(
    connection: Connection, redis_client: redis.Redis, key_prefix: str
) -> None:
    _, message = _taken(connection, {"n": 1})
    tag, index = str(message.delivery_tag), f"{key_prefix}:unacked_index"
    channel = connection.default_channel
    redis_client.zadd(index, {tag: 1.0})  # delivered long ago
    seconds, micros = redis_client.time()
    channel.keep_visible([tag, "acknowledged-meanwhile"])
    assert (redis_client.zscore(index, tag) or 0.0) >= seconds + micros / 1e6
    assert redis_client.zscore(index, "acknowledged-meanwhile") is None  # XX: stays gone
    assert set(channel.qos.stamped_at) == {tag}
    message.ack()
    assert channel.qos.stamped_at == {}


def test_acks_waiting_for_a_pop_are_sent_when_the_channel_closes(
    redis_url: str, redis_client: redis.Redis, key_prefix: str
) -> None:
    options = {"global_keyprefix": f"{key_prefix}:"}
    with Connection(redis_url, transport=REDIS_TRANSPORT, transport_options=options) as conn:
        queue = _queue(conn)
        _publish(conn, {"n": 1})
        message = queue.get()
        assert message is not None and ack_with_next_pop(message)
        message.ack()
        assert redis_client.hlen(f"{key_prefix}:unacked") == 1  # waiting for a pop
    assert redis_client.hlen(f"{key_prefix}:unacked") == 0


def test_consumer_receives_acks_and_leaves_nothing_unacked(
    connection: Connection, redis_client: redis.Redis, key_prefix: str
) -> None:
    queue = _queue(connection)
    received: list[object] = []

    def on_message(body: object, message: object) -> None:
        received.append(body)
        message.ack()  # type: ignore[attr-defined]

    with connection.Consumer(queue, callbacks=[on_message]):
        for n in range(3):
            _publish(connection, {"n": n})
        for _ in range(30):
            if len(received) == 3:
                break
            with contextlib.suppress(TimeoutError):
                connection.drain_events(timeout=0.5)
    assert received == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert redis_client.hlen(f"{key_prefix}:unacked") == 0
    assert isinstance(connection.default_channel, Channel)


@pytest.mark.parametrize(
    ("conf", "picked"),
    [
        ({"broker_url": "redis://127.0.0.1:6379/0"}, True),
        ({"broker_url": "rediss://127.0.0.1:6379/0"}, True),
        ({"broker_url": "redis://127.0.0.1:6379/0", "broker_transport": "redis"}, False),
        ({"broker_url": "amqp://guest@127.0.0.1//"}, False),
    ],
)
def test_install_picks_the_transport_for_redis_brokers_unless_one_is_named(
    conf: dict[str, str], picked: bool
) -> None:
    app = Celery("t", set_as_current=False)
    app.conf.update(conf)
    assert use_redis_transport(app) is picked
    connection = app.connection_for_write()
    assert (connection.transport_cls == REDIS_TRANSPORT) is picked
    connection.release()


def test_a_broker_url_changed_after_install_gets_its_own_transport(redis_url: str) -> None:
    app = Celery("t", set_as_current=False)
    app.conf.update(broker_url=redis_url, snakepit_store_url="memory://")
    install(app)
    with app.connection_for_write() as conn:
        assert conn.transport_cls == REDIS_TRANSPORT
    app.conf.broker_url = AMQP_URL
    with app.connection_for_write() as conn:
        assert conn.transport_cls == "amqp"
        assert conn.clone().transport_cls == "amqp"


def test_installed_app_publishes_and_consumes_through_the_transport(redis_url: str) -> None:
    app = Celery("t", set_as_current=False)
    app.conf.update(broker_url=redis_url, snakepit_store_url="memory://")
    install(app)
    with app.connection_for_write() as conn:
        assert type(conn.default_channel).__module__ == "snakepit_celery.transport.redis"


def test_pop_reply_is_delivered_even_when_credit_ran_out_meanwhile(
    connection: Connection, redis_client: redis.Redis, key_prefix: str
) -> None:
    """A recorded pop never waits unread (the visibility timeout would restore it meanwhile)."""
    queue = _queue(connection)
    received: list[object] = []
    channel = connection.default_channel
    with connection.Consumer(queue, callbacks=[lambda body, _m: received.append(body)]):
        channel.basic_qos(0, 1, False)
        _publish(connection, {"n": 7})
        poller = connection.transport.cycle
        poller.on_poll_start()  # sends the atomic pop: credit is there
        channel.qos._delivered["held-elsewhere"] = None  # credit runs out before the reply
        assert not channel.qos.can_consume()
        fileno = channel.client.connection._sock.fileno()
        time.sleep(0.1)
        with contextlib.suppress(Exception):
            poller.on_readable(fileno)
    assert received == [{"n": 7}]
    assert redis_client.hlen(f"{key_prefix}:unacked") == 1
