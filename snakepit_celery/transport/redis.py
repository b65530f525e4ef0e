# mypy: disallow-untyped-calls=False
"""kombu's Redis transport with the pop and its unacknowledged record in one atomic step.

kombu's Redis transport takes a message off its queue with ``BRPOP`` and then,
in a second round trip, writes it to the unacknowledged hash
(``unacked``/``unacked_index``) from which a dead consumer's messages are
restored. A consumer killed between the two holds the only copy, and the
message is lost (kombu #305). Redis cannot block inside a script, and its
only atomic blocking move (``BLMOVE``) takes one source list, while a
worker consumes several queues, so this transport splits the two jobs:

- taking a message is one Lua script (``transport/broker_pop.lua``): ``RPOP``
  from the queues in ``BRPOP``'s order and write kombu's own unacknowledged
  record of it, atomically; kombu's restore, Celery's warm-shutdown give-back
  (``qos._delivered``), the snakepit reaper and queue release see the very
  format they know;
- waiting while every queue is empty is a ``BRPOP`` on per-queue "bell"
  lists, never on the queues: this transport's publishers ring the bell of
  the queue they publish to (in the same round trip), so an idle consumer
  wakes at once; a message from a publisher on stock kombu waits at most
  ``idle_poll_interval`` seconds (transport option, default 0.25).

One more guarantee: :func:`publish_with_ack` sends the messages a thread
publishes inside its block together with the acknowledgement of the message
it was given, in one ``MULTI``/``EXEC`` transaction (the crash barrier
re-publishes a crashed task that way: the new message and the end of the old
one happen together or not at all, so a node dying between them leaves
neither two copies nor none).

And one saving: :func:`ack_with_next_pop` lets an acknowledgement ride on the
channel's next pop (the pop script removes its unacknowledged record first),
so the event loop does not wait a round trip for it; the crash barrier uses
it for the tasks whose copy it drops should the node die before.

Delivery times are the broker's clock: the pop stamps them with ``TIME``, and
so does :meth:`Channel.keep_visible` (the visibility keeper), so a restorer
can tell a message taken again from its first delivery by age alone. kombu's
own visibility-timeout restore locks its scan for 300 s; a consumer killed
inside it stopped every node's restores that long, so here the lock expires
after 5 s (``unacked_mutex_expire``).

Per delivery this costs one round trip instead of two. Select it with
``broker_transport = "snakepit_celery.transport.redis:Transport"``;
``install()`` makes every broker connection to a ``redis://``/``rediss://``
URL use it unless the app names its own transport (``broker_transport =
"redis"`` keeps kombu's).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from queue import Empty
from time import monotonic
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import Channel as VirtualChannel
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads
from redis.exceptions import NoScriptError

__all__ = [
    "BELL_PREFIX",
    "KEEP_SCRIPT",
    "POP_SCRIPT",
    "Channel",
    "Poller",
    "QoS",
    "Transport",
    "ack_with_next_pop",
    "bell_key",
    "publish_with_ack",
]

logger = logging.getLogger(__name__)

#: The atomic pop (see the module docstring).
POP_SCRIPT = (
    resources.files("snakepit_celery.transport")
    .joinpath("broker_pop.lua")
    .read_text(encoding="utf-8")
)
#: ``Channel.keep_visible``: KEYS: kombu's unacked_index zset; ARGV: delivery tags.
KEEP_SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for i = 1, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', now, ARGV[i])
end
return #ARGV
"""
#: Most acknowledgements one pop carries (the rest wait for the next one).
_ACKS_PER_POP = 256
#: Bell lists are named ``<BELL_PREFIX><queue>``.
BELL_PREFIX = "_snakepit.bell."
#: How long (ms) an unrung bell list lives.
_BELL_TTL_MS = 60_000


def bell_key(queue: str) -> str:
    """The bell list of ``queue``: one element per message published to it, since emptied."""
    return f"{BELL_PREFIX}{queue}"


