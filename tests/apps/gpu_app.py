"""``celery -A tests.apps.gpu_app worker``: the worker test app on a fake NVML.

NVML is faked at the boundary (``tests.support.fake_nvml``) before the app is built,
from the scenario file named by env ``SNAKEPIT_FAKE_NVML``; the app is
``tests/apps/worker_app``'s, with the GPU tasks of ``tests.support.gpu``.
"""

from __future__ import annotations

from tests.support.fake_nvml import install_from_env

install_from_env()

from tests.apps.worker_app import app  # noqa: E402
from tests.support.gpu import add_gpu_tasks  # noqa: E402

add_gpu_tasks(app)

__all__ = ["app"]
