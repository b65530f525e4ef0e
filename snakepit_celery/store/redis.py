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
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, unquote

import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel

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

__all__ = [
    "KEY_SCHEMA",
    "SCRIPTS",
    "URL_SCHEMES",
    "ClusterURL",
    "RedisStore",
    "SentinelURL",
    "parse_cluster_url",
    "parse_sentinel_url",
]

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
    # zset: '<seq>|<worker_id>' -> crash time; trimmed to the window and max_entries
    "health_crashes": "{hm:<pool>}:crashes",
    # zset, all scores 0: '<worker_id>|<seq>' mirroring health_crashes, for per-worker lookups
    "health_by_worker": "{hm:<pool>}:by_worker",
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
    "health_stats": "lifetime total and crashes inside the window; no writes",
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

#: URL schemes a RedisStore accepts.
URL_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster")

#: A breaker's keys vanish this long after its last write (seconds).
BREAKER_TTL = 7 * 24 * 3600.0
#: A pool's lifetime crash total survives this long without crashes (seconds).
HEALTH_TOTAL_TTL = 7 * 24 * 3600.0

#: Errors that mean "the store cannot serve us now": connection loss, timeouts,
#: failover (READONLY, MASTERDOWN, CLUSTERDOWN), OOM and other server refusals.
#: Client-side argument errors (``DataError``) are bugs and propagate unchanged.
_UNAVAILABLE = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError)


def _load_sources() -> dict[str, str]:
    folder = resources.files("snakepit_celery.store").joinpath("lua")
    common = folder.joinpath("_common.lua").read_text(encoding="utf-8")
    return {
        name: common + "\n" + folder.joinpath(f"{name}.lua").read_text(encoding="utf-8")
        for name in SCRIPTS
    }


_SOURCES = _load_sources()
_SHAS = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in _SOURCES.items()}


@dataclass(frozen=True, slots=True)
class SentinelURL:
    """Parts of ``redis+sentinel://[user:pass@]h1:26379,h2:26379/<service>/<db>``."""

    hosts: tuple[tuple[str, int], ...]
    service: str
    db: int
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    ssl: bool = False


@dataclass(frozen=True, slots=True)
class ClusterURL:
    """Parts of ``redis+cluster://[user:pass@]h1:7000,h2:7001[/0]``."""

    hosts: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    ssl: bool = False


def _bad_url(url: str, allowed: str) -> ConfigError:
    return ConfigError("snakepit_store_url", url, allowed)


