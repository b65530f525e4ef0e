"""A local RabbitMQ for tests and benchmarks: its URL, and whether it answers."""

from __future__ import annotations

import socket

__all__ = ["AMQP_URL", "rabbitmq_answers"]

#: RabbitMQ's default guest account on this host.
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


def rabbitmq_answers(host: str = "127.0.0.1", port: int = 5672, timeout: float = 0.5) -> bool:
    """True when something accepts a TCP connection on RabbitMQ's port."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True
