"""CircuitBreaker semantics, on MemoryStore and on real Redis."""

from __future__ import annotations

import asyncio
import json
import pickle
import time
from collections.abc import Iterator
from typing import Any

import pytest

from snakepit_celery import testing
from snakepit_celery.breaker import BreakerState, BreakerStats, CircuitBreaker
from snakepit_celery.errors import CircuitOpenError, ConfigError, StoreUnavailableError
from snakepit_celery.store import MemoryStore, Store, set_fail_open, store_from_url
from snakepit_celery.testing import wait_until
from tests.support.breakers import CountingStore, record_signals

RESET = 0.2  # reset_timeout used by the transition tests (seconds)


class ServiceDownError(Exception):
    """The failure the protected function raises."""


class NotFoundError(Exception):
    """A business error that must not trip the breaker."""


def fail() -> None:
    raise ServiceDownError("down")


def ok() -> str:
    return "ok"


@pytest.fixture
def store(each_store: Store) -> Store:
    return each_store


@pytest.fixture
def name(key_prefix: str) -> str:
    return f"svc-{key_prefix}"


def make(name: str, store: Any, **kwargs: Any) -> CircuitBreaker:
    kwargs.setdefault("failure_threshold", 3)
    kwargs.setdefault("reset_timeout", RESET)
    return CircuitBreaker(name, store=store, **kwargs)


def trip(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.failure_threshold):
        with pytest.raises(ServiceDownError):
            breaker.call(fail)


def wait_half_open(breaker: CircuitBreaker) -> None:
    assert wait_until(lambda: breaker.state == BreakerState.HALF_OPEN, timeout=5.0)


@pytest.fixture
def fail_closed() -> Iterator[None]:
    set_fail_open(False)
    yield
    set_fail_open(True)


# -- configuration -------------------------------------------------------------


