"""Task options are checked once, when the task is declared.

A misspelled option (neither snakepit's nor Celery's) is refused with a
did-you-mean hint, an implausible ``timeout`` with the allowed range; a
function that takes ``device`` gets the node's default device when the task
declares none.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from snakepit_celery import hardware
from snakepit_celery.celery.task import SnakepitTask, snakepit_task
from snakepit_celery.errors import ConfigError
from snakepit_celery.policy.task_options import MIN_TIMEOUT


@pytest.fixture
def eager_app(key_prefix: str) -> Iterator[Celery]:
    app = Celery("options", broker="memory://", backend="cache+memory://", set_as_current=False)
    app.conf.task_always_eager = True
    app.conf.snakepit_store_url = "memory://"
    app.conf.snakepit_key_prefix = key_prefix
    yield app
    app.close()


def _name() -> str:
    return f"opts.{uuid.uuid4().hex[:8]}"


def _body() -> None:
    """A task body."""


@pytest.mark.parametrize(
    ("option", "meant"),
    [
        ("idempotant", "idempotent"),
        ("retry_polcy", "retry_policy"),
        ("timout", "timeout"),
        ("devices", "device"),
        ("acks_lat", "acks_late"),
    ],
)
def test_misspelled_option_raises_config_error_with_a_hint(
    eager_app: Celery, option: str, meant: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        snakepit_task(app=eager_app, name=_name(), **{option: True})(_body)
    assert f"unknown task option: {option!r}" in str(caught.value)
    assert f"did you mean {meant!r}?" in str(caught.value)


@pytest.mark.parametrize(
    "options",
    [
        {"queue": "q", "routing_key": "q", "exchange": "x", "compression": "gzip"},
        {"autoretry_for": (ValueError,), "retry_backoff": True, "retry_kwargs": {}},
        {"retry_backoff_max": 10, "retry_jitter": False, "dont_autoretry_for": ()},
        {"max_retries": 7, "rate_limit": "5/s", "acks_late": True, "serializer": "json"},
        {"bind": True, "shared": False, "lazy": True, "typing": False},
    ],
    ids=",".join,
)
def test_celery_task_options_are_accepted(eager_app: Celery, options: dict[str, Any]) -> None:
    task = snakepit_task(app=eager_app, name=_name(), **options)(_body)
    assert task.name


def test_option_of_a_custom_base_class_is_accepted(eager_app: Celery) -> None:
    class Audited(SnakepitTask):  # type: ignore[misc]
        audit_log: str | None = None

    task = snakepit_task(app=eager_app, name=_name(), base=Audited, audit_log="x")(_body)
    assert task.audit_log == "x"


@pytest.mark.parametrize("timeout", [1e-9, 0.0009, 0])
def test_implausibly_short_timeout_is_rejected_with_the_allowed_range(
    eager_app: Celery, timeout: float
) -> None:
    with pytest.raises(ConfigError) as caught:
        snakepit_task(app=eager_app, name=_name(), timeout=timeout)(_body)
    assert f"a number of seconds >= {MIN_TIMEOUT}" in str(caught.value)


def test_shortest_allowed_timeout_sets_the_time_limits(eager_app: Celery) -> None:
    task = snakepit_task(app=eager_app, name=_name(), timeout=MIN_TIMEOUT)(_body)
    assert task.soft_time_limit == MIN_TIMEOUT
    assert task.time_limit > task.soft_time_limit


def test_idempotent_inherited_from_the_base_class_turns_on_acks_late(eager_app: Celery) -> None:
    class Safe(SnakepitTask):  # type: ignore[misc]
        idempotent = True

    task = snakepit_task(app=eager_app, name=_name(), base=Safe)(_body)
    assert (task.acks_late, task.reject_on_worker_lost) == (True, True)


def test_options_of_a_task_class_are_checked_when_it_is_bound(eager_app: Celery) -> None:
    class Hasty(SnakepitTask):  # type: ignore[misc]
        name = "opts.hasty"
        timeout = 1e-9

    with pytest.raises(ConfigError, match="timeout"):
        eager_app.register_task(Hasty())


def test_device_is_the_nodes_default_when_the_task_declares_none(eager_app: Celery) -> None:
    @snakepit_task(app=eager_app, name=_name(), shared=False)
    def infer(batch: int, *, device: Any) -> str:
        return f"{batch}@{device}"

    default = hardware.select("auto")
    assert infer.delay(3).get() == f"3@{default}"
    assert infer(4) == f"4@{default}"


def test_task_without_device_option_or_parameter_resolves_no_device(eager_app: Celery) -> None:
    @snakepit_task(app=eager_app, name=_name(), shared=False)
    def plain(batch: int) -> int:
        return batch

    assert plain.delay(3).get() == 3
    assert plain.resolved_device is None