class _Fold:
    """Where this thread's publishes go while :func:`publish_with_ack` holds them back."""

    def __init__(self, channel: Channel, delivery_tag: str) -> None:
        self.channel = channel
        self.delivery_tag = delivery_tag

    def takes(self, channel: Channel) -> bool:
        """True when ``channel`` writes to the very server and keys of the acknowledging one."""
        mine = self.channel
        return channel.global_keyprefix == mine.global_keyprefix and _server(channel) == _server(
            mine
        )

    def hold(self, commands: list[tuple[Any, ...]]) -> None:
        """Keep ``commands`` for the acknowledgement of the message."""
        qos = self.channel.qos
        assert isinstance(qos, QoS)
        qos.held.setdefault(self.delivery_tag, []).extend(commands)


_folds = threading.local()


def _fold() -> _Fold | None:
    fold: _Fold | None = getattr(_folds, "fold", None)
    return fold


def _server(channel: Channel) -> tuple[Any, ...]:
    client = channel.connection.client
    return (client.hostname, client.port, client.virtual_host, client.userid)


@contextmanager
def publish_with_ack(message: Any) -> Iterator[bool]:
    """Send what this thread publishes in the block with ``message``'s acknowledgement.

    ``message`` is a delivered kombu message. When it came through this
    transport, publishes to the same Redis server made by this thread inside
    the block are held back and sent with the message's acknowledgement,
    whenever that comes (Celery acknowledges on its event loop, after the
    block), in one ``MULTI``/``EXEC``: both happen or neither. A message
    given back instead (rejected, or its connection lost) comes back, and
    the held publishes are dropped. The block yields True then; False
    (publishes go out at once, as usual) for any other transport.
    """
    channel = getattr(message, "channel", None)
    if not isinstance(channel, Channel) or _fold() is not None:
        yield False
        return
    _folds.fold = _Fold(channel, str(message.delivery_tag))
    try:
        yield True
    finally:
        _folds.fold = None


