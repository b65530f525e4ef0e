"""A tiny Celery app for the deployment files (docker-compose.yml, deploy/).

Run a worker with ``celery -A examples.fleet snakepit worker --per-device``.
The broker comes from ``CELERY_BROKER_URL`` (Celery reads it itself), and the
snakepit settings from ``SNAKEPIT_*`` environment variables, so the same
module serves docker-compose, Kubernetes and systemd without edits.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

import snakepit_celery
from snakepit_celery import RetryPolicy, snakepit_task

app = Celery(
    "fleet",
    broker=os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0"),
    backend=os.environ.get("CELERY_RESULT_BACKEND", "redis://localhost:6379/1"),
)
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_send_task_events=True,
    task_send_sent_event=True,
    snakepit_crash_barrier={"enabled": True},
)
snakepit_celery.install(app)


@snakepit_task(
    device=["cuda", "cpu"],
    breaker="model-server",
    retry_policy=RetryPolicy(max_attempts=3),
    idempotent=True,
)
def infer(batch: list[float], *, device: Any) -> dict[str, Any]:
    """Stand-in for a model call: runs on a GPU when one is free, else on the CPU."""
    return {"device": str(device), "total": sum(batch)}


@snakepit_task(device="cpu")
def preprocess(text: str) -> list[float]:
    """A CPU-only step, routed to ``snakepit.cpu``."""
    return [float(len(word)) for word in text.split()]
