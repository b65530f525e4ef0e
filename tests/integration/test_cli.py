"""``celery -A proj snakepit ...``: the fleet as the command line shows and changes it.

State is made with the real objects (breakers, health monitors, crash
barriers, the node registry) on the real Redis under a key prefix unique to
each test; commands run through click with a real Celery app
(``test_cli_host.py``: hardware, lock files, metrics, ping, the worker and
the installed ``celery`` executable).
"""

from __future__ import annotations

import socket

import pytest
from celery import Celery

from snakepit_celery.breaker import CircuitBreaker
from snakepit_celery.celery.app_context import app_group
from snakepit_celery.store import Store, set_default_store, set_fail_open
from tests.support.cli import (
    app,
    barrier,
    crash_pool,
    make_app,
    open_breaker,
    register_node,
    run,
    run_json,
    store,
    taint_worker_and_device,
)

#: The fixtures this module takes from tests.support.cli (named here so linters see them used).
__all__ = ["app", "store"]


# -- status --------------------------------------------------------------------------


def test_status_of_a_quiet_fleet_is_healthy_and_exits_0(app: Celery) -> None:
    code, data = run_json(app, "status")
    assert code == 0
    assert data["healthy"] is True
    assert data["nodes"] == []
    assert data["taints"] == []


def test_status_json_lists_nodes_with_identity_devices_and_heartbeat_age(
    app: Celery, store: Store
) -> None:
    register_node(store, "gpu0@host-b", accelerator="cuda", gpus=1, group=app_group(app))
    register_node(store, "cpu@host-a", group=app_group(app))
    _, data = run_json(app, "status")
    nodes = {n["node"]: n for n in data["nodes"]}
    assert set(nodes) == {"gpu0@host-b", "cpu@host-a"}
    gpu = nodes["gpu0@host-b"]
    assert gpu["identity"]["accelerator"] == "cuda"
    assert gpu["devices"][0]["uuid"] == "GPU-0"
    assert 0.0 <= gpu["heartbeat_age"] < 60.0


def test_status_finds_breakers_named_by_tasks_with_their_counts(app: Celery, store: Store) -> None:
    CircuitBreaker("payments", failure_threshold=2, store=store).record_failure()
    _, data = run_json(app, "status")
    breakers = {b["name"]: b for b in data["breakers"]}
    assert set(breakers) >= {"payments", "cli_app.infer"}
    assert breakers["payments"]["state"] == "closed"
    assert breakers["payments"]["failure_count"] == 1
    assert breakers["payments"]["failure_threshold"] == 2


def test_status_exits_1_when_a_breaker_is_open(app: Celery, store: Store) -> None:
    open_breaker(store, "payments")
    code, data = run_json(app, "status")
    assert code == 1
    assert data["healthy"] is False
    assert {b["name"]: b["state"] for b in data["breakers"]}["payments"] == "open"


def test_status_exits_1_when_a_pool_has_too_many_crashes(app: Celery, store: Store) -> None:
    crash_pool(store, "gpu", 10)
    code, data = run_json(app, "status")
    assert code == 1
    health = {h["pool"]: h for h in data["health"]}
    assert health["gpu"]["is_healthy"] is False
    assert health["gpu"]["crashes_in_window"] == 10
    assert health["default"]["is_healthy"] is True


def test_status_shows_active_taints_with_time_left(app: Celery, store: Store) -> None:
    taint_worker_and_device(store)
    _, data = run_json(app, "status")
    by_kind = {t["kind"]: t for t in data["taints"]}
    assert by_kind["worker"]["worker_id"] == "cpu@host-a"
    assert by_kind["device"]["node"] == "gpu0@host-b"
    assert by_kind["device"]["device"] == "cuda:0"
    assert 0 < by_kind["worker"]["remaining"] <= 120.0
    assert by_kind["worker"]["classification"] == "segfault"


