"""RabbitMQ on 127.0.0.1:5672 for the tests that need it (skipped with the reason when absent)."""

from __future__ import annotations

import pytest

from snakepit_celery.testing.rabbitmq import AMQP_URL, rabbitmq_answers

__all__ = ["AMQP_URL", "require_rabbitmq"]


def require_rabbitmq() -> None:
    """Skip the calling test unless RabbitMQ answers on 127.0.0.1:5672."""
    if not rabbitmq_answers():
        pytest.skip("RabbitMQ does not answer on 127.0.0.1:5672")
