"""RabbitMQ on 127.0.0.1:5672 for the tests that need it (skipped with the reason when absent)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from snakepit_celery.testing.rabbitmq import AMQP_URL, rabbitmq_answers

__all__ = ["AMQP_URL", "amqp_conf", "require_rabbitmq"]


def require_rabbitmq() -> None:
    """Skip the calling test unless RabbitMQ answers on 127.0.0.1:5672."""
    if not rabbitmq_answers():
        pytest.skip("RabbitMQ does not answer on 127.0.0.1:5672")


def amqp_conf() -> dict[str, Any]:
    """Settings of a fleet on RabbitMQ: quorum queues, a default queue of its own.

    Skips the calling test unless RabbitMQ answers.
    """
    require_rabbitmq()
    return {
        "broker_url": AMQP_URL,
        "broker_transport_options": {},
        "task_default_queue": f"amqp-{uuid.uuid4().hex[:8]}",
        "task_default_queue_type": "quorum",
        "worker_detect_quorum_queues": True,
    }
