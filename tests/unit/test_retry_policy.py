"""RetryPolicy, as specified in API.md "Retry policy"."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import random
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snakepit_celery.errors import ConfigError, WorkerCrashedError
from snakepit_celery.policy.retry import RetryPolicy
from snakepit_celery.testing import disabled, set_testing


@pytest.fixture(autouse=True)
def _not_testing() -> Iterator[None]:
    set_testing(False)
    yield
    set_testing(False)


class QuotaError(Exception):
    pass


class DailyQuotaError(QuotaError):
    pass


# -- defaults and attributes -------------------------------------------------


def test_defaults_match_the_api() -> None:
    policy = RetryPolicy()
    assert policy.max_attempts == 3
    assert policy.backoff == (0.1, 0.2, 0.4, 0.8, 1.6)
    assert policy.base_backoff == 0.1
    assert policy.backoff_multiplier == 2.0
    assert policy.max_backoff == 30.0
    assert policy.jitter is False
    assert policy.jitter_factor == 0.25
    assert policy.retriable_errors == (
        "timeout",
        "unavailable",
        "connection_refused",
        "worker_crash",
    )


def test_every_constructor_argument_is_an_attribute() -> None:
    policy = RetryPolicy(
        max_attempts=5,
        backoff=[1, 2],
        base_backoff=0.5,
        backoff_multiplier=3,
        max_backoff=10,
        jitter=True,
        jitter_factor=0.5,
        retriable_errors=["timeout", QuotaError],
    )
    assert policy.max_attempts == 5
    assert policy.backoff == (1.0, 2.0)
    assert policy.base_backoff == 0.5
    assert policy.backoff_multiplier == 3.0
    assert policy.max_backoff == 10.0
    assert policy.jitter is True
    assert policy.jitter_factor == 0.5
    assert policy.retriable_errors == ("timeout", QuotaError)


def test_policy_is_immutable() -> None:
    policy = RetryPolicy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_attempts = 10  # type: ignore[misc]


def test_equal_arguments_make_equal_hashable_policies() -> None:
    assert RetryPolicy(max_attempts=4) == RetryPolicy(max_attempts=4)
    assert hash(RetryPolicy(max_attempts=4)) == hash(RetryPolicy(max_attempts=4))
    assert RetryPolicy(max_attempts=4) != RetryPolicy(max_attempts=5)


def test_policy_pickles() -> None:
    policy = RetryPolicy(retriable_errors=("timeout", QuotaError), jitter=True)
    assert pickle.loads(pickle.dumps(policy)) == policy


def test_repr_reads_like_the_config() -> None:
    policy = RetryPolicy(max_attempts=2, backoff=None, retriable_errors=("timeout", QuotaError))
    text = repr(policy)
    assert text.startswith("RetryPolicy(max_attempts=2, backoff=None, base_backoff=0.1,")
    assert f"retriable_errors=('timeout', {__name__}.QuotaError))" in text


def test_repr_of_a_builtin_class_uses_its_plain_name() -> None:
    assert "retriable_errors=(ValueError,)" in repr(RetryPolicy(retriable_errors=[ValueError]))


def test_as_dict_is_json_safe_with_field_names() -> None:
    policy = RetryPolicy(retriable_errors=("gpu_oom", ValueError))
    data = policy.as_dict()
    assert json.loads(json.dumps(data)) == data
    assert set(data) == {f.name for f in dataclasses.fields(RetryPolicy)}
    assert data["backoff"] == [0.1, 0.2, 0.4, 0.8, 1.6]
    assert data["retriable_errors"] == ["gpu_oom", "ValueError"]


def test_as_dict_of_all() -> None:
    assert RetryPolicy(retriable_errors="all").as_dict()["retriable_errors"] == "all"


def test_replace_changes_some_arguments_and_validates() -> None:
    policy = RetryPolicy(max_attempts=2, jitter=True)
    changed = policy.replace(max_attempts=7)
    assert changed.max_attempts == 7
    assert changed.jitter is True
    with pytest.raises(ConfigError, match="max_attempts"):
        policy.replace(max_attempts=0)
    with pytest.raises(ConfigError, match="did you mean 'max_attempts'"):
        policy.replace(max_attempt=7)


# -- validation ---------------------------------------------------------------

INVALID: list[tuple[dict[str, Any], str]] = [
    ({"max_attempts": 0}, "max_attempts"),
    ({"max_attempts": -1}, "max_attempts"),
    ({"max_attempts": 2.5}, "max_attempts"),
    ({"max_attempts": True}, "max_attempts"),
    ({"max_attempts": "3"}, "max_attempts"),
    ({"backoff": [0.1, -0.2]}, "backoff"),
    ({"backoff": [math.nan]}, "backoff"),
    ({"backoff": [math.inf]}, "backoff"),
    ({"backoff": "0.1"}, "backoff"),
    ({"backoff": 0.1}, "backoff"),
    ({"backoff": ["0.1"]}, "backoff"),
    ({"base_backoff": -0.1}, "base_backoff"),
    ({"base_backoff": math.inf}, "base_backoff"),
    ({"backoff_multiplier": 0.5}, "backoff_multiplier"),
    ({"backoff_multiplier": -2}, "backoff_multiplier"),
    ({"max_backoff": -1}, "max_backoff"),
    ({"max_backoff": "30"}, "max_backoff"),
    ({"jitter": "yes"}, "jitter"),
    ({"jitter": 1}, "jitter"),
    ({"jitter_factor": -0.1}, "jitter_factor"),
    ({"jitter_factor": 1.5}, "jitter_factor"),
    ({"retriable_errors": ["timeout", "slow"]}, "retriable_errors"),
    ({"retriable_errors": "timeot"}, "retriable_errors"),
    ({"retriable_errors": [42]}, "retriable_errors"),
    ({"retriable_errors": [int]}, "retriable_errors"),
    ({"retriable_errors": 3}, "retriable_errors"),
]


@pytest.mark.parametrize(
    ("kwargs", "setting"), INVALID, ids=[f"{k}={v!r}" for d, _ in INVALID for k, v in d.items()]
)
def test_invalid_arguments_raise_config_error_naming_the_argument(
    kwargs: dict[str, Any], setting: str
) -> None:
    with pytest.raises(ConfigError) as info:
        RetryPolicy(**kwargs)
    assert info.value.setting == setting
    assert setting in str(info.value)
    assert "allowed" in str(info.value)


def test_unknown_kind_error_lists_the_known_kinds() -> None:
    with pytest.raises(ConfigError, match="gpu_oom") as info:
        RetryPolicy(retriable_errors=["slow"])
    assert "'slow'" in str(info.value)


def test_boundary_values_are_accepted() -> None:
    policy = RetryPolicy(
        max_attempts=1,
        backoff=[0],
        base_backoff=0,
        backoff_multiplier=1,
        max_backoff=0,
        jitter_factor=1,
    )
    assert policy.backoff_for_attempt(1) == 0.0
    assert RetryPolicy(jitter_factor=0).jitter_factor == 0.0


# -- should_retry ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_attempts", "attempt", "expected"),
    [(3, 1, True), (3, 2, True), (3, 3, False), (3, 4, False), (1, 1, False)],
)
def test_should_retry_while_attempt_is_below_max_attempts(
    max_attempts: int, attempt: int, expected: bool
) -> None:
    assert RetryPolicy(max_attempts=max_attempts).should_retry(attempt) is expected


# -- retry_for_error -------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (TimeoutError(), True),
        (ConnectionRefusedError(), True),
        (ConnectionResetError(), True),
        (WorkerCrashedError("segfault"), True),
        (RuntimeError("CUDA out of memory. Tried to allocate 1 GiB"), False),
        (ValueError("bad input"), False),
    ],
)
def test_default_policy_retries_the_default_kinds(exc: Exception, expected: bool) -> None:
    assert RetryPolicy().retry_for_error(exc) is expected


def test_kind_strings_match_through_error_kind() -> None:
    policy = RetryPolicy(retriable_errors=["gpu_oom"])
    assert policy.retry_for_error(RuntimeError("CUDA out of memory"))
    assert not policy.retry_for_error(TimeoutError())


def test_exception_classes_match_their_subclasses() -> None:
    policy = RetryPolicy(retriable_errors=[QuotaError])
    assert policy.retry_for_error(QuotaError())
    assert policy.retry_for_error(DailyQuotaError())
    assert not policy.retry_for_error(TimeoutError())


def test_a_single_class_or_kind_is_accepted() -> None:
    assert RetryPolicy(retriable_errors=QuotaError).retry_for_error(DailyQuotaError())
    assert RetryPolicy(retriable_errors="timeout").retriable_errors == ("timeout",)


def test_kinds_and_classes_mix() -> None:
    policy = RetryPolicy(retriable_errors=("timeout", KeyError))
    assert policy.retry_for_error(TimeoutError())
    assert policy.retry_for_error(KeyError("k"))
    assert not policy.retry_for_error(ValueError())


def test_all_retries_every_exception() -> None:
    policy = RetryPolicy(retriable_errors="all")
    assert policy.retriable_errors == "all"
    assert policy.retry_for_error(ValueError())
    assert policy.retry_for_error(ZeroDivisionError())


def test_all_inside_a_list_means_all() -> None:
    assert RetryPolicy(retriable_errors=["timeout", "all"]).retriable_errors == "all"


def test_all_never_retries_interrupts_or_exits() -> None:
    policy = RetryPolicy(retriable_errors="all")
    assert not policy.retry_for_error(KeyboardInterrupt())
    assert not policy.retry_for_error(SystemExit(1))


def test_empty_retriable_errors_retries_nothing() -> None:
    assert not RetryPolicy(retriable_errors=()).retry_for_error(TimeoutError())


# -- backoff_for_attempt ---------------------------------------------------------


def test_backoff_follows_the_list_while_it_lasts() -> None:
    policy = RetryPolicy()
    assert [policy.backoff_for_attempt(n) for n in range(1, 6)] == [0.1, 0.2, 0.4, 0.8, 1.6]


def test_backoff_past_the_list_keeps_growing_by_the_multiplier() -> None:
    policy = RetryPolicy(backoff=[1.0, 5.0], backoff_multiplier=3.0)
    assert policy.backoff_for_attempt(3) == pytest.approx(15.0)
    assert policy.backoff_for_attempt(4) == pytest.approx(30.0)  # 45 capped at max_backoff


def test_backoff_none_is_exponential_from_base_backoff() -> None:
    policy = RetryPolicy(backoff=None, base_backoff=0.5, backoff_multiplier=2.0)
    assert [policy.backoff_for_attempt(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]


def test_empty_backoff_list_behaves_like_none() -> None:
    policy = RetryPolicy(backoff=[], base_backoff=0.25)
    assert policy.backoff_for_attempt(3) == pytest.approx(1.0)


def test_backoff_is_capped_at_max_backoff() -> None:
    policy = RetryPolicy(backoff=None, base_backoff=1.0, max_backoff=5.0)
    assert policy.backoff_for_attempt(10) == 5.0


def test_huge_attempt_numbers_do_not_overflow() -> None:
    policy = RetryPolicy(backoff=None, jitter=True, jitter_factor=1.0)
    assert policy.backoff_for_attempt(100_000) == 30.0


def test_jitter_stays_within_the_factor() -> None:
    random.seed(7)
    policy = RetryPolicy(backoff=[1.0], jitter=True, jitter_factor=0.25)
    delays = [policy.backoff_for_attempt(1) for _ in range(500)]
    assert all(0.75 <= d <= 1.25 for d in delays)
    assert len(set(delays)) > 1


def test_cap_applies_after_jitter() -> None:
    random.seed(7)
    policy = RetryPolicy(backoff=[1.0], jitter=True, jitter_factor=1.0, max_backoff=1.0)
    delays = [policy.backoff_for_attempt(1) for _ in range(500)]
    assert max(delays) == 1.0
    assert min(delays) < 1.0


def test_invalid_attempt_number_is_rejected() -> None:
    with pytest.raises(ConfigError, match="attempt"):
        RetryPolicy().backoff_for_attempt(0)


def test_policy_has_no_testing_switch_its_callers_read_it() -> None:
    # Testing mode makes the sleeps zero in the executor and the task
    # (test_executor.test_testing_mode_makes_retries_instant); the value is unswitched.
    policy = RetryPolicy(backoff=[5.0])
    with disabled():
        assert policy.backoff_for_attempt(1) == 5.0
    assert policy.backoff_for_attempt(1) == 5.0


delays = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)
policies = st.builds(
    RetryPolicy,
    backoff=st.one_of(st.none(), st.lists(delays, max_size=6)),
    base_backoff=delays,
    backoff_multiplier=st.floats(min_value=1, max_value=100, allow_nan=False),
    max_backoff=delays,
    jitter=st.booleans(),
    jitter_factor=st.floats(min_value=0, max_value=1),
)


@given(policy=policies, attempt=st.integers(min_value=1, max_value=10_000))
def test_backoff_is_always_within_zero_and_max_backoff(policy: RetryPolicy, attempt: int) -> None:
    delay = policy.backoff_for_attempt(attempt)
    assert math.isfinite(delay)
    assert 0.0 <= delay <= policy.max_backoff


@given(
    policy=policies.map(lambda p: p.replace(jitter=False)),
    attempt=st.integers(min_value=1, max_value=500),
)
def test_without_jitter_backoff_never_shrinks_past_the_list(
    policy: RetryPolicy, attempt: int
) -> None:
    listed = len(policy.backoff or ())
    first = max(attempt, listed)
    assert policy.backoff_for_attempt(first) <= policy.backoff_for_attempt(first + 1)


@given(
    backoff=st.lists(delays, min_size=1, max_size=6).map(sorted),
    multiplier=st.floats(min_value=1, max_value=10),
    attempt=st.integers(min_value=1, max_value=50),
)
def test_without_jitter_a_sorted_list_gives_monotonic_backoff(
    backoff: list[float], multiplier: float, attempt: int
) -> None:
    policy = RetryPolicy(backoff=backoff, backoff_multiplier=multiplier)
    assert policy.backoff_for_attempt(attempt) <= policy.backoff_for_attempt(attempt + 1)


@given(
    base=st.floats(min_value=0.001, max_value=10),
    factor=st.floats(min_value=0, max_value=1),
)
def test_jittered_delay_is_within_plus_minus_factor(base: float, factor: float) -> None:
    policy = RetryPolicy(backoff=[base], jitter=True, jitter_factor=factor, max_backoff=1e9)
    delay = policy.backoff_for_attempt(1)
    assert base - base * factor - 1e-9 <= delay <= base + base * factor + 1e-9


# -- from_dict -------------------------------------------------------------------


def test_from_dict_builds_a_policy() -> None:
    policy = RetryPolicy.from_dict({"max_attempts": 5, "backoff": None, "jitter": True})
    assert policy == RetryPolicy(max_attempts=5, backoff=None, jitter=True)


def test_from_dict_round_trips_as_dict_of_kinds() -> None:
    policy = RetryPolicy(max_attempts=4, retriable_errors=("timeout", "gpu_oom"))
    assert RetryPolicy.from_dict(policy.as_dict()) == policy


def test_from_dict_error_names_the_setting_key() -> None:
    with pytest.raises(ConfigError) as info:
        RetryPolicy.from_dict({"max_attempts": 0})
    assert info.value.setting == 'snakepit_retry_policy["max_attempts"]'
    assert 'snakepit_retry_policy["max_attempts"]' in str(info.value)


def test_from_dict_unknown_key_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match="did you mean 'max_backoff'"):
        RetryPolicy.from_dict({"max_backof": 3})


def test_from_dict_rejects_a_non_mapping() -> None:
    with pytest.raises(ConfigError, match="snakepit_retry_policy"):
        RetryPolicy.from_dict([("max_attempts", 3)])  # type: ignore[arg-type]
