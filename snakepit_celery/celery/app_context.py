"""What snakepit knows about one Celery app: its settings, store, namespace and taint pools.

One place for ``install``, the router, the worker bootstep, the task and the
CLI to ask, so that none of them imports another to find the store. Like
celery-redbeat's ``ensure_conf``/``get_redis``, each is worked out once and
cached on the app object: the settings are read and validated on first use,
and the store is the one ``store_from_url`` shares for that URL and prefix.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

from celery import Celery

from snakepit_celery.config import SnakepitSettings, load_settings, resolve_store_url
from snakepit_celery.errors import ConfigError, StoreUnavailableError
from snakepit_celery.store import report_store_error, store_from_url
from snakepit_celery.store.base import Store
from snakepit_celery.store.urls import redact

__all__ = [
    "allow_waiting",
    "app_group",
    "app_store",
    "check_store",
    "namespace",
    "settings_for",
    "taint_pools",
]

#: Where the resolved settings live on the app.
_SETTINGS_ATTR = "_snakepit_settings"
#: Where the app's store lives on the app.
_STORE_ATTR = "_snakepit_store"
#: Where the app's node group lives on the app.
_GROUP_ATTR = "_snakepit_group"
#: Errors (class names along the cause's MRO) and reply prefixes of a store that
#: refuses the credentials: a misconfiguration that waiting does not cure.
_REFUSED_CLASSES = frozenset(
    {"AuthenticationError", "AuthorizationError", "AuthenticationWrongNumberOfArgsError"}
)
_REFUSED_REPLIES = ("WRONGPASS", "NOAUTH", "NOPERM")


def settings_for(app: Celery) -> SnakepitSettings:
    """The app's validated settings with the store URL resolved; read once per app.

    Raises ``ConfigError`` for unknown ``snakepit_*`` names, invalid values,
    or when no store URL can be found.
    """
    cached = app.__dict__.get(_SETTINGS_ATTR)
    if isinstance(cached, SnakepitSettings) and cached.store_url:
        return cached
    settings = load_settings(app.conf)
    transport_options = app.conf.broker_transport_options or {}
    store_url = resolve_store_url(
        settings,
        _first_url(app.conf.broker_url),
        _first_url(app.conf.result_backend),
        master_name=transport_options.get("master_name"),
    )
    settings = dataclasses.replace(settings, store_url=store_url)
    app.__dict__[_SETTINGS_ATTR] = settings
    return settings


def _first_url(value: Any) -> str | None:
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    return value if isinstance(value, str) else None


def app_store(app: Celery) -> Store:
    """The store the app's settings name (``snakepit_store_url``, ``snakepit_key_prefix``).

    Cached on the app next to the settings it was made from, so a re-read of
    the settings (``settings_for`` after they changed) picks a new store.
    """
    settings = settings_for(app)
    cached = app.__dict__.get(_STORE_ATTR)
    if cached is not None and cached[0] is settings:
        store: Store = cached[1]
        return store
    store = store_from_url(str(settings.store_url), key_prefix=namespace(app))
    app.__dict__[_STORE_ATTR] = (settings, store)
    return store


def check_store(app: Celery) -> None:
    """Startup check of ``snakepit_store_url``: ``ConfigError`` naming it when it can never work.

    A bad scheme or TLS flag already fails when the store is made; a store
    that refuses the credentials (AUTH, ACL) fails here. A store that does not
    answer now is an outage, not a misconfiguration: reported, and the node
    starts (fail-open, or tasks retry while it is down).
    """
    store = app_store(app)
    try:
        store.now()
    except StoreUnavailableError as exc:
        if not _refused(exc.__cause__):
            report_store_error(exc)
            return
        url = str(settings_for(app).store_url)
        raise ConfigError(
            "snakepit_store_url",
            redact(url),
            message=f"snakepit_store_url {redact(url)!r} refuses the credentials: {exc}",
        ) from exc


def _refused(cause: BaseException | None) -> bool:
    if cause is None:
        return False
    names = {cls.__name__ for cls in type(cause).__mro__}
    return bool(names & _REFUSED_CLASSES) or str(cause).startswith(_REFUSED_REPLIES)


def app_group(app: Celery) -> str:
    """The app's fleet in the store: its nodes register, list and reap only this group.

    A digest of the broker (host, port and virtual host as kombu reads them,
    and the transport's ``global_keyprefix``) and the namespace, so apps with
    their own brokers, or their own namespaces, never see each other's nodes
    even when they share one store; a worker and the clients that send to it
    configure the same broker, so they agree. Worked out once per app.
    """
    cached = app.__dict__.get(_GROUP_ATTR)
    if isinstance(cached, str):
        return cached
    try:
        # Host, port and virtual host, not the URI: a worker's install() may swap the
        # transport class (snakepit's Redis transport) where a plain client does not.
        conn = app.connection_for_write()
        broker = f"{conn.hostname}:{conn.port}/{conn.virtual_host}"
    except Exception:  # a broker URL kombu cannot parse: Celery reports it on connect
        broker = redact(str(_first_url(app.conf.broker_url)))
    transport = app.conf.broker_transport_options or {}
    identity = f"{broker}|{transport.get('global_keyprefix', '')}|{namespace(app)}"
    group = hashlib.sha256(identity.encode()).hexdigest()[:12]
    app.__dict__[_GROUP_ATTR] = group
    return group


def namespace(app: Celery) -> str:
    """The app's namespace: the first part of every store key (``snakepit_key_prefix``)."""
    return settings_for(app).key_prefix


def taint_pools(app: Celery) -> tuple[str, ...]:
    """The taint pools the router and the worker watch: ``default`` and the health pool."""
    pools = ["default"]
    pool = settings_for(app).health.pool
    if pool and pool not in pools:
        pools.append(str(pool))
    return tuple(pools)


def allow_waiting(app: Celery) -> bool:
    """The setting ``snakepit_allow_waiting``: queue device tasks no live node can take."""
    return settings_for(app).allow_waiting
