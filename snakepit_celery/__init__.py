"""snakepit_celery: fleet-wide fault tolerance and hardware-aware routing for Celery."""

from __future__ import annotations

__version__ = "0.1.0"
