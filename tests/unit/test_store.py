"""The Store protocol, specified once and run against both backends.

Every test runs on ``MemoryStore`` and on ``RedisStore`` (real Redis, a key
prefix unique to the test): the two must behave identically.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from snakepit_celery.store import MemoryStore, RedisStore, Store

SHORT = 0.2  # a timeout short enough to wait out in a test
PAST_SHORT = 0.3


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest, key_prefix: str) -> Iterator[Store]:
    """A fresh store of each backend."""
    if request.param == "memory":
        yield MemoryStore(key_prefix=key_prefix)
        return
    redis_url = request.getfixturevalue("redis_url")
    redis_store = RedisStore(redis_url, key_prefix=key_prefix)
    yield redis_store
    redis_store.close()


def acquire(store: Store, name: str = "b", **kw: Any) -> Any:
    opts = {"reset_timeout": SHORT, "half_open_max_calls": 1, "probe_ttl": 10.0} | kw
    return store.breaker_acquire(name, **opts)


def fail(store: Store, name: str = "b", threshold: int = 3, **kw: Any) -> Any:
    return store.breaker_record(name, success=False, failure_threshold=threshold, **kw)


def succeed(store: Store, name: str = "b", **kw: Any) -> Any:
    return store.breaker_record(name, success=True, failure_threshold=3, **kw)


def open_breaker(store: Store, name: str = "b") -> None:
    for _ in range(3):
        fail(store, name)


def run_concurrently(fn: Callable[[], Any], n: int) -> list[Any]:
    """Run ``fn`` in ``n`` threads released together; return their results."""
    gate = threading.Barrier(n, timeout=10)

    def task() -> Any:
        gate.wait()
        return fn()

    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(task) for _ in range(n)]
        return [f.result(timeout=30) for f in futures]


# -- basics ---------------------------------------------------------------------


def test_now_is_epoch_seconds(store: Store) -> None:
    assert abs(store.now() - time.time()) < 5


def test_ping_answers(store: Store) -> None:
    assert store.ping() is True


# -- circuit breaker --------------------------------------------------------------


def test_unknown_breaker_is_closed_and_allows(store: Store) -> None:
    decision = acquire(store)
    assert (decision.allowed, decision.state, decision.probe, decision.transition) == (
        True,
        "closed",
        None,
        None,
    )


def test_failures_below_threshold_keep_breaker_closed(store: Store) -> None:
    assert fail(store).state == "closed"
    record = fail(store)
    assert (record.state, record.failures, record.transition) == ("closed", 2, None)


def test_failure_reaching_threshold_opens_with_transition(store: Store) -> None:
    fail(store)
    fail(store)
    record = fail(store)
    assert (record.state, record.failures, record.transition) == ("open", 3, "opened")


def test_count_records_several_failures_at_once(store: Store) -> None:
    record = fail(store, count=3)
    assert (record.state, record.failures, record.transition) == ("open", 3, "opened")


def test_failure_while_open_counts_without_transition(store: Store) -> None:
    open_breaker(store)
    record = fail(store)
    assert (record.state, record.failures, record.transition) == ("open", 4, None)


def test_success_in_closed_resets_failures_and_counts_successes(store: Store) -> None:
    fail(store)
    fail(store)
    record = succeed(store, count=2)
    assert (record.state, record.failures, record.transition) == ("closed", 0, None)
    snap = store.breaker_peek("b", reset_timeout=SHORT)
    assert (snap.failures, snap.successes) == (0, 2)


def test_open_breaker_refuses_with_retry_after(store: Store) -> None:
    open_breaker(store)
    decision = acquire(store, reset_timeout=30.0)
    assert (decision.allowed, decision.state, decision.probe) == (False, "open", None)
    assert 29.0 < decision.retry_after <= 30.0
    assert decision.failures == 3


def test_open_turns_half_open_after_timeout_and_admits_one_probe(store: Store) -> None:
    open_breaker(store)
    time.sleep(PAST_SHORT)
    decision = acquire(store)
    assert (decision.allowed, decision.state, decision.transition) == (
        True,
        "half_open",
        "half_open",
    )
    assert decision.probe


def test_half_open_transition_is_reported_once(store: Store) -> None:
    open_breaker(store)
    time.sleep(PAST_SHORT)
    acquire(store, half_open_max_calls=5)
    second = acquire(store, half_open_max_calls=5)
    assert (second.allowed, second.state, second.transition) == (True, "half_open", None)


def test_saturated_half_open_refuses_until_earliest_lease_ends(store: Store) -> None:
    open_breaker(store)
    time.sleep(PAST_SHORT)
    acquire(store, probe_ttl=10.0)
    refused = acquire(store, probe_ttl=10.0)
    assert (refused.allowed, refused.state, refused.probe) == (False, "half_open", None)
    assert 9.0 < refused.retry_after <= 10.0


def test_half_open_admits_exactly_max_calls_probes(store: Store) -> None:
    open_breaker(store)
    time.sleep(PAST_SHORT)
    decisions = [acquire(store, half_open_max_calls=3) for _ in range(5)]
    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    assert len({d.probe for d in decisions[:3]}) == 3


def test_expired_probe_lease_frees_its_slot(store: Store) -> None:
    open_breaker(store)
    time.sleep(PAST_SHORT)
    acquire(store, probe_ttl=SHORT)
    time.sleep(PAST_SHORT)
    decision = acquire(store, probe_ttl=SHORT)
    assert decision.allowed and decision.probe


def test_probe_success_closes_with_transition(store: Store) -> None:
    open_breaker(store)
    time.sleep(PAST_SHORT)
    probe = acquire(store).probe
    record = succeed(store, probe=probe)
    assert (record.state, record.failures, record.transition) == ("closed", 0, "closed")
    assert acquire(store).state == "closed"


def test_probe_failure_reopens_with_fresh_timeout(store: Store) -> None:
    open_breaker(store)
    time.sleep(PAST_SHORT)
    probe = acquire(store).probe
    record = fail(store, probe=probe)
    assert (record.state, record.transition) == ("open", "opened")
    decision = acquire(store, reset_timeout=30.0)
    assert not decision.allowed and decision.retry_after > 29.0


def test_stale_probe_success_while_open_does_not_close(store: Store) -> None:
    open_breaker(store)
    time.sleep(PAST_SHORT)
    stale = acquire(store).probe
    fail(store, probe=stale)  # re-opened by another probe's failure
    record = succeed(store, probe=stale)
    assert (record.state, record.transition) == ("open", None)
    assert store.breaker_peek("b", reset_timeout=30.0).state == "open"


def test_unknown_probe_token_is_harmless(store: Store) -> None:
    record = succeed(store, probe="no-such-probe")
    assert (record.state, record.failures, record.transition) == ("closed", 0, None)


def test_peek_reports_open_with_retry_after(store: Store) -> None:
    open_breaker(store)
    snap = store.breaker_peek("b", reset_timeout=30.0)
    assert (snap.state, snap.failures, snap.half_open_calls) == ("open", 3, 0)
    assert 29.0 < snap.retry_after <= 30.0


def test_peek_past_timeout_reads_half_open_without_writing(store: Store) -> None:
    open_breaker(store)
    time.sleep(PAST_SHORT)
    snap = store.breaker_peek("b", reset_timeout=SHORT)
    assert (snap.state, snap.retry_after) == ("half_open", 0.0)
    assert acquire(store).transition == "half_open"  # peek did not flip it


def test_peek_counts_live_probes(store: Store) -> None:
    open_breaker(store)
    time.sleep(PAST_SHORT)
    acquire(store, half_open_max_calls=2)
    acquire(store, half_open_max_calls=2)
    assert store.breaker_peek("b", reset_timeout=SHORT).half_open_calls == 2


def test_peek_of_unknown_breaker_is_closed_and_empty(store: Store) -> None:
    snap = store.breaker_peek("nobody", reset_timeout=SHORT)
    assert (snap.state, snap.failures, snap.successes, snap.half_open_calls) == ("closed", 0, 0, 0)


def test_reset_forgets_the_breaker(store: Store) -> None:
    open_breaker(store)
    succeed(store)
    store.breaker_reset("b")
    snap = store.breaker_peek("b", reset_timeout=30.0)
    assert (snap.state, snap.failures, snap.successes) == ("closed", 0, 0)


def test_breakers_are_independent_by_name(store: Store) -> None:
    open_breaker(store, "one")
    assert acquire(store, "two").allowed


def test_racing_failures_open_exactly_once(store: Store) -> None:
    results = run_concurrently(lambda: fail(store, threshold=10), 50)
    assert [r.transition for r in results].count("opened") == 1
    assert store.breaker_peek("b", reset_timeout=30.0).failures == 50


def test_racing_acquires_flip_half_open_once_and_respect_probe_limit(store: Store) -> None:
    open_breaker(store)
    time.sleep(PAST_SHORT)
    results = run_concurrently(lambda: acquire(store, half_open_max_calls=3), 20)
    assert [r.transition for r in results].count("half_open") == 1
    assert sum(r.allowed for r in results) == 3


def test_racing_probe_outcomes_close_exactly_once(store: Store) -> None:
    open_breaker(store)
    time.sleep(PAST_SHORT)
    probes = [acquire(store, half_open_max_calls=8).probe for _ in range(8)]
    tokens = iter(probes)
    lock = threading.Lock()

    def report() -> Any:
        with lock:
            probe = next(tokens)
        return succeed(store, probe=probe)

    results = run_concurrently(report, 8)
    assert [r.transition for r in results].count("closed") == 1


# -- health monitor ---------------------------------------------------------------


def record(store: Store, worker: str = "w1", window: float = 60.0, cap: int = 100) -> Any:
    return store.health_record("pool", worker, window=window, max_entries=cap)


def test_health_record_counts_crashes(store: Store) -> None:
    record(store, "w1")
    snap = record(store, "w1")
    assert (snap.total_crashes, snap.crashes_in_window) == (2, 2)
    assert snap.workers["w1"].count == 2


def test_health_record_reports_only_the_recording_worker(store: Store) -> None:
    record(store, "w1")
    snap = record(store, "w2")
    assert set(snap.workers) == {"w2"}
    assert snap.workers["w2"].count == 1
    assert snap.workers["w2"].last_time is not None


def test_health_stats_counts_workers_in_window(store: Store) -> None:
    record(store, "w1")
    record(store, "w2")
    record(store, "w2")
    snap = store.health_stats("pool", window=60.0)
    assert (snap.total_crashes, snap.crashes_in_window) == (3, 3)
    assert snap.workers_with_crashes == 2


def test_health_stats_of_unknown_pool_is_empty(store: Store) -> None:
    snap = store.health_stats("nobody", window=60.0)
    assert (snap.total_crashes, snap.crashes_in_window, snap.workers_with_crashes) == (0, 0, 0)


def test_crashes_leave_the_window_but_total_stays(store: Store) -> None:
    record(store, "w1", window=SHORT)
    record(store, "w1", window=SHORT)
    time.sleep(PAST_SHORT)
    assert store.health_stats("pool", window=SHORT).crashes_in_window == 0
    snap = record(store, "w2", window=SHORT)
    assert (snap.total_crashes, snap.crashes_in_window) == (3, 1)
    assert store.health_stats("pool", window=SHORT).workers_with_crashes == 1


def test_crash_count_is_capped_at_max_entries(store: Store) -> None:
    for _ in range(15):
        snap = record(store, cap=5)
    assert (snap.total_crashes, snap.crashes_in_window) == (15, 5)
    assert store.health_stats("pool", window=60.0).crashes_in_window == 5


def test_health_worker_counts_one_worker_in_window(store: Store) -> None:
    record(store, "w1")
    record(store, "w1")
    record(store, "w2")
    crashes = store.health_worker("pool", "w1", window=60.0)
    assert crashes.count == 2
    assert crashes.last_time is not None and abs(crashes.last_time - store.now()) < 5


def test_health_worker_ignores_crashes_outside_window(store: Store) -> None:
    record(store, "w1")
    time.sleep(PAST_SHORT)
    assert store.health_worker("pool", "w1", window=SHORT).count == 0


def test_health_worker_does_not_match_worker_name_prefixes(store: Store) -> None:
    record(store, "w1|x")
    record(store, "w10")
    assert store.health_worker("pool", "w1", window=60.0).count == 0


def test_unknown_worker_has_no_crashes(store: Store) -> None:
    crashes = store.health_worker("pool", "ghost", window=60.0)
    assert (crashes.count, crashes.last_time) == (0, None)


# -- taints -----------------------------------------------------------------------


def test_taint_set_reports_new_taint_once(store: Store) -> None:
    assert store.taint_set("pool", "worker:1", duration=30.0, details={"why": "segfault"})
    assert not store.taint_set("pool", "worker:1", duration=30.0, details={"why": "again"})


def test_taint_list_returns_details_and_remaining(store: Store) -> None:
    store.taint_set("pool", "device:n1:cuda:0", duration=30.0, details={"code": 139})
    [taint] = store.taint_list("pool")
    assert taint.member == "device:n1:cuda:0"
    assert dict(taint.details) == {"code": 139}
    assert 29.0 < taint.remaining <= 30.0
    assert abs(taint.expires_at - (store.now() + taint.remaining)) < 2


def test_taint_is_active_until_it_expires(store: Store) -> None:
    store.taint_set("pool", "worker:1", duration=SHORT, details={})
    assert store.taint_active("pool", "worker:1")
    time.sleep(PAST_SHORT)
    assert not store.taint_active("pool", "worker:1")
    assert store.taint_list("pool") == []


def test_expired_taint_counts_as_new_when_set_again(store: Store) -> None:
    store.taint_set("pool", "worker:1", duration=SHORT, details={})
    time.sleep(PAST_SHORT)
    assert store.taint_set("pool", "worker:1", duration=SHORT, details={})


def test_retaint_never_shortens_a_taint(store: Store) -> None:
    store.taint_set("pool", "worker:1", duration=30.0, details={})
    store.taint_set("pool", "worker:1", duration=1.0, details={})
    assert store.taint_list("pool")[0].remaining > 29.0


def test_taint_clear_one_member(store: Store) -> None:
    store.taint_set("pool", "worker:1", duration=30.0, details={})
    store.taint_set("pool", "worker:2", duration=30.0, details={})
    assert store.taint_clear("pool", "worker:1") == 1
    assert [t.member for t in store.taint_list("pool")] == ["worker:2"]
    assert store.taint_clear("pool", "worker:1") == 0


def test_taint_clear_all_of_a_pool(store: Store) -> None:
    store.taint_set("pool", "worker:1", duration=30.0, details={})
    store.taint_set("pool", "worker:2", duration=30.0, details={})
    store.taint_set("other", "worker:3", duration=30.0, details={})
    assert store.taint_clear("pool", None) == 2
    assert store.taint_list("pool") == []
    assert store.taint_active("other", "worker:3")


def test_taints_list_soonest_expiry_first(store: Store) -> None:
    store.taint_set("pool", "worker:late", duration=30.0, details={})
    store.taint_set("pool", "worker:soon", duration=10.0, details={})
    assert [t.member for t in store.taint_list("pool")] == ["worker:soon", "worker:late"]


# -- crash ledger -------------------------------------------------------------------


def start(store: Store, worker: str = "w1", lease: float = 30.0) -> Any:
    return store.ledger_start("task-1", worker_id=worker, lease=lease, ttl=60.0)


def test_unknown_task_has_no_ledger(store: Store) -> None:
    assert store.ledger_get("task-1") is None


def test_ledger_start_returns_entry_before_it(store: Store) -> None:
    before = start(store)
    assert (before.starts, before.finishes, before.crashes, before.running_on) == (0, 0, 0, None)
    entry = store.ledger_get("task-1")
    assert entry is not None
    assert (entry.starts, entry.running_on) == (1, "w1")


def test_ledger_finish_ends_the_execution(store: Store) -> None:
    start(store)
    store.ledger_finish("task-1")
    entry = store.ledger_get("task-1")
    assert entry is not None
    assert (entry.starts, entry.finishes, entry.crashes, entry.running_on) == (1, 1, 0, None)


def test_ledger_finish_without_entry_writes_nothing(store: Store) -> None:
    store.ledger_finish("task-1")
    assert store.ledger_get("task-1") is None


def test_ledger_crash_counts_and_returns_entry_after(store: Store) -> None:
    start(store)
    after = store.ledger_crash("task-1", ttl=60.0)
    assert (after.starts, after.finishes, after.crashes, after.running_on) == (1, 0, 1, None)


def test_ledger_crash_of_a_named_holder_counts_only_that_holders_run(store: Store) -> None:
    start(store, "w1")
    assert store.ledger_crash("task-1", ttl=60.0, holder="w2").crashes == 0
    assert store.ledger_crash("task-1", ttl=60.0, holder="w1").crashes == 1
    assert store.ledger_crash("task-1", ttl=60.0, holder="w1").crashes == 1
    entry = store.ledger_get("task-1")
    assert entry is not None and (entry.crashes, entry.running_on) == (1, None)


def test_a_refused_start_and_a_read_say_how_long_ago_the_holder_renewed(store: Store) -> None:
    store.ledger_hold({"task-1": "w1"}, lease=60.0, ttl=60.0)
    time.sleep(0.3)
    refused = start(store, "w2")
    read = store.ledger_get("task-1")
    assert read is not None and read.running_on == "w1"
    for entry in (refused, read):
        assert entry.held_for is not None and 0.25 <= entry.held_for < 5.0
    store.ledger_hold({"task-1": "w1"}, lease=60.0, ttl=60.0)
    renewed = store.ledger_get("task-1")
    assert renewed is not None and renewed.held_for is not None and renewed.held_for < 0.25
    store.ledger_finish("task-1")
    ended = store.ledger_get("task-1")
    assert ended is not None and ended.held_for is None


def test_start_after_expired_lease_counts_earlier_start_as_crash(store: Store) -> None:
    start(store, "w1", lease=SHORT)
    time.sleep(PAST_SHORT)
    before = start(store, "w2")
    assert (before.starts, before.crashes, before.running_on) == (1, 1, None)
    entry = store.ledger_get("task-1")
    assert entry is not None
    assert (entry.starts, entry.crashes, entry.running_on) == (2, 1, "w2")


def test_start_during_another_workers_live_lease_is_refused(store: Store) -> None:
    start(store, "w1")
    refused = start(store, "w2")
    assert refused.running_on == "w1"
    entry = store.ledger_get("task-1")
    assert entry is not None
    assert (entry.starts, entry.crashes, entry.running_on) == (1, 0, "w1")


def test_running_on_is_reported_only_while_leased(store: Store) -> None:
    start(store, "w1", lease=SHORT)
    time.sleep(PAST_SHORT)
    entry = store.ledger_get("task-1")
    assert entry is not None and entry.running_on is None


def test_ledger_hold_extends_own_lease_only(store: Store) -> None:
    start(store, "w1", lease=SHORT)
    assert store.ledger_hold({"task-1": "w1"}, lease=30.0, ttl=60.0) == [True]
    assert store.ledger_hold({"task-1": "w2"}, lease=30.0, ttl=60.0) == [False]
    time.sleep(PAST_SHORT)
    assert start(store, "w2").running_on == "w1"


def test_ledger_hold_leases_a_first_delivery_until_let_go(store: Store) -> None:
    assert store.ledger_hold({"task-1": "w1", "task-2": "w1"}, lease=30.0, ttl=60.0) == [
        True,
        True,
    ]
    assert start(store, "w2").running_on == "w1"
    assert store.ledger_hold({"task-1": "w1"}, lease=0.0, ttl=60.0) == [True]
    before = start(store, "w2")
    assert before.running_on is None and before.crashes == 0


def test_ledger_start_raises_the_count_to_what_the_message_proves(store: Store) -> None:
    before = store.ledger_start("task-1", worker_id="w1", lease=SHORT, ttl=60.0, came_back=True)
    assert before.crashes == 1
    time.sleep(PAST_SHORT)
    # the lapsed lease is that same lost delivery's successor: counted once more, not twice
    again = store.ledger_start("task-1", worker_id="w2", lease=30.0, ttl=60.0, came_back=True)
    assert again.crashes == 2
    assert store.ledger_start("task-2", worker_id="w1", lease=30.0, ttl=60.0, known=3).crashes == 3


def test_ledger_start_does_not_count_a_delivery_given_back_unstarted(store: Store) -> None:
    store.ledger_release("task-1", ttl=60.0)
    before = store.ledger_start("task-1", worker_id="w1", lease=30.0, ttl=60.0, came_back=True)
    assert (before.crashes, before.released) == (0, True)


def test_deaths_of_nodes_that_gave_a_message_back_add_up_and_are_no_crashes(store: Store) -> None:
    assert store.ledger_release("task-1", ttl=60.0) == 0
    assert store.ledger_release("task-1", ttl=60.0, died=True) == 1
    assert store.ledger_release("task-1", ttl=60.0, died=True) == 2
    assert store.ledger_release("task-1", ttl=60.0) == 2
    before = store.ledger_start("task-1", worker_id="w1", lease=30.0, ttl=60.0, came_back=True)
    assert (before.crashes, before.released) == (0, True)


def test_ledger_entries_expire(store: Store) -> None:
    store.ledger_start("task-1", worker_id="w1", lease=0.1, ttl=SHORT)
    time.sleep(PAST_SHORT)
    assert store.ledger_get("task-1") is None


def test_release_marks_the_next_delivery_and_is_consumed_by_its_start(store: Store) -> None:
    store.ledger_release("task-1", ttl=60.0)
    pending = store.ledger_get("task-1")
    assert pending is not None and pending.released and pending.starts == 0
    assert start(store).released
    entry = store.ledger_get("task-1")
    assert entry is not None and not entry.released
    store.ledger_finish("task-1")
    assert not start(store).released, "a mark speaks for one delivery only"


def test_crash_of_a_released_delivery_reports_it_once(store: Store) -> None:
    store.ledger_release("task-1", ttl=60.0)
    start(store)
    first = store.ledger_crash("task-1", ttl=60.0)
    assert (first.crashes, first.released) == (1, True)
    start(store)
    second = store.ledger_crash("task-1", ttl=60.0)
    assert (second.crashes, second.released) == (2, False)


def test_crash_before_the_released_delivery_started_reports_it(store: Store) -> None:
    store.ledger_release("task-1", ttl=60.0)
    after = store.ledger_crash("task-1", ttl=60.0)
    assert (after.starts, after.crashes, after.released) == (0, 1, True)
    assert not store.ledger_crash("task-1", ttl=60.0).released


def test_finished_run_clears_the_release(store: Store) -> None:
    store.ledger_release("task-1", ttl=60.0)
    start(store)
    store.ledger_finish("task-1")
    assert not store.ledger_crash("task-1", ttl=60.0).released


def test_release_never_shortens_the_entry(store: Store) -> None:
    store.ledger_start("task-1", worker_id="w1", lease=0.1, ttl=60.0)
    store.ledger_release("task-1", ttl=SHORT)
    time.sleep(PAST_SHORT)
    entry = store.ledger_get("task-1")
    assert entry is not None and entry.released


def test_release_alone_expires(store: Store) -> None:
    store.ledger_release("task-1", ttl=SHORT)
    time.sleep(PAST_SHORT)
    assert store.ledger_get("task-1") is None


# -- node registry ------------------------------------------------------------------


def test_registered_node_is_listed_with_heartbeat_age(store: Store) -> None:
    store.node_register("gpu0@host", {"queues": ["snakepit.cuda"]}, ttl=30.0)
    [node] = store.node_list()
    assert node["node"] == "gpu0@host"
    assert node["queues"] == ["snakepit.cuda"]
    assert 0.0 <= node["heartbeat_age"] < 5


def test_node_vanishes_after_ttl(store: Store) -> None:
    store.node_register("n1", {}, ttl=SHORT)
    store.node_register("n2", {}, ttl=30.0)
    time.sleep(PAST_SHORT)
    assert [n["node"] for n in store.node_list()] == ["n2"]


def test_node_heartbeat_refreshes_record(store: Store) -> None:
    store.node_register("n1", {"v": 1}, ttl=30.0)
    store.node_register("n1", {"v": 2}, ttl=30.0)
    assert [(n["node"], n["v"]) for n in store.node_list()] == [("n1", 2)]


def test_node_remove_drops_record(store: Store) -> None:
    store.node_register("n1", {}, ttl=30.0)
    store.node_remove("n1")
    assert store.node_list() == []


# -- inspection -----------------------------------------------------------------------


def test_breaker_names_lists_breakers_with_state(store: Any) -> None:
    fail(store, "payments")
    open_breaker(store, "search")
    assert store.breaker_names() == ["payments", "search"]


def test_pool_names_lists_pools_with_crashes_or_taints(store: Any) -> None:
    store.health_record("gpu", "w1", window=60.0, max_entries=10)
    store.taint_set("cpu", "worker:1", duration=30.0, details={})
    assert store.pool_names() == ["cpu", "gpu"]
