"""Connecting ``RedisStore`` to Redis: clients from URLs, and what a Redis error means.

``check_url`` validates a store URL at construction (scheme, host lists,
``ssl_cert_reqs``), so a URL that can never work fails at startup, not on
every call. ``client_from_url`` builds the redis-py client (plain, Sentinel
or Cluster) with short timeouts. ``store_error`` sorts a redis-py error into
``StoreUnavailableError`` (an outage: fail-open applies) or
``StoreScriptError`` (Redis refused the operation: a bug or a misconfiguration).
"""

from __future__ import annotations

from typing import Any

import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from snakepit_celery.errors import StoreUnavailableError
from snakepit_celery.store.base import StoreScriptError
from snakepit_celery.store.switches import report_script_error
from snakepit_celery.store.urls import (
    checked_scheme,
    parse_cluster_url,
    parse_sentinel_url,
    parse_url,
    redact,
)

__all__ = [
    "OUTAGE_REPLIES",
    "UNAVAILABLE",
    "check_url",
    "client_from_url",
    "client_url",
    "store_error",
]

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
    """A redis-py client for ``url`` (made lazily by ``RedisStore``: Cluster connects here)."""
    timeouts: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "retry": Retry(NoBackoff(), 1),
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
                ClusterNode(host, port)  # type: ignore[no-untyped-call]
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
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(conf.hosts), sentinel_kwargs=sentinel_kwargs, **timeouts
    )
    tls: dict[str, Any] = {}
    if conf.ssl and conf.ssl_cert_reqs:
        tls["ssl_cert_reqs"] = conf.ssl_cert_reqs
    return sentinel.master_for(  # type: ignore[no-untyped-call]
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
