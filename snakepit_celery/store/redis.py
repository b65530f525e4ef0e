"""``RedisStore``: the ``Store`` protocol on Redis, one Lua script per operation.

Every operation is one EVALSHA of a script in ``store/lua/`` (the SHA is
computed here; a NOSCRIPT reply loads the script and retries once), so each
decision is atomic across processes and machines. Time comes from Redis
``TIME`` inside the scripts. Every key carries a Redis Cluster hash tag per
object, so each script touches one slot and the store works on Redis
Cluster as well as on a single server or behind Sentinel.

Unreachable Redis (connection refused, timeouts, no master) raises
``StoreUnavailableError`` with the redis-py error as ``__cause__``; timeouts
are short (0.5 s) and retried at most once, so a dead Redis costs
milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib import resources
from typing import Any, ClassVar

import redis
import redis.exceptions

from snakepit_celery.errors import ConfigError, StoreUnavailableError
from snakepit_celery.store.base import (
    NODE_RETENTION,
    BreakerDecision,
    BreakerRecord,
    BreakerSnapshot,
    HealthSnapshot,
    LedgerEntry,
    TaintRecord,
    WorkerCrashes,
    node_incarnation,
)
from snakepit_celery.store.redis_connect import UNAVAILABLE, check_url, client_from_url, store_error
from snakepit_celery.store.urls import redact

__all__ = ["KEY_SCHEMA", "SCRIPTS", "RedisStore"]

logger = logging.getLogger(__name__)

#: Every key the store writes, relative to ``<key_prefix>:`` (built by ``RedisStore.key``).
#: ``{...}`` is the Redis Cluster hash tag: all keys of one object live in one slot.
KEY_SCHEMA: Mapping[str, str] = {
    # hash: state, failures, successes, opened_at, seq (probe token counter)
    "breaker": "{br:<name>}",
    # zset: half-open probe lease token -> lease expiry (epoch s)
    "breaker_probes": "{br:<name>}:probes",
    # hash: total (lifetime crash count), seq (crash id counter)
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
    # message back unstarted), released_run (the running delivery was such one) (TTL: ledger ttl)
    "ledger": "{task:<task_id>}",
    # zset: node name -> expiry of its last heartbeat
    "nodes": "{nodes}",
    # hash: node name -> '<heartbeat time>|<incarnation>|<record JSON>'
    "node_records": "{nodes}:records",
    # zset: '<node>|<incarnation>' -> expiry of its last heartbeat (kept NODE_RETENTION longer)
    "node_incarnations": "{nodes}:incarnations",
    # hash: '<node>|<incarnation>' -> its last record, same format as node_records (node_reap)
    "node_incarnation_records": "{nodes}:incarnation_records",
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
    "ledger_renew": "extend the running worker's lease",
    "ledger_finish": "count a finished execution, drop the lease",
    "ledger_crash": "count a crashed execution, drop the lease",
    "ledger_release": "mark the message given back unstarted: its next delivery is no crash",
    "ledger_get": "read a ledger (running_on only while leased); no writes",
    "node_register": "write a node record + expiry (live and per incarnation); prune dead nodes",
    "node_list": "prune dead nodes, list the live records",
    "node_remove": "drop a node record and its current incarnation's",
    "node_reap": "claim (return and drop) incarnations expired more than grace ago",
}

#: A breaker's keys vanish this long after its last write (seconds).
BREAKER_TTL = 7 * 24 * 3600.0
#: A pool's lifetime crash total survives this long without crashes (seconds).
HEALTH_TOTAL_TTL = 7 * 24 * 3600.0


#: Longest duration (s) a script is given: ten years, far inside what PEXPIRE accepts.
MAX_SECONDS = 10 * 365 * 24 * 3600.0
#: Largest count a script is given: the integers Lua's numbers hold exactly.
MAX_COUNT = 2**53


def _seconds(name: str, value: float) -> float:
    """``value`` capped at ``MAX_SECONDS``; ConfigError naming ``name`` when negative or NaN."""
    seconds = float(value)
    if math.isnan(seconds) or seconds < 0:
        raise ConfigError(name, value, f"a number of seconds from 0 to {MAX_SECONDS:.0f}")
    return min(seconds, MAX_SECONDS)


def _milliseconds(ttl: float) -> int:
    """A key TTL for PEXPIRE: at least 1 ms, at most ``MAX_SECONDS``."""
    return max(1, int(_seconds("ttl", ttl) * 1000))


def _count(name: str, value: int) -> int:
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


_SOURCES = _load_sources()
_SHAS = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in _SOURCES.items()}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _opt_text(value: Any) -> str | None:
    return None if value is None else _text(value)


def _safe_url(client: Any) -> str:
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
    if "path" in kwargs:
        return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
    host, port = kwargs.get("host", "?"), kwargs.get("port", "?")
    return f"redis://{host}:{port}/{kwargs.get('db', 0)}"


class RedisStore:
    """``Store`` on Redis (single server, Sentinel or Cluster).

    ``url_or_client`` is a URL (``redis://``, ``rediss://``, ``unix://``,
    ``redis+sentinel://``, ``redis+cluster://``) or a ready redis-py client
    (which this store then does not close). ``client`` is the redis-py client.
    """

    #: URL schemes this backend serves (see ``store.registry``).
    URL_SCHEMES: ClassVar[tuple[str, ...]] = (
        "redis",
        "rediss",
        "unix",
        "redis+sentinel",
        "redis+cluster",
    )

    def __init__(
        self,
        url_or_client: Any,
        *,
        key_prefix: str = "snakepit",
        socket_timeout: float = 0.5,
        connect_timeout: float = 0.5,
    ) -> None:
        if not key_prefix or "{" in key_prefix or "}" in key_prefix:
            raise ConfigError(
                "snakepit_key_prefix", key_prefix, "a non-empty string without '{' or '}'"
            )
        self.key_prefix = key_prefix
        self._shas = dict(_SHAS)
        self._timeouts = (socket_timeout, connect_timeout)
        self._client_lock = threading.Lock()
        self._client: Any = None
        if isinstance(url_or_client, str):
            check_url(url_or_client, self.URL_SCHEMES)
            self.url = url_or_client
            self._owns_client = True
        else:
            self.url = _safe_url(url_or_client)
            self._client = url_or_client
            self._owns_client = False

    @property
    def client(self) -> Any:
        """The redis-py client (``Redis``, Sentinel master or ``RedisCluster``), made on first use.

        Creation is lazy because a Cluster client connects at construction:
        a store for an unreachable cluster fails per call
        (``StoreUnavailableError``), not when it is configured.
        """
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    with self._guard("connect"):
                        self._client = client_from_url(self.url, *self._timeouts)
        return self._client

    def __repr__(self) -> str:
        return f"RedisStore({redact(self.url)!r}, key_prefix={self.key_prefix!r})"

    @contextmanager
    def _guard(self, operation: str) -> Iterator[None]:
        """Turn Redis errors into ``StoreUnavailableError`` or ``StoreScriptError`` (``DataError``
        is a bug: kept); see ``store_error``."""
        try:
            yield
        except redis.exceptions.DataError:
            raise
        except UNAVAILABLE as exc:
            raise store_error(self.url, operation, exc) from exc

    # -- keys and scripts -----------------------------------------------------
    def key(self, kind: str, name: str | None = None, part: str | None = None) -> str:
        """Build a key: ``key("br", "payments")`` -> ``snakepit:{br:payments}``.

        ``part`` names a secondary key of the same object (same hash slot):
        ``key("br", "payments", "probes")`` -> ``snakepit:{br:payments}:probes``.
        """
        tag = kind if name is None else f"{kind}:{name}"
        full = f"{self.key_prefix}:{{{tag}}}"
        return full if part is None else f"{full}:{part}"

    def _run(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """EVALSHA ``script``; on NOSCRIPT, SCRIPT LOAD it and try once more."""
        with self._guard(script):
            try:
                return self.client.evalsha(self._shas[script], len(keys), *keys, *args)
            except redis.exceptions.NoScriptError:
                self._shas[script] = _text(self.client.script_load(_SOURCES[script]))
                logger.debug("loaded script", extra={"snakepit_script": script})
                return self.client.evalsha(self._shas[script], len(keys), *keys, *args)

    def forget_scripts(self) -> None:
        """Make the next call of every script look up a wrong SHA (tests of NOSCRIPT reload)."""
        self._shas = {name: "0" * 40 for name in SCRIPTS}

    # -- basics ---------------------------------------------------------------
    def now(self) -> float:
        """The Redis server's clock (``TIME``), epoch seconds."""
        with self._guard("now"):
            seconds, micros = self.client.time()
        return int(seconds) + int(micros) / 1_000_000

    def ping(self) -> bool:
        """True when Redis answers a PING."""
        try:
            with self._guard("ping"):
                return bool(self.client.ping())
        except StoreUnavailableError:
            return False

    def close(self) -> None:
        """Close the connection pool (only when this store created the client)."""
        if self._owns_client and self._client is not None:
            self._client.close()
            self._client = None

    # -- inspection (CLI; SCAN, never on a hot path) ---------------------------
    def _names(self, kind: str) -> set[str]:
        start = self.key(kind, "")[:-1]
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", start) + "*}"
        with self._guard(f"scan {kind} names"):
            found = self.client.scan_iter(match=pattern, count=1000)
            return {_text(k)[len(start) : -1] for k in found if _text(k).endswith("}")}

    def breaker_names(self) -> list[str]:
        """Names of the breakers with state in the store (SCAN: for the CLI only)."""
        return sorted(self._names("br"))

    def pool_names(self) -> list[str]:
        """Pools with crash records or taints in the store (SCAN: for the CLI only)."""
        return sorted(self._names("hm") | self._names("taint"))

    # -- circuit breaker ------------------------------------------------------
    def _breaker_keys(self, name: str) -> list[str]:
        return [self.key("br", name), self.key("br", name, "probes")]

    def breaker_acquire(
        self, name: str, *, reset_timeout: float, half_open_max_calls: int, probe_ttl: float
    ) -> BreakerDecision:
        """Ask to make a call; in half-open this takes a probe slot (lease of ``probe_ttl``)."""
        allowed, state, retry_after, probe, transition, failures = self._run(
            "breaker_acquire",
            self._breaker_keys(name),
            [
                _seconds("reset_timeout", reset_timeout),
                _count("half_open_max_calls", half_open_max_calls),
                _seconds("probe_ttl", probe_ttl),
                int(BREAKER_TTL * 1000),
            ],
        )
        return BreakerDecision(
            allowed=bool(allowed),
            state=_text(state),
            retry_after=float(retry_after),
            probe=_opt_text(probe),
            transition=_opt_text(transition),
            failures=int(failures),
        )

    def breaker_record(
        self,
        name: str,
        *,
        success: bool,
        failure_threshold: int,
        probe: str | None = None,
        count: int = 1,
    ) -> BreakerRecord:
        """Record ``count`` successes or failures (releasing ``probe`` if given)."""
        state, failures, transition = self._run(
            "breaker_record",
            self._breaker_keys(name),
            [
                1 if success else 0,
                _count("failure_threshold", failure_threshold),
                probe or "",
                _count("count", count),
                int(BREAKER_TTL * 1000),
            ],
        )
        return BreakerRecord(_text(state), int(failures), _opt_text(transition))

    def breaker_peek(self, name: str, *, reset_timeout: float) -> BreakerSnapshot:
        """Current state without side effects (open past its timeout reads half_open)."""
        state, failures, successes, live, retry_after = self._run(
            "breaker_peek", self._breaker_keys(name), [_seconds("reset_timeout", reset_timeout)]
        )
        return BreakerSnapshot(
            _text(state), int(failures), int(successes), int(live), float(retry_after)
        )

    def breaker_reset(self, name: str) -> None:
        """Forget everything about the breaker (closed, zero counts)."""
        self._run("breaker_reset", self._breaker_keys(name), [])

    # -- health monitor -------------------------------------------------------
    def _health_keys(self, pool: str) -> list[str]:
        """Meta hash, crashes, by-worker and workers keys of ``pool``."""
        return [
            self.key("hm", pool),
            self.key("hm", pool, "crashes"),
            self.key("hm", pool, "by_worker"),
            self.key("hm", pool, "workers"),
        ]

    def health_record(
        self,
        pool: str,
        worker_id: str,
        *,
        window: float,
        max_entries: int,
        reason: str | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> HealthSnapshot:
        """Record one crash; the result's ``workers`` holds only ``worker_id``.

        ``reason`` and ``info`` are not stored (they travel in signals and logs).
        """
        total, in_window, mine, now, workers = self._run(
            "health_record",
            self._health_keys(pool),
            [
                worker_id,
                _seconds("window", window),
                _count("max_entries", max_entries),
                int(HEALTH_TOTAL_TTL * 1000),
            ],
        )
        mine_crashes = {worker_id: WorkerCrashes(int(mine), float(now))}
        return HealthSnapshot(int(total), int(in_window), mine_crashes, int(workers))

    def health_stats(self, pool: str, *, window: float) -> HealthSnapshot:
        """Crash counts of ``pool`` inside the window (no write; O(log n), ``workers`` empty)."""
        meta, crashes, _, workers_key = self._health_keys(pool)
        total, in_window, workers = self._run(
            "health_stats", [meta, crashes, workers_key], [_seconds("window", window)]
        )
        return HealthSnapshot(int(total), int(in_window), workers_with_crashes=int(workers))

    def health_worker(self, pool: str, worker_id: str, *, window: float) -> WorkerCrashes:
        """Crashes of one worker inside the window (no write; O(log n))."""
        count, last = self._run(
            "health_worker",
            [self.key("hm", pool, "by_worker")],
            [worker_id, _seconds("window", window)],
        )
        return WorkerCrashes(int(count), None if last is None else float(last))

    # -- taints ---------------------------------------------------------------
    def _taint_keys(self, pool: str) -> list[str]:
        return [self.key("taint", pool), self.key("taint", pool, "details")]

    def taint_set(
        self, pool: str, member: str, *, duration: float, details: Mapping[str, Any]
    ) -> bool:
        """Taint ``member`` for ``duration`` (never shortening a live taint); True when new."""
        payload = json.dumps(dict(details), default=str, sort_keys=True)
        return bool(
            self._run(
                "taint_set",
                self._taint_keys(pool),
                [member, _seconds("duration", duration), payload],
            )
        )

    def taint_list(self, pool: str) -> list[TaintRecord]:
        """Active (unexpired) taints of ``pool``, soonest expiry first."""
        reply = self._run("taint_list", self._taint_keys(pool), [])
        now = float(reply[0])
        records = []
        for i in range(1, len(reply), 3):
            expires = float(reply[i + 1])
            records.append(
                TaintRecord(_text(reply[i]), expires, expires - now, json.loads(reply[i + 2]))
            )
        return records

    def taint_active(self, pool: str, member: str) -> bool:
        """True while ``member`` is tainted."""
        return bool(self._run("taint_active", [self.key("taint", pool)], [member]))

    def taint_clear(self, pool: str, member: str | None = None) -> int:
        """Lift one taint (or all of ``pool`` when ``member`` is None); returns how many."""
        return int(self._run("taint_clear", self._taint_keys(pool), [member or ""]))

    # -- crash ledger ---------------------------------------------------------
    def ledger_start(
        self, task_id: str, *, worker_id: str, lease: float, ttl: float
    ) -> LedgerEntry:
        """Record that ``worker_id`` starts an execution; returns the entry before it.

        An earlier start that never finished and whose lease ran out is counted
        as a crash first. When another worker still holds a live lease nothing
        is written and the result's ``running_on`` names that worker: the
        caller must not run the task.
        """
        starts, finishes, crashes, running, released = self._run(
            "ledger_start",
            [self.key("task", task_id)],
            [worker_id, _seconds("lease", lease), _milliseconds(ttl)],
        )
        return LedgerEntry(
            int(starts), int(finishes), int(crashes), _opt_text(running), bool(released)
        )

    def ledger_renew(self, task_id: str, *, worker_id: str, lease: float) -> bool:
        """Extend ``worker_id``'s lease on a running task; False when it does not hold it."""
        return bool(
            self._run(
                "ledger_renew", [self.key("task", task_id)], [worker_id, _seconds("lease", lease)]
            )
        )

    def ledger_finish(self, task_id: str) -> None:
        """Record that the running execution ended (any outcome)."""
        self._run("ledger_finish", [self.key("task", task_id)], [])

    def ledger_crash(self, task_id: str, *, ttl: float) -> LedgerEntry:
        """Record that the running execution died; returns the entry after it."""
        starts, finishes, crashes, released = self._run(
            "ledger_crash", [self.key("task", task_id)], [_milliseconds(ttl)]
        )
        return LedgerEntry(int(starts), int(finishes), int(crashes), None, bool(released))

    def ledger_release(self, task_id: str, *, ttl: float) -> None:
        """Mark ``task_id``'s message as given back unstarted (its next delivery is no crash)."""
        self._run("ledger_release", [self.key("task", task_id)], [_milliseconds(ttl)])

    def ledger_get(self, task_id: str) -> LedgerEntry | None:
        """The entry for ``task_id``, or None."""
        reply = self._run("ledger_get", [self.key("task", task_id)], [])
        if reply is None:
            return None
        starts, finishes, crashes, running, released = reply
        return LedgerEntry(
            int(starts), int(finishes), int(crashes), _opt_text(running), bool(released)
        )

    # -- node registry --------------------------------------------------------
    def _node_keys(self) -> list[str]:
        return [
            self.key("nodes"),
            self.key("nodes", part="records"),
            self.key("nodes", part="incarnations"),
            self.key("nodes", part="incarnation_records"),
        ]

    def node_register(self, node: str, data: Mapping[str, Any], *, ttl: float) -> None:
        """Write (or refresh) a node's record; it vanishes ``ttl`` after the last refresh.

        Its incarnation's copy stays ``NODE_RETENTION`` longer, for ``node_reap``.
        """
        payload = json.dumps(dict(data), default=str, sort_keys=True)
        self._run(
            "node_register",
            self._node_keys(),
            [node, _seconds("ttl", ttl), payload, node_incarnation(data), NODE_RETENTION],
        )

    def node_list(self) -> list[dict[str, Any]]:
        """Records of live nodes (each with ``node`` and ``heartbeat_age`` added), by name."""
        reply = self._run("node_list", self._node_keys()[:2], [])
        now = float(reply[0])
        nodes = [_node_record(_text(reply[i]), reply[i + 1], now) for i in range(1, len(reply), 2)]
        return sorted(nodes, key=lambda r: str(r["node"]))

    def node_remove(self, node: str) -> None:
        """Drop a node's record and its current incarnation's (clean shutdown)."""
        self._run("node_remove", self._node_keys(), [node])

    def node_reap(self, *, grace: float) -> list[dict[str, Any]]:
        """Claim the last records of incarnations whose heartbeat expired > ``grace`` ago.

        Atomic (one script): each dead incarnation goes to exactly one caller.
        """
        reply = self._run(
            "node_reap", self._node_keys()[2:], [_seconds("grace", max(0.0, grace)), NODE_RETENTION]
        )
        now = float(reply[0])
        records = []
        for i in range(1, len(reply), 2):
            node, _, incarnation = _text(reply[i]).rpartition("|")
            records.append({**_node_record(node, reply[i + 1], now), "incarnation": incarnation})
        return sorted(records, key=lambda r: (str(r["node"]), -float(r["heartbeat_age"])))


def _node_record(node: str, raw: Any, now: float) -> dict[str, Any]:
    """Parse ``'<heartbeat>|<incarnation>|<JSON>'`` into the record with its fields added."""
    beat, _, rest = _text(raw).partition("|")
    payload = rest.partition("|")[2]
    record: dict[str, Any] = json.loads(payload)
    record["node"] = node
    record["heartbeat_age"] = max(0.0, now - float(beat))
    return record
