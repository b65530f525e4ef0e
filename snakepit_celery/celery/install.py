"""``install(app)``: switch snakepit on for a Celery app.

One call validates the ``snakepit_*`` settings (``ConfigError`` on a typo or a
bad value), picks the store (``snakepit_store_url``, else the broker, else the
result backend when Redis), makes it this process's default store, and hooks
the worker bootstep, the device router and the signal → event bridge into the
app, and for a Redis broker makes ``snakepit_celery.transport.redis`` the
transport (no message lost between pop and acknowledgement record; set
``broker_transport = "redis"`` to keep kombu's). Calling it again is a no-op.
"""

from __future__ import annotations

import logging

from celery import Celery

from snakepit_celery.celery.app_context import app_store, settings_for
from snakepit_celery.celery.bootsteps.steps import install_worker
from snakepit_celery.celery.events import install_events
from snakepit_celery.celery.router import install_router
from snakepit_celery.config import SnakepitSettings
from snakepit_celery.store import set_default_store, set_fail_open
from snakepit_celery.store.urls import redact

__all__ = ["REDIS_TRANSPORT", "install", "is_installed", "use_redis_transport"]

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


def use_redis_transport(app: Celery) -> bool:
    """Make ``snakepit_celery.transport.redis`` the app's transport for a Redis broker.

    Only when ``broker_url`` is ``redis://``/``rediss://`` and the app names
    no ``broker_transport`` of its own (``broker_transport = "redis"`` keeps
    kombu's). True when it did.
    """
    url = app.conf.broker_url
    first = url[0] if isinstance(url, list | tuple) and url else url
    scheme = str(first or "").partition("://")[0].lower()
    if scheme not in ("redis", "rediss") or app.conf.broker_transport:
        return False
    app.conf.broker_transport = REDIS_TRANSPORT
    return True


def _redacted(url: str | None) -> str | None:
    return None if url is None else redact(url)