def _split_hosts(
    url: str, default_port: int, allowed: str
) -> tuple[tuple[tuple[str, int], ...], str | None, str | None, str, dict[str, list[str]]]:
    rest = url.split("://", 1)[1]
    netloc, _, path = rest.partition("/")
    path, _, query = path.partition("?")
    if "?" in netloc:
        netloc, _, query = netloc.partition("?")
    username = password = None
    if "@" in netloc:
        auth, _, netloc = netloc.rpartition("@")
        user, colon, secret = auth.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    hosts: list[tuple[str, int]] = []
    for item in netloc.split(","):
        if not item:
            continue
        if item.startswith("["):
            host, _, port_text = item[1:].partition("]")
            port_text = port_text.lstrip(":")
        else:
            host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
        try:
            port = int(port_text) if port_text else default_port
        except ValueError:
            raise _bad_url(url, allowed) from None
        if not host or not 0 < port < 65536:
            raise _bad_url(url, allowed)
        hosts.append((host, port))
    if not hosts:
        raise _bad_url(url, allowed)
    return tuple(hosts), username, password, path, parse_qs(query)


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return query.get(name, ["false"])[-1].lower() in ("1", "true", "yes", "on")


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse a ``redis+sentinel://`` URL: sentinel hosts, master service name and db.

    ``?sentinel_password=...`` authenticates to the sentinels (the userinfo
    password is the master's); ``?ssl=true`` uses TLS to the master.
    """
    allowed = "redis+sentinel://[user:password@]host:26379[,host:port...]/<service>[/<db>]"
    hosts, username, password, path, query = _split_hosts(url, 26379, allowed)
    parts = [p for p in path.split("/") if p]
    if not parts or len(parts) > 2:
        raise _bad_url(url, allowed)
    try:
        db = int(parts[1]) if len(parts) == 2 else int(query.get("db", ["0"])[-1])
    except ValueError:
        raise _bad_url(url, allowed) from None
    return SentinelURL(
        hosts=hosts,
        service=unquote(parts[0]),
        db=db,
        username=username,
        password=password,
        sentinel_password=query.get("sentinel_password", [None])[-1],
        ssl=_flag(query, "ssl"),
    )


def parse_cluster_url(url: str) -> ClusterURL:
    """Parse a ``redis+cluster://`` URL: startup nodes (Cluster has database 0 only)."""
    allowed = "redis+cluster://[user:password@]host:port[,host:port...][/0]"
    hosts, username, password, path, query = _split_hosts(url, 6379, allowed)
    if path.strip("/") not in ("", "0"):
        raise _bad_url(url, allowed)
    return ClusterURL(hosts=hosts, username=username, password=password, ssl=_flag(query, "ssl"))


def _client_from_url(url: str, socket_timeout: float, connect_timeout: float) -> Any:
    timeouts: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "retry": Retry(NoBackoff(), 1),
    }
    scheme = url.split("://", 1)[0].lower()
    if scheme == "redis+sentinel":
        conf = parse_sentinel_url(url)
        sentinel_kwargs = dict(timeouts)
        if conf.sentinel_password:
            sentinel_kwargs["password"] = conf.sentinel_password
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(conf.hosts), sentinel_kwargs=sentinel_kwargs, **timeouts
        )
        return sentinel.master_for(  # type: ignore[no-untyped-call]
            conf.service,
            db=conf.db,
            username=conf.username,
            password=conf.password,
            ssl=conf.ssl,
            **timeouts,
        )
    if scheme == "redis+cluster":
        cconf = parse_cluster_url(url)
        return RedisCluster(
            startup_nodes=[
                ClusterNode(host, port)  # type: ignore[no-untyped-call]
                for host, port in cconf.hosts
            ],
            username=cconf.username,
            password=cconf.password,
            ssl=cconf.ssl,
            **timeouts,
        )
    return redis.Redis.from_url(url, **timeouts)