def test_status_table_has_a_section_per_part_of_the_fleet(app: Celery, store: Store) -> None:
    register_node(store, "gpu0@host-b", accelerator="cuda", gpus=1, group=app_group(app))
    open_breaker(store, "payments")
    taint_worker_and_device(store)
    result = run(app, "status")
    assert result.exit_code == 1
    out = result.stdout
    for heading in ("Nodes (1)", "Breakers", "Health", "Taints (2)"):
        assert heading in out
    assert "gpu0@host-b" in out
    assert "cuda:0 (NVIDIA A100)" in out
    assert "payments" in out and "open" in out
    assert "fleet: UNHEALTHY (breaker payments is open)" in out


def test_status_extra_breaker_option_shows_a_breaker_no_task_names(
    app: Celery, store: Store
) -> None:
    open_breaker(store, "search")
    _, data = run_json(app, "status", "--breaker", "search")
    assert {b["name"]: b["state"] for b in data["breakers"]}["search"] == "open"


def test_status_exits_1_with_a_message_when_the_store_is_unreachable(key_prefix: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    try:
        dead = make_app(f"redis://127.0.0.1:{port}/0", key_prefix)
        result = run(dead, "status")
    finally:
        set_default_store(None)
        set_fail_open(True)
    assert result.exit_code == 1
    assert "error:" in result.stderr


# -- breakers and reset ---------------------------------------------------------------


def test_breakers_json_lists_every_known_breaker(app: Celery, store: Store) -> None:
    open_breaker(store, "payments")
    code, data = run_json(app, "breakers")
    assert code == 1
    assert [b["name"] for b in data] == sorted(b["name"] for b in data)
    assert {b["name"]: b["state"] for b in data}["payments"] == "open"


def test_breakers_table_exits_0_when_all_are_closed(app: Celery) -> None:
    result = run(app, "breakers")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0].split() == [
        "BREAKER",
        "STATE",
        "FAILURES",
        "SUCCESSES",
        "PROBES",
    ]
    assert "payments" in result.stdout


def test_reset_closes_an_open_breaker_for_everyone(app: Celery, store: Store) -> None:
    open_breaker(store, "payments")
    code, data = run_json(app, "reset", "payments")
    assert code == 0
    assert data == {
        "name": "payments",
        "state": "closed",
        "failure_count": 0,
        "success_count": 0,
        "failure_threshold": 2,
        "half_open_calls": 0,
        "config_conflict": False,
    }
    assert CircuitBreaker("payments", store=store).state == "closed"


def test_reset_table_says_what_it_did(app: Celery, store: Store) -> None:
    open_breaker(store, "payments")
    result = run(app, "reset", "payments")
    assert result.exit_code == 0
    assert result.stdout.strip() == "breaker payments reset: closed"


def test_reset_without_a_name_is_a_usage_error(app: Celery) -> None:
    assert run(app, "reset").exit_code == 2


def test_reset_of_an_unknown_breaker_exits_1_naming_close_names(app: Celery) -> None:
    result = run(app, "reset", "paymnts")
    assert result.exit_code == 1
    assert "unknown breaker 'paymnts'" in result.stderr
    assert "did you mean: payments?" in result.stderr
    assert result.stdout == ""
    assert "paymnts" not in {b["name"] for b in run_json(app, "breakers")[1]}


def test_reset_of_a_name_close_to_nothing_lists_the_known_breakers(app: Celery) -> None:
    result = run(app, "reset", "zzz")
    assert result.exit_code == 1
    assert "known breakers: cli_app.infer, payments" in result.stderr


# -- taints and untaint ---------------------------------------------------------------


def test_taints_json_lists_worker_and_device_taints(app: Celery, store: Store) -> None:
    taint_worker_and_device(store)
    code, data = run_json(app, "taints")
    assert code == 0
    assert sorted(t["kind"] for t in data) == ["device", "worker"]
    assert all(t["pool"] == "default" for t in data)


