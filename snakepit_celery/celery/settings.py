"""The resolved ``snakepit_*`` settings of a Celery app, read once per app.

Its own module so that ``install``, the router, the worker bootstep and the
task can all read settings without importing each other.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from celery import Celery

from snakepit_celery.config import SnakepitSettings, load_settings, resolve_store_url

__all__ = ["settings_for"]

#: Where the resolved settings live on the app.
_SETTINGS_ATTR = "_snakepit_settings"


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
