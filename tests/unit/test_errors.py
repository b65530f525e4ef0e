"""error_kind() and the exception tree, as specified in API.md "Errors"."""

from __future__ import annotations

import pickle
import subprocess

import pytest
import redis.exceptions
from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded, WorkerLostError
from celery.exceptions import TimeoutError as CeleryTimeoutError

from snakepit_celery.errors import (
    ERROR_KINDS,
    CircuitOpenError,
    ConfigError,
    DeviceNotAvailableError,
    LockMismatchError,
    RetryExhaustedError,
    SnakepitError,
    StoreScriptError,
    StoreUnavailableError,
    WorkerCrashedError,
    error_kind,
)


class OutOfMemoryError(RuntimeError):
    """Stands in for torch.cuda.OutOfMemoryError (same name, same message)."""


class HTTPError(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code


class StatusError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"status {status}")
        self.status = status


class Response:
    def __init__(self, status_code: int) -> None:
        self.status_code = status_code


class RequestsStyleError(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__("request failed")
        self.response = Response(status_code)


class RateLimitedError(Exception):
    snakepit_kind = "rate_limited"


class CustomTimeoutError(Exception):
    snakepit_kind = "timeout"


KIND_CASES: list[tuple[BaseException, str | None]] = [
    (TimeoutError("t"), "timeout"),
    (subprocess.TimeoutExpired("cmd", 1.0), None),
    (SoftTimeLimitExceeded(), "timeout"),
    (TimeLimitExceeded(1.0), "timeout"),
    (CeleryTimeoutError("result not ready"), "timeout"),
    (redis.exceptions.TimeoutError("Timeout reading from socket"), "timeout"),
    (ConnectionRefusedError(111, "refused"), "connection_refused"),
    (ConnectionResetError("reset"), "unavailable"),
    (BrokenPipeError("pipe"), "unavailable"),
    (ConnectionError("down"), "unavailable"),
    (redis.exceptions.ConnectionError("Error 111 connecting"), "unavailable"),
    (redis.exceptions.BusyLoadingError("loading"), "unavailable"),
    (HTTPError(503), "unavailable"),
    (StatusError(503), "unavailable"),
    (RequestsStyleError(503), "unavailable"),
    (HTTPError(500), None),
    (HTTPError(404), None),
    (WorkerCrashedError("segfault", signal=11), "worker_crash"),
    (WorkerLostError("Worker exited prematurely: signal 11 (SIGSEGV)."), "worker_crash"),
    (OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "gpu_oom"),
    (RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"), "gpu_oom"),
    (RuntimeError("HIP out of memory. Tried to allocate 1.00 GiB"), "gpu_oom"),
    (MemoryError("out of memory"), None),
    (RuntimeError("CUDA error: an illegal memory access was encountered"), None),
    (StoreUnavailableError("redis down"), "unavailable"),
    (ValueError("bad input"), None),
    (KeyError("k"), None),
    (RateLimitedError(), "rate_limited"),
    (CustomTimeoutError(), "timeout"),
    (CircuitOpenError("b", 1.0), None),
]


@pytest.mark.parametrize(
    ("exc", "kind"), KIND_CASES, ids=[f"{type(e).__name__}-{k}" for e, k in KIND_CASES]
)
def test_error_kind_maps_exceptions_to_the_upstream_atoms(
    exc: BaseException, kind: str | None
) -> None:
    assert error_kind(exc) == kind


def test_error_kind_of_a_subclass_follows_its_base() -> None:
    class MyLimitError(SoftTimeLimitExceeded):  # type: ignore[misc]
        pass

    class MyLostError(WorkerLostError):  # type: ignore[misc]
        pass

    assert error_kind(MyLimitError()) == "timeout"
    assert error_kind(MyLostError()) == "worker_crash"


def test_an_exceptions_own_kind_wins_over_the_builtin_rules() -> None:
    class NotReallyDownError(ConnectionError):
        snakepit_kind = "timeout"

    assert error_kind(NotReallyDownError()) == "timeout"


def test_a_non_string_snakepit_kind_is_ignored() -> None:
    class OddError(TimeoutError):
        snakepit_kind = 42

    assert error_kind(OddError()) == "timeout"


def test_error_kinds_lists_every_builtin_kind() -> None:
    assert {
        "timeout",
        "connection_refused",
        "unavailable",
        "worker_crash",
        "gpu_oom",
    } == ERROR_KINDS


@pytest.mark.parametrize(
    "exc",
    [
        ConfigError("snakepit_key_prefix", "a b", "no spaces"),
        CircuitOpenError("payments", 2.5),
        RetryExhaustedError(3, ValueError("boom")),
        WorkerCrashedError("oom", 137, 9, "w1", "cuda:0"),
        DeviceNotAvailableError("cuda:3"),
        LockMismatchError("insufficient_gpus"),
        StoreUnavailableError("redis down"),
        StoreScriptError("Redis store redis://h:6379/0 refused health_record: NOPERM"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_every_exception_derives_from_snakepit_error_and_pickles(exc: SnakepitError) -> None:
    assert isinstance(exc, SnakepitError)
    copy = pickle.loads(pickle.dumps(exc))
    assert type(copy) is type(exc)
    assert str(copy) == str(exc)


def test_a_store_script_error_is_no_outage_and_exported_at_top_level() -> None:
    import snakepit_celery

    exc = StoreScriptError("Redis store redis://h:6379/0 refused taint_set: NOPERM")
    assert snakepit_celery.StoreScriptError is StoreScriptError
    assert "StoreScriptError" in snakepit_celery.__all__
    assert error_kind(exc) is None  # not "unavailable": the retry policy does not retry it
    assert not isinstance(exc, StoreUnavailableError)


def test_config_error_is_a_value_error_naming_setting_value_and_allowed() -> None:
    exc = ConfigError("snakepit_metrics_port", 70000, "an integer 1-65535 or None")
    assert isinstance(exc, ValueError)
    assert exc.setting == "snakepit_metrics_port"
    assert "snakepit_metrics_port" in str(exc)
    assert "70000" in str(exc)
    assert "1-65535" in str(exc)


def test_config_error_for_an_unknown_name_suggests_the_closest_one() -> None:
    exc = ConfigError.unknown_name("setting", "snakepit_fail_opn", ["snakepit_fail_open", "x"])
    assert exc.setting == "setting"
    assert "did you mean 'snakepit_fail_open'" in str(exc)


def test_config_error_for_an_unknown_name_without_a_close_match_lists_the_allowed() -> None:
    exc = ConfigError.unknown_name("argument", "zzz", ["alpha", "beta"])
    assert "did you mean" not in str(exc)
    assert "alpha, beta" in str(exc)


def test_circuit_open_error_carries_breaker_and_a_non_negative_retry_after() -> None:
    exc = CircuitOpenError("payments", -1.0)
    assert exc.breaker == "payments"
    assert exc.retry_after == 0.0


def test_retry_exhausted_error_chains_the_last_error() -> None:
    last = TimeoutError("slow")
    exc = RetryExhaustedError(3, last)
    assert exc.attempts == 3
    assert exc.last_error is last
    assert exc.__cause__ is last


def test_worker_crashed_error_carries_its_details() -> None:
    exc = WorkerCrashedError("segfault", exit_code=139, signal=11, worker_id="w", device="cuda:1")
    assert (exc.classification, exc.exit_code, exc.signal, exc.worker_id, exc.device) == (
        "segfault",
        139,
        11,
        "w",
        "cuda:1",
    )
    assert "segfault" in str(exc)


@pytest.mark.parametrize(
    ("name", "bases", "kind"),
    [
        ("Timeout", (OSError,), "timeout"),  # requests.exceptions.Timeout
        ("ReadTimeout", (OSError,), "timeout"),
        ("TimeoutException", (Exception,), "timeout"),  # httpx
        ("ConnectionError", (OSError,), "unavailable"),  # requests.exceptions.ConnectionError
        ("ConnectError", (Exception,), "unavailable"),  # httpx.ConnectError
    ],
)
def test_http_client_errors_are_recognised_by_class_name(
    name: str, bases: tuple[type[BaseException], ...], kind: str
) -> None:
    error_class = type(name, bases, {})
    assert error_kind(error_class("x")) == kind


def test_a_connect_timeout_is_a_timeout_even_though_it_is_a_connection_error() -> None:
    connection_error = type("ConnectionError", (OSError,), {})
    timeout = type("Timeout", (OSError,), {})
    connect_timeout = type("ConnectTimeout", (connection_error, timeout), {})
    assert error_kind(connect_timeout("x")) == "timeout"


@pytest.mark.parametrize(
    "exc",
    [
        WorkerCrashedError("segfault", 139, 11, "gpu0@host", "cuda:0"),
        RetryExhaustedError(3, ConnectionError("downstream unavailable")),
        ConfigError("snakepit_fail_open", "maybe", "true or false"),
        CircuitOpenError("payments", 1.5),
        DeviceNotAvailableError("cuda:3"),
        LockMismatchError("insufficient_gpus"),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_exceptions_survive_celerys_json_result_backend(exc: SnakepitError) -> None:
    from celery import Celery
    from celery.backends.base import Backend

    backend = Backend(Celery(set_as_current=False), serializer="json")
    rebuilt = backend.exception_to_python(backend.prepare_exception(exc))
    assert type(rebuilt) is type(exc)
    assert str(rebuilt) == str(exc)
    public = {k: v for k, v in vars(exc).items() if not k.startswith("_") and k != "last_error"}
    assert {k: getattr(rebuilt, k) for k in public} == public
