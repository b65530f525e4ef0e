"""Connecting ``RedisStore`` to Redis: clients from URLs, running scripts, what an error means.

``check_url`` validates a store URL at construction (scheme, host lists,
``ssl_cert_reqs``), so a URL that can never work fails at startup, not on
every call. ``client_from_url`` builds the redis-py client (plain, Sentinel
or Cluster) with short timeouts. ``RedisConnection`` (the base of
``RedisStore``) makes that client lazily, builds the keys (one hash tag
per object) and runs the Lua scripts by SHA, reloading a script Redis forgot
and waiting out a Cluster slot migration for a bounded time. ``store_error``
sorts a redis-py error into ``StoreUnavailableError`` (an outage: fail-open
applies) or ``StoreScriptError`` (Redis refused the operation: a bug or a misconfiguration).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from snakepit_celery.errors import StoreScriptError, StoreUnavailableError
from snakepit_celery.store.redis_schema import SCRIPTS, SHAS, SOURCES, text
from snakepit_celery.store.switches import report_script_error
from snakepit_celery.store.urls import (
    checked_scheme,
    parse_cluster_url,
    parse_sentinel_url,
    parse_url,
    redact,
)

__all__ = [
    "MIGRATION_PAUSE",
    "MIGRATION_WAIT",
    "OUTAGE_REPLIES",
    "UNAVAILABLE",
    "RedisConnection",
    "check_url",
    "client_from_url",
    "client_url",
    "slot_in_migration",
    "store_error",
]

logger = logging.getLogger(__name__)

#: Errors that mean "the store cannot serve us now": connection loss, timeouts,
#: failover (READONLY, MASTERDOWN, CLUSTERDOWN), OOM. Client-side argument errors
#: (``DataError``) are bugs and propagate unchanged; other error replies are
#: ``StoreScriptError``.
UNAVAILABLE = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError)
#: Error replies (their first word) that mean an outage rather than a refusal.
OUTAGE_REPLIES = frozenset(
    {"READONLY", "OOM", "MASTERDOWN", "NOREPLICAS", "CLUSTERDOWN", "TRYAGAIN", "LOADING", "BUSY"}
    | {"MISCONF", "MOVED", "ASK"}
)
_OUTAGE_TYPES = (
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.MovedError,
    redis.exceptions.AskError,
)

#: How long (s) a script call keeps retrying while its Cluster slot migrates: Redis
#: answers TRYAGAIN to a multi-key command with a key missing there (a breaker's
#: probes, a pool's workers...) from SETSLOT MIGRATING to SETSLOT NODE, and
#: redis-py alone gives up after ~0.4 s.
MIGRATION_WAIT = 2.0
#: Seconds slept between those retries.
MIGRATION_PAUSE = 0.05


def slot_in_migration(exc: BaseException) -> bool:
    """True for the errors of a Cluster slot being moved (the command did not run).

    TRYAGAIN and ASK replies, and redis-py's ``ClusterError("TTL exhausted.")``
    raised after its own retries of them.
    """
    if isinstance(exc, redis.exceptions.TryAgainError | redis.exceptions.AskError):
        return True
    return isinstance(exc, redis.exceptions.ClusterError) and "TTL exhausted" in str(exc)


def check_url(url: str, schemes: tuple[str, ...]) -> str:
    """Validate a RedisStore URL without connecting; returns its scheme (ConfigError when bad)."""
    scheme = checked_scheme(url, schemes, allowed=", ".join(schemes))
    if scheme == "redis+sentinel":
        parse_sentinel_url(url)
    elif scheme == "redis+cluster":
        parse_cluster_url(url)
    else:
        parse_url(url).cert_reqs(url)
    return scheme


def client_from_url(url: str, socket_timeout: float, connect_timeout: float) -> Any:
    """A redis-py client for ``url`` (made lazily by ``RedisStore``: Cluster connects here).

    A command is sent again once after a connection error (a pooled connection
    the server closed: it restarted), never after a timeout: the server may
    have run the script it timed out on, and most store scripts count
    (crashes, failures, starts), so running one twice counts twice.
    """
    timeouts: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "retry": Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)),
    }
    scheme = url.split("://", 1)[0].lower()
    if scheme == "redis+sentinel":
        return _sentinel_client(url, timeouts)
    if scheme == "redis+cluster":
        conf = parse_cluster_url(url)
        tls: dict[str, Any] = {}
        if conf.ssl and conf.ssl_cert_reqs:
            tls["ssl_cert_reqs"] = conf.ssl_cert_reqs
        return RedisCluster(
            startup_nodes=[
                ClusterNode(host, port)  # type: ignore[no-untyped-call,unused-ignore]
                for host, port in conf.hosts
            ],
            username=conf.username,
            password=conf.password,
            ssl=conf.ssl,
            **tls,
            **timeouts,
        )
    parts = parse_url(url)
    cert_reqs = parts.cert_reqs(url)
    if cert_reqs is not None:
        url = parts.without(url, "ssl_cert_reqs")
        if scheme == "rediss":
            timeouts["ssl_cert_reqs"] = cert_reqs
    return redis.Redis.from_url(url, **timeouts)


def client_url(client: Any) -> str:
    """A password-free URL describing a ready redis-py client (for ``RedisStore.url``)."""
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
    if "path" in kwargs:
        return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
    host, port = kwargs.get("host", "?"), kwargs.get("port", "?")
    return f"redis://{host}:{port}/{kwargs.get('db', 0)}"


def _sentinel_client(url: str, timeouts: dict[str, Any]) -> Any:
    conf = parse_sentinel_url(url)
    sentinel_kwargs = dict(timeouts)
    if conf.sentinel_password:
        sentinel_kwargs["password"] = conf.sentinel_password
    sentinel = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
        list(conf.hosts), sentinel_kwargs=sentinel_kwargs, **timeouts
    )
    tls: dict[str, Any] = {}
    if conf.ssl and conf.ssl_cert_reqs:
        tls["ssl_cert_reqs"] = conf.ssl_cert_reqs
    return sentinel.master_for(  # type: ignore[no-untyped-call,unused-ignore]
        conf.service,
        db=conf.db,
        username=conf.username,
        password=conf.password,
        ssl=conf.ssl,
        **tls,
        **timeouts,
    )


def _is_outage(exc: redis.exceptions.ResponseError) -> bool:
    return isinstance(exc, _OUTAGE_TYPES) or str(exc).split(" ", 1)[0] in OUTAGE_REPLIES


def _one_line(text: str) -> str:
    return redact(" ".join(text.split()))


def store_error(url: str, operation: str, exc: Exception) -> Exception:
    """The error to raise for redis-py's ``exc`` during ``operation`` on the store at ``url``.

    An error reply that is no outage is counted and logged (``report_script_error``)
    and becomes ``StoreScriptError``; anything else ``StoreUnavailableError``,
    in one line with the password hidden.
    """
    where = f"Redis store {redact(url)}"
    if isinstance(exc, redis.exceptions.ResponseError) and not _is_outage(exc):
        report_script_error(operation, exc)
        return StoreScriptError(
            _one_line(f"{where} refused {operation}: {type(exc).__name__}: {exc}")
        )
    if isinstance(exc, MasterNotFoundError) and url.lower().startswith("redis+sentinel://"):
        conf = parse_sentinel_url(url)
        hosts = ", ".join(f"{host}:{port}" for host, port in conf.hosts)
        return StoreUnavailableError(
            _one_line(
                f"{where} unavailable: no Sentinel of {hosts} gave a master for "
                f"{conf.service!r} (unreachable, or master unknown or down)"
            )
        )
    return StoreUnavailableError(_one_line(f"{where} unavailable: {type(exc).__name__}: {exc}"))


class RedisConnection:
    """A redis-py client made on first use from a URL (or given), and the scripts run on it.

    ``url_or_client`` is a URL of one of ``schemes`` (checked now, without
    connecting) or a ready redis-py client, which is then not closed here.
    """

    #: First part of every key (set by the subclass before any key is built).
    key_prefix: str

    def __init__(
        self,
        url_or_client: Any,
        schemes: tuple[str, ...],
        *,
        socket_timeout: float,
        connect_timeout: float,
    ) -> None:
        self._shas = dict(SHAS)
        self._timeouts = (socket_timeout, connect_timeout)
        self._client_lock = threading.Lock()
        self._client: Any = None
        if isinstance(url_or_client, str):
            check_url(url_or_client, schemes)
            self.url = url_or_client
            self._owns_client = True
        else:
            self.url = client_url(url_or_client)
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

    def key(self, kind: str, name: str | None = None, part: str | None = None) -> str:
        """Build a key: ``key("br", "payments")`` -> ``snakepit:{br:payments}``.

        ``part`` names a secondary key of the same object (same hash slot):
        ``key("br", "payments", "probes")`` -> ``snakepit:{br:payments}:probes``.
        """
        tag = kind if name is None else f"{kind}:{name}"
        full = f"{self.key_prefix}:{{{tag}}}"
        return full if part is None else f"{full}:{part}"

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

    def _run(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """EVALSHA ``script``, retried while its Cluster slot migrates (``MIGRATION_WAIT``)."""
        with self._guard(script):
            deadline: float | None = None
            while True:
                try:
                    return self._evalsha(script, keys, args)
                except redis.exceptions.RedisError as exc:
                    now = time.monotonic()
                    deadline = now + MIGRATION_WAIT if deadline is None else deadline
                    if not slot_in_migration(exc) or now >= deadline:
                        raise
                    logger.debug("slot in migration: retrying", extra={"snakepit_script": script})
                    time.sleep(MIGRATION_PAUSE)

    def _evalsha(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """EVALSHA ``script``; on NOSCRIPT, SCRIPT LOAD it and try once more."""
        try:
            return self.client.evalsha(self._shas[script], len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            self._shas[script] = text(self.client.script_load(SOURCES[script]))
            logger.debug("loaded script", extra={"snakepit_script": script})
            return self.client.evalsha(self._shas[script], len(keys), *keys, *args)

    def _run_many(
        self, script: str, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]
    ) -> list[Any]:
        """EVALSHA ``script`` once per call, in one pipeline (loading it on NOSCRIPT).

        redis-py's cluster pipelines refuse EVALSHA: on a cluster, one call each.
        """
        if isinstance(self.client, redis.cluster.RedisCluster):
            return [self._run(script, keys, args) for keys, args in calls]
        if not calls:
            return []

        def execute() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for keys, args in calls:
                pipe.evalsha(self._shas[script], len(keys), *keys, *args)
            return list(pipe.execute())

        with self._guard(script):
            try:
                return execute()
            except redis.exceptions.NoScriptError:
                self._shas[script] = text(self.client.script_load(SOURCES[script]))
                return execute()

    def forget_scripts(self) -> None:
        """Make the next call of every script look up a wrong SHA (tests of NOSCRIPT reload)."""
        self._shas = {name: "0" * 40 for name in SCRIPTS}

    def close(self) -> None:
        """Close the connection pool (only when this store created the client)."""
        if self._owns_client and self._client is not None:
            self._client.close()
            self._client = None
