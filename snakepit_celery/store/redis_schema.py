"""Every Redis key and Lua script of ``RedisStore`` in one place; script arguments and replies.

``KEY_SCHEMA`` lists each key (one line of what it holds), ``SCRIPTS`` each
atomic operation (``store/lua/<name>.lua``, with ``_common.lua`` prepended).
``seconds_arg``/``count_arg``/``ttl_ms_arg`` bound every number a script
receives, so no value can overflow a Redis command (PEXPIRE, HINCRBY);
``text``/``opt_text``/``node_record`` decode replies.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from importlib import resources
from typing import Any

from snakepit_celery.errors import ConfigError
from snakepit_celery.store.records import LedgerEntry, QuarantineEntry

__all__ = [
    "BREAKER_TTL",
    "HEALTH_TOTAL_TTL",
    "KEY_SCHEMA",
    "MAX_COUNT",
    "MAX_SECONDS",
    "SCRIPTS",
    "SHAS",
    "SOURCES",
    "count_arg",
    "ledger_entry",
    "node_record",
    "opt_text",
    "quarantine_entry",
    "seconds_arg",
    "text",
    "ttl_ms_arg",
]

#: Every key the store writes, relative to ``<key_prefix>:`` (built by ``RedisStore.key``).
#: ``{...}`` is the Redis Cluster hash tag: all keys of one object live in one slot.
KEY_SCHEMA: Mapping[str, str] = {
    # hash: state, failures, successes, opened_at, seq (probe token counter), config (JSON of
    # failure_threshold, reset_timeout, half_open_max_calls: the first written wins)
    "breaker": "{br:<name>}",
    # zset: half-open probe lease token -> lease expiry (epoch s)
    "breaker_probes": "{br:<name>}:probes",
    # hash: total (lifetime crash count), seq (crash id counter),
    # config (JSON of max_crashes, crash_window, max_worker_crashes: the first written wins)
    "health": "{hm:<pool>}",
    # zset: '<seq>|<len(worker_id)>|<worker_id>|' -> crash time; trimmed to window and max_entries
    "health_crashes": "{hm:<pool>}:crashes",
    # zset, all scores 0: '<len>|<worker_id>|<time, fixed width>|<seq>' mirroring health_crashes:
    # a worker's crashes in the window are one lex range
    "health_by_worker": "{hm:<pool>}:by_worker",
    # zset: worker_id -> time of its latest crash still in health_crashes (workers with crashes)
    "health_workers": "{hm:<pool>}:workers",
    # zset: 'worker:<id>' / 'device:<node>:<device>' -> taint expiry
    "taints": "{taint:<pool>}",
    # hash: taint member -> JSON details
    "taint_details": "{taint:<pool>}:details",
    # hash: starts, finishes, crashes, running_on, lease_until, released (a node gave the
    # message back unstarted), released_run (the running delivery was such one), deaths (nodes
    # that stopped with an error holding it unstarted) (TTL: ledger ttl)
    "ledger": "{task:<task_id>}",
    # zset: node name -> expiry of its last heartbeat; one set per app (group: app_group)
    "nodes": "{nodes:<group>}",
    # hash: node name -> '<heartbeat time>|<incarnation>|<record JSON>'
    "node_records": "{nodes:<group>}:records",
    # zset: '<node>|<incarnation>' -> expiry of its last heartbeat (kept NODE_RETENTION longer)
    "node_incarnations": "{nodes:<group>}:incarnations",
    # hash: '<node>|<incarnation>' -> its last record, same format as node_records (node_reap)
    "node_incarnation_records": "{nodes:<group>}:incarnation_records",
    # zset: '<gpu uuid>|<reservation id>' -> expiry of a GPU memory reservation (routed, unstarted)
    "gpu_reservations": "{gpumem}",
    # hash: '<gpu uuid>|<reservation id>' -> MB reserved
    "gpu_reservation_sizes": "{gpumem}:mb",
    # zset: '<node>|<incarnation>' -> when node_reap claimed it (fenced; kept NODE_RETENTION)
    "node_reaped": "{nodes:<group>}:reaped",
    # hash: 'at' -> store time of the group's last node write (a longer silence is forgiven)
    "node_pulse": "{nodes:<group>}:pulse",
    # zset: quarantined message id (task id, or digest of a message without one) -> expiry
    "quarantine": "{quarantine}",
    # hash: quarantined message id -> '<quarantined at>|<record JSON>' (message, crashes)
    "quarantine_records": "{quarantine}:records",
    # zset: '<time>|<crash JSON>' of one task by time, newest kept, for its quarantine record
    "crash_history": "{task:<task_id>}:crashes",
}

#: One script per atomic operation, ``store/lua/<name>.lua`` (``_common.lua`` is prepended).
SCRIPTS: Mapping[str, str] = {
    "breaker_acquire": "admit a call; open->half_open flip; take a probe lease",
    "breaker_record": "count a success/failure; closed->open, half_open->closed/open",
    "breaker_peek": "read a breaker (open past its timeout reads half_open); no writes",
    "breaker_reset": "forget a breaker: drop its hash and probe leases",
    "health_record": "add a crash, trim window + cap, refresh TTLs, count the worker's",
    "health_stats": "lifetime total, crashes and workers with crashes in the window; no writes",
    "health_worker": "one worker's crashes inside the window; no writes",
    "taint_set": "taint a member until now+duration (never shortens); prune expired",
    "taint_list": "prune expired taints, list the live ones with details",
    "taint_active": "is a member tainted now; no writes",
    "taint_clear": "lift one taint or all of a pool",
    "ledger_start": "count a new execution (expired unfinished one = crash) unless leased",
    "ledger_hold": "take or extend a running task's lease (creating the entry), or let it go",
    "ledger_finish": "count a finished execution, drop the lease",
    "ledger_crash": "count a crashed execution, drop the lease",
    "ledger_release": "mark the message given back unstarted (no crash); count a death if asked",
    "ledger_get": "read a ledger (running_on only while leased); no writes",
    "node_register": "write a node record + expiry (live, per incarnation) unless reaped; prune",
    "node_list": "prune dead nodes, list the live records",
    "node_remove": "drop a node record and its current incarnation's",
    "node_reap": (
        "claim (return, hide for a while, mark reaped) incarnations expired more than grace "
        "ago; drop those named done"
    ),
    "gpu_reserve": "reserve MB on a GPU when its live reservations leave room; prune expired",
    "gpu_reservations": "MB reserved per GPU over live reservations; no writes",
    "quarantine_add": "keep a message until now+ttl; drop expired ones, then the oldest over cap",
    "quarantine_list": "the live quarantined messages (or one); no writes",
    "quarantine_remove": "take one message out of the quarantine, returning it",
    "quarantine_note": "append a crash to a task's capped crash history",
    "quarantine_history": "a task's crash history; no writes",
    "quarantine_forget": "drop a task's crash ledger and history: a replay counts afresh",
}

#: A breaker's keys vanish this long after its last write (seconds).
BREAKER_TTL = 7 * 24 * 3600.0
#: A pool's lifetime crash total survives this long without crashes (seconds).
HEALTH_TOTAL_TTL = 7 * 24 * 3600.0


#: Longest duration (s) a script is given: ten years, far inside what PEXPIRE accepts.
MAX_SECONDS = 10 * 365 * 24 * 3600.0
#: Largest count a script is given: the integers Lua's numbers hold exactly.
MAX_COUNT = 2**53


def seconds_arg(name: str, value: float) -> float:
    """``value`` capped at ``MAX_SECONDS``; ConfigError naming ``name`` when negative or NaN."""
    seconds = float(value)
    if math.isnan(seconds) or seconds < 0:
        raise ConfigError(name, value, f"a number of seconds from 0 to {MAX_SECONDS:.0f}")
    return min(seconds, MAX_SECONDS)


def ttl_ms_arg(ttl: float) -> int:
    """A key TTL for PEXPIRE: at least 1 ms, at most ``MAX_SECONDS``."""
    return max(1, int(seconds_arg("ttl", ttl) * 1000))


def count_arg(name: str, value: int) -> int:
    """``value`` capped at ``MAX_COUNT``; ConfigError naming ``name`` when not a count >= 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(name, value, f"an integer from 0 to {MAX_COUNT}")
    return min(value, MAX_COUNT)


