"""Moving a dead node's unacknowledged messages back to their queues, at once and only once.

kombu's Redis transport keeps every delivered, unacknowledged message in the
``unacked`` hash (keyed by delivery tag, with the ``unacked_index`` zset of
delivery times) and restores it only once the visibility timeout has passed
(one hour by default). A node's registry record lists the delivery tags it
holds, so when the node dies the orphan reaper hands them to
``UnackedRestorer``: each message moves from ``unacked``/``unacked_index`` to
the head of its queue in one Lua script, and only while its entry is still the
one read — a message acknowledged meanwhile, or restored by kombu or another
reaper, is left alone, so no copy is ever pushed twice. The restored message is
marked ``redelivered`` as kombu marks its own, so the crash-ledger gate of the
node that receives it counts the lost delivery.

A delivery tag names a message, not one delivery of it: a message restored
(by kombu's visibility timeout at a node's start, say) and taken again keeps
its tag, and its new holder's entry looks like the dead node's. A restore may
therefore name a minimum age: the seconds the entry must have been
unacknowledged (its ``unacked_index`` score against the broker's clock), so a
younger entry, taken again since the dead node could last have held it, is
left to its new holder. Only snakepit's transport scores with the broker's
clock (its pop script reads ``TIME``); on kombu's stock transport the score is
the consumer's clock and the age is not checked.

Other brokers need none of this: AMQP brokers (RabbitMQ) redeliver a dead
consumer's unacknowledged messages when its connection drops.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from celery import Celery
from kombu.utils.json import dumps, loads

from snakepit_celery.transport.redis import Channel as BrokerTimedChannel

__all__ = ["RESTORE_SCRIPT", "TAKEN_AGAIN_SLACK", "UnackedRestorer"]

logger = logging.getLogger(__name__)

#: Seconds by which an entry may look younger than its holder knows it to be: the ages
#: are read on different clocks, and a node extends its messages' visibility just after
#: its heartbeat (one store call in between). An entry younger by more was taken again
#: since, which needs a restore first: a reap (a heartbeat TTL and a grace after the
#: holder's last beat) or kombu's (a visibility timeout after the holder's last stamp).
TAKEN_AGAIN_SLACK = 0.5

#: KEYS: kombu's unacked hash, its unacked_index zset, then the queue list(s) to restore to;
#: ARGV: delivery tag, the unacked entry as read, the message to push, the minimum age (s)
#: of the entry (0: any). 1 when moved, 0 when the entry changed, -1 when it is younger.
RESTORE_SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return 0
end
local min_age = tonumber(ARGV[4])
if min_age > 0 then
  local taken = redis.call('ZSCORE', KEYS[2], ARGV[1])
  if taken then
    local t = redis.call('TIME')
    if tonumber(t[1]) + tonumber(t[2]) / 1000000 - tonumber(taken) < min_age then
      return -1
    end
  end
end
for i = 3, #KEYS do
  redis.call('RPUSH', KEYS[i], ARGV[3])
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""


class UnackedRestorer:
    """Restores unacknowledged messages of kombu's Redis transport by delivery tag.

    Holds its own broker connection (made on first use, from any thread);
    a no-op on brokers without kombu's Redis bookkeeping.
    """

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._connection: Any = None
        self._channel: Any = None

    def restore(self, tags: Iterable[str], *, min_age: float = 0.0) -> list[str]:
        """Move the messages of ``tags`` still unacknowledged back to their queues; their tags.

        ``min_age``: leave alone an entry unacknowledged for fewer seconds (it
        was taken again since; checked on snakepit's transport only).
        """
        return self._on_channel(
            tags,
            lambda channel, wanted: [t for t in wanted if self._restore_one(channel, t, min_age)],
        )

    def unacked(self, tags: Iterable[str]) -> list[str]:
        """The ``tags`` whose messages are still unacknowledged (in kombu's ``unacked`` hash)."""

        def still_unacked(channel: Any, wanted: list[str]) -> list[str]:
            pipe = channel.client.pipeline(transaction=False)
            for tag in wanted:
                pipe.hget(channel.unacked_key, tag)  # HEXISTS escapes kombu's key prefix
            found = pipe.execute()
            return [tag for tag, raw in zip(wanted, found, strict=True) if raw is not None]

        return self._on_channel(tags, still_unacked)

    def _on_channel(
        self, tags: Iterable[str], work: Callable[[Any, list[str]], list[str]]
    ) -> list[str]:
        """``work(channel, tags)`` on the broker's Redis channel; the connection is dropped
        on an error (the next call opens a new one). Nothing to do without tags or Redis."""
        wanted = list(tags)
        if not wanted:
            return []
        with self._lock:
            channel = self._redis_channel()
            if channel is None:
                return []
            try:
                return work(channel, wanted)
            except Exception:
                self._close()
                raise

    def close(self) -> None:
        """Release the broker connection."""
        with self._lock:
            self._close()

    def _redis_channel(self) -> Any:
        if self._channel is None:
            connection = self.app.connection_for_write()
            channel = connection.default_channel
            if not all(hasattr(channel, name) for name in ("unacked_key", "_lookup", "client")):
                connection.release()
                return None
            self._connection, self._channel = connection, channel
        return self._channel

    def _close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            try:
                connection.release()
            except Exception:
                logger.debug("could not close the restorer's broker connection", exc_info=True)

    def _restore_one(self, channel: Any, tag: str, min_age: float) -> bool:
        client = channel.client
        raw = client.hget(channel.unacked_key, tag)
        if raw is None:
            return False  # acknowledged, or restored already
        message, exchange, routing_key = loads(raw)  # type: ignore[no-untyped-call]
        payload = copy.deepcopy(message)
        payload.setdefault("headers", {})["redelivered"] = True
        payload.setdefault("properties", {}).setdefault("delivery_info", {})["redelivered"] = True
        priority = channel._get_message_priority(payload, reverse=False)
        queues = [
            channel._q_for_pri(queue, priority) for queue in channel._lookup(exchange, routing_key)
        ]
        if not queues:
            logger.warning("no queue is bound for message %s: left to kombu", tag)
            return False
        prefix = getattr(channel, "global_keyprefix", "") or ""
        keys = [prefix + channel.unacked_key, prefix + channel.unacked_index_key]
        keys += [prefix + queue for queue in queues]
        # EVAL: kombu's prefixing client leaves its keys alone, so they are given prefixed.
        pushed = dumps(payload)  # type: ignore[no-untyped-call]
        age = repr(min_age) if isinstance(channel, BrokerTimedChannel) else "0"
        moved = client.execute_command(
            "EVAL", RESTORE_SCRIPT, len(keys), *keys, tag, raw, pushed, age
        )
        if int(moved) < 0:
            logger.info(
                "message %s was taken again less than %.2fs ago: left to its new holder",
                tag,
                min_age,
            )
        return int(moved) > 0
