"""The optional ``prometheus_client`` import, with the hint of how to install it.

Nothing in ``snakepit_celery.metrics`` imports prometheus-client at module
level: a worker must be able to set ``PROMETHEUS_MULTIPROC_DIR`` before it
is imported (see ``multiprocess``).
"""

from __future__ import annotations

from typing import Any

from snakepit_celery.errors import SnakepitError

__all__ = ["INSTALL_HINT", "prometheus"]

#: What a missing prometheus-client is reported with.
INSTALL_HINT = (
    "snakepit_celery metrics need prometheus-client: pip install 'snakepit-celery[metrics]'"
)


def prometheus() -> Any:
    """Import prometheus_client, or raise SnakepitError saying how to install it."""
    try:
        import prometheus_client  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SnakepitError(INSTALL_HINT) from exc
    return prometheus_client