def _redacted(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs and errors)."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    if "@" not in netloc:
        return url
    auth, _, hosts = netloc.rpartition("@")
    user, colon, _ = auth.partition(":")
    shown = f"{user}:***" if colon else "***"
    return f"{scheme}{sep}{shown}@{hosts}{slash}{tail}"


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
            if url_or_client.split("://", 1)[0].lower() not in URL_SCHEMES:
                raise ConfigError("snakepit_store_url", url_or_client, ", ".join(URL_SCHEMES))
            if url_or_client.startswith("redis+sentinel://"):
                parse_sentinel_url(url_or_client)
            elif url_or_client.startswith("redis+cluster://"):
                parse_cluster_url(url_or_client)
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
                    with self._guard():
                        self._client = _client_from_url(self.url, *self._timeouts)
        return self._client

    def __repr__(self) -> str:
        return f"RedisStore({_redacted(self.url)!r}, key_prefix={self.key_prefix!r})"

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn Redis errors into ``StoreUnavailableError`` (``DataError`` is a bug: kept)."""
        try:
            yield
        except redis.exceptions.DataError:
            raise
        except _UNAVAILABLE as exc:
            raise StoreUnavailableError(
                f"Redis store {_redacted(self.url)} unavailable: {type(exc).__name__}: {exc}"
            ) from exc

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
        with self._guard():
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
        with self._guard():
            seconds, micros = self.client.time()
        return int(seconds) + int(micros) / 1_000_000

    def ping(self) -> bool:
        """True when Redis answers a PING."""
        try:
            with self._guard():
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
        with self._guard():
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
            [reset_timeout, half_open_max_calls, probe_ttl, int(BREAKER_TTL * 1000)],
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
                failure_threshold,
                probe or "",
                count,
                int(BREAKER_TTL * 1000),
            ],
        )
        return BreakerRecord(_text(state), int(failures), _opt_text(transition))

    def breaker_peek(self, name: str, *, reset_timeout: float) -> BreakerSnapshot:
        """Current state without side effects (open past its timeout reads half_open)."""
        state, failures, successes, live, retry_after = self._run(
            "breaker_peek", self._breaker_keys(name), [reset_timeout]
        )
        return BreakerSnapshot(
            _text(state), int(failures), int(successes), int(live), float(retry_after)
        )

    def breaker_reset(self, name: str) -> str:
        """Forget everything about the breaker (closed, zero counts); return its state before."""
        return _text(self._run("breaker_reset", self._breaker_keys(name), []))

    # -- health monitor -------------------------------------------------------
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
        total, in_window, mine, now = self._run(
            "health_record",
            [
                self.key("hm", pool),
                self.key("hm", pool, "crashes"),
                self.key("hm", pool, "by_worker"),
            ],
            [worker_id, window, max_entries, int(HEALTH_TOTAL_TTL * 1000)],
        )
        workers = {worker_id: WorkerCrashes(int(mine), float(now))}
        return HealthSnapshot(int(total), int(in_window), workers)

    def health_stats(self, pool: str, *, window: float) -> HealthSnapshot:
        """Crash counts of ``pool`` inside the window (no write)."""
        reply = self._run(
            "health_stats", [self.key("hm", pool), self.key("hm", pool, "crashes")], [window]
        )
        counts: dict[str, int] = {}
        last: dict[str, float] = {}
        for i in range(2, len(reply), 2):
            worker = _text(reply[i]).partition("|")[2]
            when = float(reply[i + 1])
            counts[worker] = counts.get(worker, 0) + 1
            last[worker] = max(last.get(worker, when), when)
        workers = {w: WorkerCrashes(n, last[w]) for w, n in counts.items()}
        return HealthSnapshot(int(reply[0]), int(reply[1]), workers)

    def health_worker(self, pool: str, worker_id: str, *, window: float) -> WorkerCrashes:
        """Crashes of one worker inside the window (no write; O(log n + its crashes))."""
        count, last = self._run(
            "health_worker",
            [self.key("hm", pool, "crashes"), self.key("hm", pool, "by_worker")],
            [worker_id, window],
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
        return bool(self._run("taint_set", self._taint_keys(pool), [member, duration, payload]))

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
            [worker_id, lease, max(1, int(ttl * 1000))],
        )
        return LedgerEntry(
            int(starts), int(finishes), int(crashes), _opt_text(running), bool(released)
        )

    def ledger_renew(self, task_id: str, *, worker_id: str, lease: float) -> bool:
        """Extend ``worker_id``'s lease on a running task; False when it does not hold it."""
        return bool(self._run("ledger_renew", [self.key("task", task_id)], [worker_id, lease]))

    def ledger_finish(self, task_id: str) -> None:
        """Record that the running execution ended (any outcome)."""
        self._run("ledger_finish", [self.key("task", task_id)], [])

    def ledger_crash(self, task_id: str, *, ttl: float) -> LedgerEntry:
        """Record that the running execution died; returns the entry after it."""
        starts, finishes, crashes, released = self._run(
            "ledger_crash", [self.key("task", task_id)], [max(1, int(ttl * 1000))]
        )
        return LedgerEntry(int(starts), int(finishes), int(crashes), None, bool(released))

    def ledger_release(self, task_id: str, *, ttl: float) -> None:
        """Mark ``task_id``'s message as given back unstarted (its next delivery is no crash)."""
        self._run("ledger_release", [self.key("task", task_id)], [max(1, int(ttl * 1000))])

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
            [node, ttl, payload, node_incarnation(data), NODE_RETENTION],
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
        reply = self._run("node_reap", self._node_keys()[2:], [max(0.0, grace), NODE_RETENTION])
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