class QoS(kombu_redis.QoS):
    """kombu's Redis QoS that does not write again what the atomic pop recorded.

    Its acknowledgement also sends the publishes :func:`publish_with_ack` held
    back for it, in the same transaction.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: delivery tag -> publish commands to send with its acknowledgement.
        self.held: dict[str, list[tuple[Any, ...]]] = {}
        #: Delivery tags whose acknowledgement may ride on the next pop (``ack_with_next_pop``).
        self.deferrable: set[str] = set()
        #: delivery tag -> ``monotonic()`` when this channel last stamped its delivery time
        #: (took it, or kept it visible), until its ack or reject.
        self.stamped_at: dict[str, float] = {}

    def append(self, message: Any, delivery_tag: Any) -> None:
        """Record a delivery (the pop script already wrote its unacknowledged record)."""
        self.stamped_at[str(delivery_tag)] = monotonic()
        if self.channel.recorded_tag is not None and delivery_tag == self.channel.recorded_tag:
            self.channel.recorded_tag = None
            VirtualChannel.QoS.append(self, message, delivery_tag)
            return
        super().append(message, delivery_tag)

    def ack(self, delivery_tag: Any) -> None:
        """Forget the delivery: with the publishes held back for it, in one transaction;
        on the next pop when it may wait (``ack_with_next_pop``); else as kombu does."""
        tag = str(delivery_tag)
        self.stamped_at.pop(tag, None)
        held = self.held.pop(tag, None)
        deferrable = tag in self.deferrable
        self.deferrable.discard(tag)
        if held:
            with self.pipe_or_acquire() as pipe:
                for name, *args in held:
                    getattr(pipe, name)(*args)
                self._remove_from_indices(delivery_tag, pipe).execute()
        elif deferrable:
            self.channel.pending_acks.append(tag)
        else:
            super().ack(delivery_tag)
            return
        VirtualChannel.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        """kombu's; publishes held for the delivery's acknowledgement are dropped."""
        self.held.pop(str(delivery_tag), None)
        self.deferrable.discard(str(delivery_tag))
        self.stamped_at.pop(str(delivery_tag), None)
        super().reject(delivery_tag, requeue=requeue)


def ack_with_next_pop(message: Any) -> bool:
    """Let ``message``'s coming acknowledgement ride on its channel's next pop.

    The consumer's event loop then does not wait a round trip for it: the
    pop script removes the unacknowledged record first (or, with the queues
    empty, a pipeline before the channel waits on its bells). Until then the
    message would come back should the node die, so only a caller that drops
    such a copy may ask (the crash-ledger gate drops a copy of a task whose
    result is stored). False, changing nothing, on any other transport.
    """
    channel = getattr(message, "channel", None)
    if not isinstance(channel, Channel):
        return False
    qos = channel.qos
    assert isinstance(qos, QoS)
    qos.deferrable.add(str(message.delivery_tag))
    return True


class Channel(kombu_redis.Channel):
    """Redis channel that pops with ``broker_pop.lua`` and waits on bells."""

    QoS = QoS
    from_transport_options = (  # type: ignore[assignment]
        *kombu_redis.Channel.from_transport_options,
        "idle_poll_interval",
    )

    #: Seconds an idle consumer waits on its bells before it looks at the queues again.
    idle_poll_interval = 0.25
    #: Expiry (s) of the lock kombu's visibility-timeout restore takes for its scan (kombu:
    #: 300). A consumer killed inside the scan keeps it that long, and until then no node
    #: restores anything. Scans that overlap are safe (each message moves in its own
    #: ``WATCH`` transaction), so a short expiry costs nothing (transport option).
    unacked_mutex_expire = 5

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        #: Delivery tag whose unacknowledged record the last pop wrote (for ``QoS.append``).
        self.recorded_tag: str | None = None
        self._idle = False
        self._sent: str | None = None
        self._pop_sha: str | None = None
        #: Acknowledgements waiting for the next pop, and those the pop in flight carries.
        self.pending_acks: list[str] = []
        self._acks_sent: list[str] = []
        super().__init__(*args, **kwargs)

    def _prefixed(self, key: str) -> str:
        return f"{self.global_keyprefix or ''}{key}"

    def _brpop_start(self, timeout: float | None = None) -> None:
        """Send the next step: the atomic pop, or (queues were empty) a wait on the bells."""
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            self.flush_acks()
            return
        if self._pop_sha is None:
            self._pop_sha = str(bytes_to_str(self.client.script_load(POP_SCRIPT)))
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()  # type: ignore[assignment]
        if self._idle:
            self.flush_acks()
            bells = [self._prefixed(bell_key(queue)) for queue in queues]
            wait = min(self.idle_poll_interval, timeout or self.brpop_timeout or 1)
            self._sent = "BRPOP"
            self.client.connection.send_command("BRPOP", *bells, wait)
            return
        keys = [
            self._prefixed(self._q_for_pri(queue, pri))
            for pri in self.priority_steps
            for queue in queues
        ]
        unacked = [self._prefixed(self.unacked_key), self._prefixed(self.unacked_index_key)]
        bells = [self._prefixed(bell_key(queue)) for queue in queues]
        acks = self._acks_sent = self.pending_acks[:_ACKS_PER_POP]
        del self.pending_acks[:_ACKS_PER_POP]
        self._sent = "EVALSHA"
        self.client.connection.send_command(
            "EVALSHA",
            self._pop_sha,
            len(keys) + len(bells) + 2,
            *unacked,
            *keys,
            *bells,
            len(keys),
            *acks,
        )

    def _brpop_read(self, **options: Any) -> bool:
        """Read the step's reply: deliver a popped message, or switch between pop and wait."""
        sent, self._sent = self._sent, None
        try:
            try:
                reply = self.client.parse_response(
                    self.client.connection, sent or "BRPOP", **options
                )
            except NoScriptError:
                self._pop_sha = None  # the server lost its scripts: load again, then pop
                self.pending_acks[:0] = self._acks_sent
                raise Empty() from None
            except self.connection_errors:
                self.pending_acks[:0] = self._acks_sent  # sent again once reconnected
                self.client.connection.disconnect()
                raise
            finally:
                self._acks_sent = []
            if sent != "EVALSHA" or not reply:
                self._idle = sent == "EVALSHA"
                raise Empty()
            return self._deliver_popped(reply)
        finally:
            self._in_poll = None  # type: ignore[assignment]
            self._flush_brpop_reauth()

    def flush_acks(self) -> None:
        """Send the acknowledgements waiting for a pop now, in one pipeline."""
        if not self.pending_acks:
            return
        acks, self.pending_acks = self.pending_acks, []
        try:
            with self.conn_or_acquire() as client, client.pipeline() as pipe:
                pipe.zrem(self.unacked_index_key, *acks)
                pipe.hdel(self.unacked_key, *acks)
                pipe.execute()
        except Exception:
            self.pending_acks[:0] = acks
            raise

    def keep_visible(self, tags: Sequence[str]) -> None:
        """Move the delivery time of ``tags`` to the broker's now (``XX``: an acknowledged
        one stays gone), as the pop stamps it, in one round trip."""
        if not tags:
            return
        with self.conn_or_acquire() as client:
            client.execute_command(
                "EVAL", KEEP_SCRIPT, 1, self._prefixed(self.unacked_index_key), *tags
            )
        stamped, known = monotonic(), self.qos.stamped_at
        known.update({tag: stamped for tag in tags if tag in known})

    def basic_cancel(self, consumer_tag: Any) -> Any:
        """kombu's; the acknowledgements waiting for a pop go first (pops may stop now)."""
        self.flush_acks()
        return super().basic_cancel(consumer_tag)

    def close(self) -> None:
        """kombu's, after the acknowledgements waiting for a pop (best effort)."""
        try:
            self.flush_acks()
        except Exception:  # the connection is gone: those messages come back, and are dropped
            logger.warning("%d acknowledgement(s) not sent before close", len(self.pending_acks))
            self.pending_acks.clear()
        super().close()

    def _deliver_popped(self, reply: Any) -> bool:
        key, item, recorded = reply
        dest = bytes_to_str(key)[len(self.global_keyprefix or "") :].rsplit(self.sep, 1)[0]
        payload = loads(bytes_to_str(item))
        if int(recorded):
            self.recorded_tag = payload["properties"]["delivery_tag"]
        self._queue_cycle.rotate(dest)
        self.connection._deliver(payload, dest)
        return True

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        """Publish as kombu does, and ring the queue's bell, in one round trip.

        Inside :func:`publish_with_ack` (same server) the round trip is the
        acknowledgement's.
        """
        key = self._q_for_pri(queue, self._get_message_priority(message, reverse=False))
        bell = bell_key(queue)
        commands: list[tuple[Any, ...]] = [("lpush", key, dumps(message))]
        if self._expires and queue in self._expires:
            ttl = self._expires[queue]
            commands += [("pexpire", self._q_for_pri(queue, p), ttl) for p in self.priority_steps]
        commands += [("rpush", bell, 1), ("pexpire", bell, _BELL_TTL_MS)]
        fold = _fold()
        if fold is not None and fold.takes(self):
            fold.hold(commands)
            return
        with self.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
            for name, *args in commands:
                getattr(pipe, name)(*args)
            pipe.execute()


class Poller(kombu_redis.MultiChannelPoller):
    """kombu's poller, except that a reply of the atomic pop is read at once, credit or not.

    kombu leaves a ``BRPOP`` reply unread while its channel has no credit
    (prefetch full). The atomic pop already recorded that message as
    unacknowledged, so an unread reply could outlive the visibility timeout and
    be restored to another node while this one still holds it: it is
    delivered now instead (at most one message over the prefetch limit).
    """

    def on_readable(self, fileno: int) -> Any:
        """Read a pending pop of this transport's channel even without credit."""
        found = self._fd_to_chan.get(fileno)
        if found is not None and fileno not in self._paused_brpop:
            channel, kind = found
            if (
                kind == "BRPOP"
                and isinstance(channel, Channel)
                and channel._in_poll
                and not channel.qos.can_consume()
            ):
                return channel.handlers[kind]()
        return super().on_readable(fileno)


class Transport(kombu_redis.Transport):
    """kombu's Redis transport, with the atomic pop of :class:`Channel`."""

    Channel = Channel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cycle = Poller()  # type: ignore[assignment]
