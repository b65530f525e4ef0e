"""``install(app)``: switch snakepit on for a Celery app.

One call validates the ``snakepit_*`` settings (``ConfigError`` on a typo or a
bad value), picks the store (``snakepit_store_url``, else the broker, else the
result backend when Redis), makes it this process's default store, and hooks
the worker bootstep, the device router and the signal → event bridge into the
app, and makes the app's broker connections use
``snakepit_celery.transport.redis`` for a Redis broker URL (no message lost
between pop and acknowledgement record; set ``broker_transport = "redis"`` to
keep kombu's). That choice is made per connection, from the URL it connects
to, so an app whose ``broker_url`` changes after ``install()`` (to RabbitMQ,
say) connects with the right transport. Calling it again is a no-op.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from kombu.connection import Connection

from snakepit_celery.celery.app_context import app_store, settings_for
from snakepit_celery.celery.bootsteps.steps import install_worker
from snakepit_celery.celery.events import install_events
from snakepit_celery.celery.router import install_router
from snakepit_celery.config import SnakepitSettings
from snakepit_celery.store import set_default_store, set_fail_open
from snakepit_celery.store.urls import redact

__all__ = [
    "REDIS_TRANSPORT",
    "SnakepitConnection",
    "install",
    "is_installed",
    "use_redis_transport",
]

logger = logging.getLogger(__name__)

#: The transport ``install()`` picks for a Redis broker (kombu's, with an atomic pop).
REDIS_TRANSPORT = "snakepit_celery.transport.redis:Transport"
#: Marker set on an app once ``install()`` has run.
_INSTALLED_ATTR = "_snakepit_installed"


def is_installed(app: Celery) -> bool:
    """True once ``install(app)`` has run."""
    return bool(app.__dict__.get(_INSTALLED_ATTR))


def install(app: Celery) -> SnakepitSettings:
    """Validate settings, set the default store, add router, worker bootstep and event bridge.

    Returns the app's settings. Idempotent: a second call returns them
    without touching the app again.
    """
    if is_installed(app):
        return settings_for(app)
    settings = settings_for(app)
    set_fail_open(settings.fail_open)
    set_default_store(app_store(app))

    use_redis_transport(app)
    install_worker(app)
    install_router(app)
    install_events(app)
    app.__dict__[_INSTALLED_ATTR] = True
    logger.debug(
        "snakepit installed",
        extra={"snakepit_store": _redacted(settings.store_url), "snakepit_app": app.main},
    )
    return settings


class SnakepitConnection(Connection):
    """kombu's ``Connection``, with snakepit's Redis transport for a Redis URL.

    Used when no transport is named: a ``redis://``/``rediss://`` URL gets
    ``REDIS_TRANSPORT``, any other URL (and a named transport, such as
    ``broker_transport = "redis"``) is left to kombu.
    """

    def __init__(self, hostname: Any = "localhost", *args: Any, **kwargs: Any) -> None:
        if not kwargs.get("transport") and _redis_scheme(hostname):
            kwargs["transport"] = REDIS_TRANSPORT
        super().__init__(hostname, *args, **kwargs)  # type: ignore[no-untyped-call]


def _redis_scheme(url: Any) -> bool:
    first = url[0] if isinstance(url, list | tuple) and url else url
    text = str(first or "").split(";", 1)[0]
    return text.partition("://")[0].lower() in ("redis", "rediss")


def use_redis_transport(app: Celery) -> bool:
    """Make the app's broker connections use ``REDIS_TRANSPORT`` for Redis URLs.

    The app's connection class becomes ``SnakepitConnection``, which picks
    the transport per connection from its URL when the app names no
    ``broker_transport`` of its own. True when the app's broker, as
    configured now, gets it.
    """
    app.amqp.Connection = SnakepitConnection
    return not app.conf.broker_transport and _redis_scheme(app.conf.broker_url)


def _redacted(url: str | None) -> str | None:
    return None if url is None else redact(url)