#: The fixtures this module takes from tests.support.cli (named here so linters see them used).
__all__ = ["app", "store"]


def test_taints_table_shows_target_and_time_left(app: Celery, store: Store) -> None:
    taint_worker_and_device(store)
    lines = run(app, "taints").stdout.splitlines()
    assert lines[0].split() == ["POOL", "KIND", "TARGET", "LEFT", "CLASSIFICATION"]
    assert any("cpu@host-a" in line and "segfault" in line for line in lines)
    assert any("gpu0@host-b:cuda:0" in line for line in lines)


def test_taints_of_a_task_pool_are_listed(app: Celery, store: Store) -> None:
    crash = barrier(store, "gpu")
    crash.taint_worker("gpu1@host-c", crash.crash_info(137))
    _, data = run_json(app, "taints")
    assert [(t["pool"], t["worker_id"]) for t in data] == [("gpu", "gpu1@host-c")]


def test_untaint_worker_lifts_only_that_worker(app: Celery, store: Store) -> None:
    taint_worker_and_device(store)
    code, data = run_json(app, "untaint", "--worker", "cpu@host-a")
    assert (code, data) == (0, {"cleared": 1})
    assert not barrier(store).worker_tainted("cpu@host-a")
    assert barrier(store).device_tainted("gpu0@host-b", "cuda:0")


def test_untaint_node_and_device_lifts_that_device(app: Celery, store: Store) -> None:
    taint_worker_and_device(store)
    result = run(app, "untaint", "--node", "gpu0@host-b", "--device", "cuda:0")
    assert result.exit_code == 0
    assert result.stdout.strip() == "cleared 1 taint(s)"
    assert not barrier(store).device_tainted("gpu0@host-b", "cuda:0")
    assert barrier(store).worker_tainted("cpu@host-a")


def test_untaint_all_lifts_every_taint_in_every_pool(app: Celery, store: Store) -> None:
    taint_worker_and_device(store)
    crash = barrier(store, "gpu")
    crash.taint_worker("gpu1@host-c", crash.crash_info(137))
    code, data = run_json(app, "untaint", "--all")
    assert (code, data) == (0, {"cleared": 3})
    assert run_json(app, "taints")[1] == []


def test_untaint_of_an_untainted_worker_exits_1_naming_close_names(
    app: Celery, store: Store
) -> None:
    taint_worker_and_device(store)
    result = run(app, "untaint", "--worker", "cpu@host-b")
    assert result.exit_code == 1
    assert result.stdout.strip() == "cleared 0 taint(s)"
    assert "no taint of worker 'cpu@host-b'; did you mean: cpu@host-a?" in result.stderr
    assert barrier(store).worker_tainted("cpu@host-a")


def test_untaint_of_an_untainted_device_exits_1_naming_close_names(
    app: Celery, store: Store
) -> None:
    taint_worker_and_device(store)
    code, data = run_json(app, "untaint", "--node", "gpu0@host-b", "--device", "cuda:1")
    assert (code, data) == (1, {"cleared": 0})
    result = run(app, "untaint", "--node", "gpu1@host-b")
    assert result.exit_code == 1
    assert "no device taint on node 'gpu1@host-b'; did you mean: gpu0@host-b?" in result.stderr


def test_untaint_all_with_nothing_tainted_exits_1(app: Celery) -> None:
    result = run(app, "untaint", "--all")
    assert result.exit_code == 1
    assert "error: no taint to lift" in result.stderr


@pytest.mark.parametrize(
    "args",
    [[], ["--worker", "w", "--all"], ["--device", "cuda:0"], ["--worker", "w", "--node", "n"]],
    ids=["nothing", "worker-and-all", "device-without-node", "worker-and-node"],
)
def test_untaint_needs_exactly_one_target(app: Celery, args: list[str]) -> None:
    result = run(app, "untaint", *args)
    assert result.exit_code == 2
