"""The app ``celery -A tests.apps.worker_app worker`` runs in worker integration tests.

Built from env ``WORKER_APP_REDIS_URL`` / ``WORKER_APP_KEY_PREFIX`` (and
``WORKER_APP_NAMESPACE`` when it differs from the key prefix) by
``tests/support/fleet.make_app`` (the tests build the same app in-process).
"""

from __future__ import annotations

import os

from tests.support.fleet import make_app

app = make_app(
    os.environ.get("WORKER_APP_REDIS_URL", "redis://127.0.0.1:6379/0"),
    os.environ.get("WORKER_APP_KEY_PREFIX", "worker-app"),
    os.environ.get("WORKER_APP_NAMESPACE"),
)
