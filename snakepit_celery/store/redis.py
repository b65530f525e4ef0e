"""``RedisStore``: the ``Store`` protocol on Redis, one Lua script per operation.

Every operation is one EVALSHA of a script in ``store/lua/`` (the SHA is
computed here; a NOSCRIPT reply loads the script and retries once), so each
decision is atomic across processes and machines. Time comes from Redis
``TIME`` inside the scripts. Every key carries a Redis Cluster hash tag per
object, so each script touches one slot and the store works on Redis
Cluster as well as on a single server or behind Sentinel (connecting, running
scripts and sorting errors: ``store/redis_connect.py``).

Unreachable Redis (connection refused, timeouts, no master) raises
``StoreUnavailableError`` with the redis-py error as ``__cause__``; timeouts
are short (0.5 s) and retried at most once, so a dead Redis costs
milliseconds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from snakepit_celery.errors import ConfigError, StoreUnavailableError
from snakepit_celery.store.records import (
    BreakerDecision,
    BreakerRecord,
    BreakerSnapshot,
    HealthSnapshot,
    LedgerEntry,
    TaintRecord,
    WorkerCrashes,
)
from snakepit_celery.store.redis_nodes import RedisNodes
from snakepit_celery.store.redis_quarantine import RedisQuarantine
from snakepit_celery.store.redis_schema import (
    BREAKER_TTL,
    HEALTH_TOTAL_TTL,
    count_arg,
    ledger_entry,
    opt_text,
    seconds_arg,
    text,
    ttl_ms_arg,
)
from snakepit_celery.store.urls import redact

__all__ = ["RedisStore"]


class RedisStore(RedisNodes, RedisQuarantine):
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
        super().__init__(
            url_or_client,
            self.URL_SCHEMES,
            socket_timeout=socket_timeout,
            connect_timeout=connect_timeout,
        )

    def __repr__(self) -> str:
        return f"RedisStore({redact(self.url)!r}, key_prefix={self.key_prefix!r})"

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

    # -- inspection (CLI; SCAN, never on a hot path) ---------------------------
    def _names(self, kind: str) -> set[str]:
        start = self.key(kind, "")[:-1]
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", start) + "*}"
        with self._guard(f"scan {kind} names"):
            found = self.client.scan_iter(match=pattern, count=1000)
            return {text(k)[len(start) : -1] for k in found if text(k).endswith("}")}

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
                seconds_arg("reset_timeout", reset_timeout),
                count_arg("half_open_max_calls", half_open_max_calls),
                seconds_arg("probe_ttl", probe_ttl),
                int(BREAKER_TTL * 1000),
            ],
        )
        return BreakerDecision(
            allowed=bool(allowed),
            state=text(state),
            retry_after=float(retry_after),
            probe=opt_text(probe),
            transition=opt_text(transition),
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
        config: Mapping[str, Any] | None = None,
    ) -> BreakerRecord:
        """Record ``count`` successes or failures (releasing ``probe`` if given).

        ``config`` is stored with the breaker unless one is (the first wins).
        """
        state, failures, transition, stored = self._run(
            "breaker_record",
            self._breaker_keys(name),
            [
                1 if success else 0,
                count_arg("failure_threshold", failure_threshold),
                probe or "",
                count_arg("count", count),
                int(BREAKER_TTL * 1000),
                "" if config is None else json.dumps(dict(config), sort_keys=True),
            ],
        )
        return BreakerRecord(text(state), int(failures), opt_text(transition), _config(stored))

    def breaker_peek(self, name: str, *, reset_timeout: float) -> BreakerSnapshot:
        """Current state without side effects (open past its timeout reads half_open)."""
        state, failures, successes, live, retry_after, stored = self._run(
            "breaker_peek", self._breaker_keys(name), [seconds_arg("reset_timeout", reset_timeout)]
        )
        return BreakerSnapshot(
            text(state),
            int(failures),
            int(successes),
            int(live),
            float(retry_after),
            _config(stored),
        )

    def breaker_reset(self, name: str) -> str:
        """Forget everything about the breaker (closed, zero counts); return its state before."""
        return text(self._run("breaker_reset", self._breaker_keys(name), []))

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
        config: Mapping[str, Any] | None = None,
    ) -> HealthSnapshot:
        """Record one crash (``reason``/``info`` not stored); ``workers`` holds ``worker_id``.

        ``config`` is stored with the pool unless one is (the first wins).
        """
        total, in_window, mine, now, workers, stored = self._run(
            "health_record",
            self._health_keys(pool),
            [
                worker_id,
                seconds_arg("window", window),
                count_arg("max_entries", max_entries),
                int(HEALTH_TOTAL_TTL * 1000),
                "" if config is None else json.dumps(dict(config), sort_keys=True),
            ],
        )
        pool_config = _config(stored)
        mine_crashes = {worker_id: WorkerCrashes(int(mine), float(now), pool_config)}
        return HealthSnapshot(int(total), int(in_window), mine_crashes, int(workers), pool_config)

    def health_stats(self, pool: str, *, window: float) -> HealthSnapshot:
        """Crash counts of ``pool`` inside the window (no write; O(log n), ``workers`` empty)."""
        meta, crashes, _, workers_key = self._health_keys(pool)
        total, in_window, workers, stored = self._run(
            "health_stats", [meta, crashes, workers_key], [seconds_arg("window", window)]
        )
        return HealthSnapshot(
            int(total), int(in_window), workers_with_crashes=int(workers), config=_config(stored)
        )

    def health_worker(self, pool: str, worker_id: str, *, window: float) -> WorkerCrashes:
        """Crashes of one worker inside the window (no write; O(log n))."""
        count, last, stored = self._run(
            "health_worker",
            [self.key("hm", pool, "by_worker"), self.key("hm", pool)],
            [worker_id, seconds_arg("window", window)],
        )
        return WorkerCrashes(int(count), None if last is None else float(last), _config(stored))

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
                [member, seconds_arg("duration", duration), payload],
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
                TaintRecord(text(reply[i]), expires, expires - now, json.loads(reply[i + 2]))
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
        self,
        task_id: str,
        *,
        worker_id: str,
        lease: float,
        ttl: float,
        known: int = 0,
        came_back: bool = False,
    ) -> LedgerEntry:
        """Record that ``worker_id`` starts an execution; the entry before it (see ``Store``)."""
        reply = self._run(
            "ledger_start",
            [self.key("task", task_id)],
            [
                worker_id,
                seconds_arg("lease", lease),
                ttl_ms_arg(ttl),
                max(0, int(known)),
                int(came_back),
            ],
        )
        return ledger_entry(reply)

    def ledger_hold(self, holds: Mapping[str, str], *, lease: float, ttl: float) -> list[bool]:
        """Take, extend or (``lease <= 0``) let go of running tasks' leases; one pipeline."""
        lease_arg = seconds_arg("lease", lease) if lease > 0 else 0
        calls = [
            ([self.key("task", task_id)], [worker_id, lease_arg, ttl_ms_arg(ttl)])
            for task_id, worker_id in holds.items()
        ]
        return [bool(reply) for reply in self._run_many("ledger_hold", calls)]

    def ledger_finish(self, task_id: str) -> None:
        """Record that the running execution ended (any outcome)."""
        self._run("ledger_finish", [self.key("task", task_id)], [])

    def ledger_crash(self, task_id: str, *, ttl: float, holder: str | None = None) -> LedgerEntry:
        """Record that the running execution (``holder``'s only, if named) died; the entry after."""
        starts, finishes, crashes, released = self._run(
            "ledger_crash", [self.key("task", task_id)], [ttl_ms_arg(ttl), holder or ""]
        )
        return LedgerEntry(int(starts), int(finishes), int(crashes), None, bool(released))

    def ledger_release(self, task_id: str, *, ttl: float, died: bool = False) -> int:
        """Mark ``task_id``'s message given back unstarted; ``died`` counts a death (returned)."""
        args = [ttl_ms_arg(ttl), "1" if died else "0"]
        return int(self._run("ledger_release", [self.key("task", task_id)], args))

    def ledger_get(self, task_id: str) -> LedgerEntry | None:
        """The entry for ``task_id``, or None."""
        reply = self._run("ledger_get", [self.key("task", task_id)], [])
        return None if reply is None else ledger_entry(reply)


def _config(stored: Any) -> dict[str, Any] | None:
    """A stored configuration (JSON reply of a breaker or health script), None when none."""
    return None if stored is None else dict(json.loads(text(stored)))