def test_defaults_match_the_api() -> None:
    breaker = CircuitBreaker("defaults")
    assert breaker.failure_threshold == 5
    assert breaker.reset_timeout == 30.0
    assert breaker.half_open_max_calls == 1
    assert breaker.exclude == ()
    assert breaker.max_staleness == 0.25
    assert breaker.name == "defaults"


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("failure_threshold", 0),
        ("failure_threshold", 1.5),
        ("reset_timeout", -1.0),
        ("half_open_max_calls", 0),
        ("max_staleness", -0.1),
        ("exclude", ("not an exception",)),
    ],
)
def test_invalid_settings_raise_config_error_naming_the_setting(setting: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        CircuitBreaker("bad", **{setting: value})
    assert info.value.setting == setting
    assert setting in str(info.value)


def test_repr_reads_like_the_config() -> None:
    breaker = CircuitBreaker(
        "payments", failure_threshold=2, exclude=(KeyError,), store="memory://"
    )
    assert repr(breaker) == (
        "CircuitBreaker('payments', failure_threshold=2, reset_timeout=30.0, "
        "half_open_max_calls=1, exclude=('KeyError',), max_staleness=0.25, store='memory://')"
    )


def test_breaker_pickles_by_its_configuration() -> None:
    breaker = CircuitBreaker("pickled", failure_threshold=2, store="memory://", probe_ttl=5.0)
    clone = pickle.loads(pickle.dumps(breaker))
    assert repr(clone) == repr(breaker)
    assert clone.probe_ttl == 5.0


def test_pickled_breaker_keeps_its_store_and_state(store: Any, name: str) -> None:
    breaker = make(name, store)
    breaker.record_failure()
    clone = pickle.loads(pickle.dumps(breaker))
    if isinstance(store, MemoryStore):
        assert clone.store.url == "memory://"
    else:
        assert clone.stats().failure_count == 1


def test_stats_as_dict_is_json_safe_with_field_names() -> None:
    stats = BreakerStats(BreakerState.OPEN, 3, 7, 5, 0)
    assert json.loads(json.dumps(stats.as_dict())) == {
        "state": "open",
        "failure_count": 3,
        "success_count": 7,
        "failure_threshold": 5,
        "half_open_calls": 0,
        "config_conflict": False,
    }


def test_breaker_state_compares_equal_to_plain_strings() -> None:
    assert BreakerState.HALF_OPEN == "half_open"


# -- transitions -----------------------------------------------------------------


def test_new_breaker_is_closed_with_zero_counts(store: Any, name: str) -> None:
    stats = make(name, store).stats()
    assert stats == BreakerStats(BreakerState.CLOSED, 0, 0, 3, 0)


def test_call_returns_the_function_result(store: Any, name: str) -> None:
    assert make(name, store).call(lambda x, y=0: x + y, 2, y=3) == 5


def test_failure_is_reraised_and_counted(store: Any, name: str) -> None:
    breaker = make(name, store)
    with pytest.raises(ServiceDownError):
        breaker.call(fail)
    assert breaker.stats().failure_count == 1


def test_opens_at_failure_threshold_consecutive_failures(store: Any, name: str) -> None:
    breaker = make(name, store)
    for _ in range(2):
        with pytest.raises(ServiceDownError):
            breaker.call(fail)
    assert breaker.state == BreakerState.CLOSED
    with pytest.raises(ServiceDownError):
        breaker.call(fail)
    assert breaker.state == BreakerState.OPEN


def test_success_in_closed_resets_failure_count(store: Any, name: str) -> None:
    breaker = make(name, store)
    for _ in range(2):
        with pytest.raises(ServiceDownError):
            breaker.call(fail)
    breaker.call(ok)
    assert breaker.stats().failure_count == 0
    for _ in range(2):
        with pytest.raises(ServiceDownError):
            breaker.call(fail)
    assert breaker.state == BreakerState.CLOSED


def test_open_breaker_refuses_without_calling_the_function(store: Any, name: str) -> None:
    breaker = make(name, store, reset_timeout=30.0)
    trip(breaker)
    called = []
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(lambda: called.append(1))
    assert called == []
    assert info.value.breaker == name


def test_retry_after_is_the_time_left_until_half_open(store: Any, name: str) -> None:
    breaker = make(name, store, reset_timeout=30.0)
    trip(breaker)
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(ok)
    assert 25.0 < info.value.retry_after <= 30.0


def test_open_turns_half_open_after_reset_timeout(store: Any, name: str) -> None:
    breaker = make(name, store)
    trip(breaker)
    assert breaker.state == BreakerState.OPEN
    wait_half_open(breaker)


def test_half_open_probe_success_closes(store: Any, name: str) -> None:
    breaker = make(name, store)
    trip(breaker)
    wait_half_open(breaker)
    assert breaker.call(ok) == "ok"
    stats = breaker.stats()
    assert stats.state == BreakerState.CLOSED
    assert stats.failure_count == 0


def test_half_open_probe_failure_reopens_with_a_fresh_timeout(store: Any, name: str) -> None:
    breaker = make(name, store, reset_timeout=1.0)
    trip(breaker)
    wait_half_open(breaker)
    with pytest.raises(ServiceDownError):
        breaker.call(fail)
    assert breaker.state == BreakerState.OPEN
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(ok)
    assert info.value.retry_after > 0.5


def test_half_open_admits_at_most_half_open_max_calls(store: Any, name: str) -> None:
    breaker = make(name, store, half_open_max_calls=2)
    trip(breaker)
    wait_half_open(breaker)
    with breaker, breaker:
        assert breaker.stats().half_open_calls == 2
        with pytest.raises(CircuitOpenError), breaker:
            pass
    assert breaker.state == BreakerState.CLOSED


def test_allow_call_has_no_side_effect(store: Any, name: str) -> None:
    breaker = make(name, store)
    trip(breaker)
    assert breaker.allow_call() is False
    wait_half_open(breaker)
    with record_signals(name) as log:
        assert breaker.allow_call() is True
        assert breaker.allow_call() is True
        assert breaker.stats().half_open_calls == 0
    assert log.names() == []


def test_allow_call_is_false_while_half_open_is_saturated(store: Any, name: str) -> None:
    breaker = make(name, store)
    trip(breaker)
    wait_half_open(breaker)
    with breaker:
        assert breaker.allow_call() is False


def test_reset_closes_and_clears_counts(store: Any, name: str) -> None:
    breaker = make(name, store)
    breaker.call(ok)
    trip(breaker)
    breaker.reset()
    assert breaker.stats() == BreakerStats(BreakerState.CLOSED, 0, 0, 3, 0)
    assert breaker.call(ok) == "ok"


def test_store_reset_returns_the_state_before(store: Any, name: str) -> None:
    assert store.breaker_reset(name) == "closed"  # unknown
    breaker = make(name, store, reset_timeout=30.0)
    trip(breaker)
    assert store.breaker_reset(name) == "open"
    assert store.breaker_reset(name) == "closed"


def test_reset_of_an_open_breaker_sends_breaker_closed_once(store: Any, name: str) -> None:
    breaker = make(name, store, reset_timeout=30.0)
    trip(breaker)
    with record_signals(name) as log:
        breaker.reset()
        breaker.reset()
    assert log.names() == ["closed"]
    assert log.events[0][1] == {"pool": name}


def test_reset_of_a_half_open_breaker_sends_breaker_closed(store: Any, name: str) -> None:
    breaker = make(name, store)
    trip(breaker)
    wait_half_open(breaker)
    with record_signals(name) as log:
        breaker.reset()
    assert log.names() == ["closed"]


def test_reset_of_a_closed_breaker_sends_nothing(store: Any, name: str) -> None:
    breaker = make(name, store)
    with pytest.raises(ServiceDownError):
        breaker.call(fail)
    with record_signals(name) as log:
        breaker.reset()
    assert log.names() == []


def test_record_failure_opens_at_threshold(store: Any, name: str) -> None:
    breaker = make(name, store)
    for _ in range(3):
        breaker.record_failure()
    assert breaker.state == BreakerState.OPEN


def test_record_success_resets_failures(store: Any, name: str) -> None:
    breaker = make(name, store)
    breaker.record_failure()
    breaker.record_success()
    stats = breaker.stats()
    assert (stats.failure_count, stats.success_count) == (0, 1)


def test_record_success_when_half_open_closes(store: Any, name: str) -> None:
    breaker = make(name, store)
    trip(breaker)
    wait_half_open(breaker)
    breaker.record_success()
    assert breaker.state == BreakerState.CLOSED


def test_success_count_counts_every_success_since_reset(store: Any, name: str) -> None:
    breaker = make(name, store)
    for _ in range(25):
        breaker.call(ok)
    assert breaker.stats().success_count == 25


def test_excluded_exceptions_pass_through_uncounted(store: Any, name: str) -> None:
    breaker = make(name, store, exclude=(NotFoundError,))

    def missing() -> None:
        raise NotFoundError("no such user")

    for _ in range(5):
        with pytest.raises(NotFoundError):
            breaker.call(missing)
    stats = breaker.stats()
    assert (stats.state, stats.failure_count) == (BreakerState.CLOSED, 0)


def test_other_breakers_see_failures_at_once(store: Any, name: str) -> None:
    writer = make(name, store, max_staleness=60.0)
    reader = make(name, store, max_staleness=60.0)
    with pytest.raises(ServiceDownError):
        writer.call(fail)
    assert reader.stats().failure_count == 1


# -- the three call forms --------------------------------------------------------


def test_decorator_wraps_the_function(store: Any, name: str) -> None:
    breaker = make(name, store)

    @breaker
    def add(x: int, y: int) -> int:
        """Add two numbers."""
        return x + y

    assert add(1, 2) == 3
    assert add.__name__ == "add"
    assert add.__doc__ == "Add two numbers."


def test_decorator_counts_failures(store: Any, name: str) -> None:
    breaker = make(name, store)
    guarded = breaker(fail)
    trip_calls = breaker.failure_threshold
    for _ in range(trip_calls):
        with pytest.raises(ServiceDownError):
            guarded()
    with pytest.raises(CircuitOpenError):
        guarded()


def test_decorator_works_on_coroutine_functions(store: Any, name: str) -> None:
    breaker = make(name, store)

    @breaker
    async def fetch(x: int) -> int:
        await asyncio.sleep(0)
        return x * 2

    @breaker
    async def broken() -> None:
        raise ServiceDownError("down")

    assert asyncio.run(fetch(21)) == 42
    with pytest.raises(ServiceDownError):
        asyncio.run(broken())
    assert breaker.stats().failure_count == 1


def test_context_manager_counts_failures_and_reraises(store: Any, name: str) -> None:
    breaker = make(name, store)
    for _ in range(3):
        with pytest.raises(ServiceDownError), breaker:
            raise ServiceDownError("down")
    assert breaker.state == BreakerState.OPEN
    with pytest.raises(CircuitOpenError), breaker:
        pytest.fail("the body must not run while open")


def test_context_manager_counts_successes(store: Any, name: str) -> None:
    breaker = make(name, store)
    with breaker:
        pass
    assert breaker.stats().success_count == 1


# -- signals ---------------------------------------------------------------------


def test_each_transition_sends_one_signal(store: Any, name: str) -> None:
    breaker = make(name, store)
    with record_signals(name) as log:
        trip(breaker)
        with pytest.raises(CircuitOpenError):
            breaker.call(ok)
        wait_half_open(breaker)
        breaker.call(ok)
        breaker.call(ok)
    assert log.names() == ["opened", "half_open", "closed"]
    opened = log.events[0][1]
    assert opened == {"failure_count": 3, "pool": name, "reason": "failures"}


def test_reopening_from_half_open_sends_opened_again(store: Any, name: str) -> None:
    breaker = make(name, store)
    with record_signals(name) as log:
        trip(breaker)
        wait_half_open(breaker)
        with pytest.raises(ServiceDownError):
            breaker.call(fail)
    assert log.names() == ["opened", "half_open", "opened"]


# -- hot path --------------------------------------------------------------------


def test_fresh_closed_view_admits_without_asking_the_store(store: Any, name: str) -> None:
    counting = CountingStore(store)
    breaker = make(name, counting, max_staleness=60.0)
    breaker.call(ok)
    for _ in range(100):
        breaker.call(ok)
    assert counting.calls["breaker_acquire"] == 1
    assert counting.calls.get("breaker_record", 0) < 10  # background flushes only
    assert breaker.stats().success_count == 101


def test_max_staleness_zero_asks_the_store_every_call(store: Any, name: str) -> None:
    counting = CountingStore(store)
    breaker = make(name, counting, max_staleness=0)
    for i in range(10):
        breaker.call(ok)
        assert counting.total() >= i + 1
    assert breaker.stats().success_count == 10


def test_max_staleness_zero_sees_an_opening_on_the_next_call(store: Any, name: str) -> None:
    strict = make(name, store, max_staleness=0)
    strict.call(ok)
    trip(make(name, store))
    with pytest.raises(CircuitOpenError):
        strict.call(ok)


def test_a_failure_ends_the_local_view_of_other_processes_within_staleness(
    store: Any, name: str
) -> None:
    fast = make(name, store, max_staleness=0.05)
    other = make(name, store)
    fast.call(ok)
    trip(other)
    assert wait_until(lambda: _refused(fast), timeout=5.0)


def _refused(breaker: CircuitBreaker) -> bool:
    try:
        breaker.call(ok)
    except CircuitOpenError:
        return True
    return False


def test_batched_successes_are_flushed_by_the_timer(store: Any, name: str) -> None:
    breaker = make(name, store, max_staleness=60.0)
    reader = make(name, store)
    for _ in range(5):
        breaker.call(ok)
    assert wait_until(
        lambda: reader.store.breaker_peek(name, reset_timeout=RESET).successes == 5, timeout=5.0
    )


def test_probe_lease_expires_when_the_probe_never_reports(store: Any, name: str) -> None:
    breaker = make(name, store, probe_ttl=1.0)
    trip(breaker)
    wait_half_open(breaker)
    breaker.__enter__()  # a probe that never returns (its process is gone)
    with pytest.raises(CircuitOpenError):
        breaker.call(ok)
    assert wait_until(breaker.allow_call, timeout=5.0)
    assert breaker.call(ok) == "ok"
    assert breaker.state == BreakerState.CLOSED


# -- testing switch and an unreachable store -------------------------------------


def test_testing_mode_always_admits_and_records_nothing(store: Any, name: str) -> None:
    breaker = make(name, store, reset_timeout=30.0)
    trip(breaker)
    with testing.disabled():
        assert breaker.allow_call() is True
        assert breaker.call(ok) == "ok"
        with pytest.raises(ServiceDownError):
            breaker.call(fail)
        breaker.record_failure()
    stats = breaker.stats()
    assert (stats.state, stats.failure_count, stats.success_count) == (BreakerState.OPEN, 3, 0)


@pytest.fixture
def dead_store(key_prefix: str) -> Any:
    return store_from_url("redis://127.0.0.1:1/0", key_prefix=key_prefix)


def test_unreachable_store_fails_open_by_default(dead_store: Any) -> None:
    breaker = CircuitBreaker("dead", store=dead_store)
    assert breaker.call(ok) == "ok"
    with pytest.raises(ServiceDownError):
        breaker.call(fail)
    assert breaker.allow_call() is True
    assert breaker.state == BreakerState.CLOSED


def test_unreachable_store_is_not_asked_again_on_every_call(dead_store: Any) -> None:
    counting = CountingStore(dead_store)
    breaker = CircuitBreaker("dead", store=counting)
    for _ in range(100):
        breaker.call(ok)
    assert counting.total() <= 2


def test_unreachable_store_warns_at_most_once(
    dead_store: Any, caplog: pytest.LogCaptureFixture
) -> None:
    breaker = CircuitBreaker("dead", max_staleness=0, store=dead_store)
    with caplog.at_level("WARNING", logger="snakepit_celery"):
        for _ in range(5):
            breaker.call(ok)
            breaker.allow_call()
    assert len([r for r in caplog.records if "unavailable" in r.getMessage()]) <= 1


@pytest.mark.usefixtures("fail_closed")
def test_unreachable_store_raises_when_fail_open_is_off(dead_store: Any) -> None:
    breaker = CircuitBreaker("dead", store=dead_store)
    called = []
    with pytest.raises(StoreUnavailableError):
        breaker.call(lambda: called.append(1))
    assert called == []
    with pytest.raises(StoreUnavailableError):
        breaker.allow_call()


def test_store_none_uses_the_process_default_store() -> None:
    breaker = CircuitBreaker(f"default-{time.monotonic_ns()}")
    assert breaker.store.url == "memory://"
    assert breaker.call(ok) == "ok"
