"""Prometheus metrics: what the package's signals and the shared store look like when scraped.

Every test scrapes a real HTTP server on a free port and parses the text
with prometheus-client's own parser. Process metrics are global to the test
process, so each test uses label values of its own and compares before/after.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from snakepit_celery import metrics, signals
from snakepit_celery.barrier import CrashBarrier
from snakepit_celery.breaker import CircuitBreaker
from snakepit_celery.fleet import fleet_status
from snakepit_celery.health import HealthMonitor
from snakepit_celery.policy.barrier_config import CrashBarrierConfig
from snakepit_celery.policy.crash import Classification
from snakepit_celery.quarantine import REASON_MALFORMED, Quarantine, QuarantinedMessage
from snakepit_celery.store import Store, report_store_error, store_from_url

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def enabled() -> Iterator[None]:
    metrics.enable_metrics()
    yield
    metrics.disable_metrics()


@pytest.fixture(scope="module")
def shared_server() -> Iterator[metrics.MetricsServer]:
    running = metrics.start_metrics_server(0, "127.0.0.1")
    metrics.disable_metrics()
    yield running
    running.close()


@pytest.fixture
def server(shared_server: metrics.MetricsServer, enabled: None) -> metrics.MetricsServer:
    """A server on a free port, with metrics enabled for this test."""
    return shared_server


@pytest.fixture
def store(redis_store: Store) -> Store:
    return redis_store


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics and return {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- process metrics, fed by signals ----------------------------------------------------


def test_breaker_transitions_are_counted_and_the_last_state_kept(
    server: metrics.MetricsServer,
) -> None:
    name = unique("payments")
    signals.breaker_opened.send(sender=None, failure_count=5, pool=name, reason="failures")
    signals.breaker_half_open.send(sender=None, pool=name)
    samples = scrape(server.port)
    assert value(samples, "snakepit_breaker_transitions_total", breaker=name, state="open") == 1
    assert (
        value(samples, "snakepit_breaker_transitions_total", breaker=name, state="half_open") == 1
    )
    assert value(samples, "snakepit_breaker_state", breaker=name) == 1.0
    signals.breaker_opened.send(sender=None, failure_count=1, pool=name, reason="failures")
    samples = scrape(server.port)
    assert value(samples, "snakepit_breaker_transitions_total", breaker=name, state="open") == 2
    assert value(samples, "snakepit_breaker_state", breaker=name) == 2.0


def test_a_lost_event_is_counted(server: metrics.MetricsServer) -> None:
    from snakepit_celery.celery.events import EventBridge

    def broken(*_: Any) -> None:
        raise ConnectionResetError(104, "Connection reset by peer")

    before = value(scrape(server.port), "snakepit_events_lost_total", type="snakepit-worker-crash")
    bridge = EventBridge(Celery("lost", set_as_current=False), always=True, publish=broken)
    bridge(sender=None, signal=signals.worker_crash, pool=unique("lost"), worker_id="w")
    after = value(scrape(server.port), "snakepit_events_lost_total", type="snakepit-worker-crash")
    assert after == before + 1


def test_the_state_gauge_follows_a_reset(server: metrics.MetricsServer, store: Store) -> None:
    name = unique("reset-gauge")
    breaker = CircuitBreaker(name, failure_threshold=1, store=store)
    breaker.record_failure()
    assert value(scrape(server.port), "snakepit_breaker_state", breaker=name) == 2.0
    CircuitBreaker(name, store=store).reset()  # another process's breaker object
    samples = scrape(server.port)
    assert value(samples, "snakepit_breaker_state", breaker=name) == 0.0
    assert value(samples, "snakepit_breaker_transitions_total", breaker=name, state="closed") == 1


def test_a_real_breaker_tripping_on_redis_is_counted_once(
    server: metrics.MetricsServer, store: Store
) -> None:
    name = unique("model-server")
    breaker = CircuitBreaker(name, failure_threshold=2, store=store)
    for _ in range(3):
        breaker.record_failure()
    breaker.reset()
    samples = scrape(server.port)
    assert value(samples, "snakepit_breaker_transitions_total", breaker=name, state="open") == 1


def test_retries_are_counted_by_outcome(server: metrics.MetricsServer) -> None:
    before = scrape(server.port)
    signals.retry_attempt.send(sender=None, attempt=1, delay=0.1)
    signals.retry_attempt.send(sender=None, attempt=2, delay=0.2)
    signals.retry_success.send(sender=None, attempts=3, total_duration=0.5)
    signals.retry_exhausted.send(sender=None, attempts=3, total_duration=1.0, last_error=None)
    after = scrape(server.port)
    for outcome, expected in (("attempt", 2), ("success", 1), ("exhausted", 1)):
        delta = value(after, "snakepit_retries_total", outcome=outcome) - value(
            before, "snakepit_retries_total", outcome=outcome
        )
        assert delta == expected, outcome


def test_crashes_are_counted_by_pool_and_classification(server: metrics.MetricsServer) -> None:
    pool = unique("gpu")
    signals.worker_crash.send(sender=None, pool=pool, worker_id="w1", reason=Classification.OOM)
    signals.worker_crash.send(sender=None, pool=pool, worker_id="w1", reason="segfault")
    signals.worker_crash.send(sender=None, pool=pool, worker_id="w2", reason="cosmic ray")
    samples = scrape(server.port)
    assert value(samples, "snakepit_crashes_total", pool=pool, classification="oom") == 1
    assert value(samples, "snakepit_crashes_total", pool=pool, classification="segfault") == 1
    assert value(samples, "snakepit_crashes_total", pool=pool, classification="unknown") == 1


def test_a_crash_recorded_by_the_health_monitor_is_counted(
    server: metrics.MetricsServer, store: Store
) -> None:
    pool = unique("pool")
    HealthMonitor(pool, store=store).record_crash("w1", reason="abort")
    samples = scrape(server.port)
    assert value(samples, "snakepit_crashes_total", pool=pool, classification="abort") == 1


def test_taints_are_counted_by_kind(server: metrics.MetricsServer, store: Store) -> None:
    pool = unique("pool")
    barrier = CrashBarrier({"taint_duration": 30.0}, pool=pool, store=store)
    barrier.taint_worker("cpu@a", barrier.crash_info(139))
    barrier.taint_device("gpu0@b", "cuda:0", barrier.crash_info(139))
    samples = scrape(server.port)
    assert value(samples, "snakepit_taints_total", pool=pool, kind="worker") == 1
    assert value(samples, "snakepit_taints_total", pool=pool, kind="device") == 1


def test_quarantined_messages_are_counted_by_reason(
    server: metrics.MetricsServer, store: Store
) -> None:
    before = value(scrape(server.port), "snakepit_quarantined_total", reason=REASON_MALFORMED)
    config = CrashBarrierConfig(enabled=True)
    message = QuarantinedMessage.of(b"{}", headers={"task": "proj.t", "id": unique("id")})
    entry_id = unique("entry")
    try:
        assert Quarantine(store, config).add(
            entry_id, message, reason=REASON_MALFORMED, node="n@h", error="bad body"
        )
        after = value(scrape(server.port), "snakepit_quarantined_total", reason=REASON_MALFORMED)
        assert after - before == 1
    finally:
        Quarantine(store, config).drop(entry_id)


def test_store_errors_are_counted(server: metrics.MetricsServer) -> None:
    before = value(scrape(server.port), "snakepit_store_errors_total")
    report_store_error(ConnectionError("redis down"))
    report_store_error(ConnectionError("redis down"))
    assert value(scrape(server.port), "snakepit_store_errors_total") - before == 2


def test_hot_path_latency_is_a_histogram_by_stage(server: metrics.MetricsServer) -> None:
    stage = unique("before")
    metrics.observe_hot_path(stage, 0.0002)
    metrics.observe_hot_path(stage, 0.003)
    samples = scrape(server.port)
    assert value(samples, "snakepit_hot_path_seconds_count", stage=stage) == 2
    assert value(samples, "snakepit_hot_path_seconds_bucket", stage=stage, le="0.00025") == 1
    assert value(samples, "snakepit_hot_path_seconds_sum", stage=stage) == pytest.approx(0.0032)


def test_nothing_is_counted_while_metrics_are_disabled(server: metrics.MetricsServer) -> None:
    name, stage = unique("off"), unique("off")
    metrics.disable_metrics()
    assert not metrics.metrics_enabled()
    signals.breaker_opened.send(sender=None, failure_count=5, pool=name, reason="failures")
    metrics.observe_hot_path(stage, 0.001)
    samples = scrape(server.port)
    assert value(samples, "snakepit_breaker_transitions_total", breaker=name, state="open") == 0
    assert value(samples, "snakepit_hot_path_seconds_count", stage=stage) == 0


def test_enabling_twice_connects_the_receivers_once(server: metrics.MetricsServer) -> None:
    metrics.enable_metrics()
    name = unique("twice")
    signals.breaker_closed.send(sender=None, pool=name)
    samples = scrape(server.port)
    assert value(samples, "snakepit_breaker_transitions_total", breaker=name, state="closed") == 1


# -- fleet metrics, read from the store --------------------------------------------------


def test_fleet_collector_serves_the_stores_state(store: Store) -> None:
    breaker = CircuitBreaker("search", failure_threshold=1, store=store)
    breaker.record_failure()
    HealthMonitor("gpu", max_crashes=2, store=store).record_crash("w1", reason="oom")
    barrier = CrashBarrier({"taint_duration": 30.0}, pool="gpu", store=store)
    barrier.taint_worker("gpu0@b", barrier.crash_info(137))
    store.node_register("gpu0@b", {"identity": {}, "devices": [], "queues": []}, ttl=30.0)

    def status() -> Any:
        return fleet_status(
            store,
            breakers=[CircuitBreaker("search", failure_threshold=1, store=store)],
            monitors=[HealthMonitor("gpu", max_crashes=2, store=store)],
            barriers=[barrier],
        )

    registry = metrics.build_registry(metrics.FleetCollector(status))
    running = metrics.start_metrics_server(0, "127.0.0.1", registry=registry)
    try:
        samples = scrape(running.port)
    finally:
        running.close()
        metrics.disable_metrics()
    assert value(samples, "snakepit_fleet_up") == 1
    assert value(samples, "snakepit_fleet_breaker_state", breaker="search", state="open") == 1
    assert value(samples, "snakepit_fleet_breaker_state", breaker="search", state="closed") == 0
    assert value(samples, "snakepit_fleet_breaker_failures", breaker="search") == 1
    assert value(samples, "snakepit_fleet_crashes_in_window", pool="gpu") == 1
    assert value(samples, "snakepit_fleet_pool_healthy", pool="gpu") == 1
    assert value(samples, "snakepit_fleet_taints", pool="gpu", kind="worker") == 1
    assert value(samples, "snakepit_fleet_nodes") == 1
    assert ("snakepit_fleet_node_heartbeat_age_seconds", (("node", "gpu0@b"),)) in samples


def test_fleet_collector_reports_down_instead_of_failing_the_scrape(key_prefix: str) -> None:
    dead = store_from_url(f"redis://127.0.0.1:{free_port()}/0", key_prefix=key_prefix)

    def status() -> Any:
        return fleet_status(dead)

    text = metrics.exposition(metrics.build_registry(metrics.FleetCollector(status)))
    assert "snakepit_fleet_up 0.0" in text
    assert "snakepit_fleet_breaker_state" not in text


# -- the worker's server ---------------------------------------------------------------


def test_install_metrics_serves_on_the_configured_port() -> None:
    app = Celery("metrics_test", set_as_current=False)
    app.conf.snakepit_metrics_port = free_port()
    running = metrics.install_metrics(app)
    try:
        assert running is not None
        assert running.port == app.conf.snakepit_metrics_port
        name = unique("installed")
        signals.breaker_opened.send(sender=None, failure_count=1, pool=name, reason="failures")
        samples = scrape(running.port)
        assert value(samples, "snakepit_breaker_state", breaker=name) == 2.0
    finally:
        if running is not None:
            running.close()
        metrics.disable_metrics()


def test_install_metrics_without_a_port_serves_nothing_but_counts() -> None:
    app = Celery("metrics_test", set_as_current=False)
    try:
        assert metrics.install_metrics(app) is None
        assert metrics.metrics_enabled()
    finally:
        metrics.disable_metrics()


def test_install_metrics_on_a_taken_port_keeps_the_worker_running() -> None:
    app = Celery("metrics_test", set_as_current=False)
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        app.conf.snakepit_metrics_port = taken.getsockname()[1]
        try:
            assert metrics.install_metrics(app) is None
        finally:
            metrics.disable_metrics()


def test_prefork_children_are_summed_in_multiprocess_mode(tmp_path: Path) -> None:
    """Under PROMETHEUS_MULTIPROC_DIR, counts made in forked children reach the parent's scrape."""
    script = textwrap.dedent(
        """
        import multiprocessing
        from snakepit_celery import metrics, signals

        metrics.enable_metrics()

        def child():
            signals.worker_crash.send(sender=None, pool="mp", worker_id="w", reason="segfault")

        ctx = multiprocessing.get_context("fork")
        procs = [ctx.Process(target=child) for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        print(metrics.exposition(metrics.build_registry()))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert 'snakepit_crashes_total{classification="segfault",pool="mp"} 3.0' in proc.stdout


def test_a_worker_serving_metrics_sums_its_prefork_children_by_default() -> None:
    """install_metrics() with a port turns on multiprocess mode before any child forks."""
    port = free_port()
    script = textwrap.dedent(
        f"""
        import multiprocessing, urllib.request
        from celery import Celery
        from snakepit_celery import metrics, signals

        app = Celery("w", set_as_current=False)
        app.conf.snakepit_metrics_port = {port}
        server = metrics.install_metrics(app)

        def child():
            signals.retry_exhausted.send(
                sender=None, attempts=3, total_duration=1.0, last_error=None
            )

        ctx = multiprocessing.get_context("fork")
        procs = [ctx.Process(target=child) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        with urllib.request.urlopen("http://127.0.0.1:{port}/metrics", timeout=10) as r:
            print(r.read().decode())
        server.close()
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert 'snakepit_retries_total{outcome="exhausted"} 2.0' in proc.stdout
