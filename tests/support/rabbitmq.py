"""RabbitMQ on 127.0.0.1:5672 for the tests that need it (skipped with the reason when absent)."""

from __future__ import annotations

import socket

import pytest

__all__ = ["AMQP_URL", "require_rabbitmq"]

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


def require_rabbitmq() -> None:
    """Skip the calling test unless RabbitMQ answers on 127.0.0.1:5672."""
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=0.5).close()
    except OSError:
        pytest.skip("RabbitMQ does not answer on 127.0.0.1:5672")