def _load_sources() -> dict[str, str]:
    folder = resources.files("snakepit_celery.store").joinpath("lua")
    common = folder.joinpath("_common.lua").read_text(encoding="utf-8")
    return {
        name: common + "\n" + folder.joinpath(f"{name}.lua").read_text(encoding="utf-8")
        for name in SCRIPTS
    }


SOURCES = _load_sources()
#: Script name -> SHA1 of its source (for EVALSHA).
SHAS = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in SOURCES.items()}


def text(value: Any) -> str:
    """A reply value as ``str`` (redis-py gives bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def opt_text(value: Any) -> str | None:
    """``text(value)``, None for a nil reply."""
    return None if value is None else text(value)


def ledger_entry(reply: Any) -> LedgerEntry:
    """The entry of a ``ledger_start`` or ``ledger_get`` reply.

    The reply: starts, finishes, crashes, running_on, released, held_for (nil
    without a live lease).
    """
    starts, finishes, crashes, running, released, held_for = reply
    return LedgerEntry(
        int(starts),
        int(finishes),
        int(crashes),
        opt_text(running),
        bool(released),
        None if held_for is None else max(0.0, float(held_for)),
    )


def node_record(node: str, raw: Any, now: float) -> dict[str, Any]:
    """Parse ``'<heartbeat>|<incarnation>|<JSON>'`` into the record with its fields added."""
    beat, _, rest = text(raw).partition("|")
    payload = rest.partition("|")[2]
    record: dict[str, Any] = json.loads(payload)
    record["node"] = node
    record["heartbeat_age"] = max(0.0, now - float(beat))
    return record


def quarantine_entry(reply: Any) -> QuarantineEntry:
    """Parse ``[id, expiry, '<quarantined at>|<JSON>']`` of the quarantine scripts."""
    entry_id, expires, raw = reply
    since, _, payload = text(raw).partition("|")
    return QuarantineEntry(text(entry_id), float(since), float(expires), json.loads(payload))
