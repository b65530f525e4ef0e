"""``celery -A proj snakepit ...``: the fleet as the command line shows and changes it.

State is made with the real objects (breakers, health monitors, crash
barriers, the node registry) on the real Redis under a key prefix unique to
each test; commands run through click with a real Celery app, and a few
through the installed ``celery`` executable to prove the entry point.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.bin.base import CLIContext
from click.testing import CliRunner, Result

from snakepit_celery import hardware
from snakepit_celery.barrier import CrashBarrier
from snakepit_celery.breaker import CircuitBreaker
from snakepit_celery.celery.cli import snakepit
from snakepit_celery.health import HealthMonitor
from snakepit_celery.policy.crash import CrashBarrierConfig
from snakepit_celery.store import Store, set_default_store, set_fail_open
from tests.cli_helpers import make_app

ROOT = Path(__file__).resolve().parent.parent
CELERY = Path(sys.executable).with_name("celery")

GPU_HOST = {
    "accelerator": "cuda",
    "platform": "linux-x86_64",
    "cpu": {
        "cores": 8,
        "threads": 16,
        "model": "Test CPU",
        "features": ["avx", "avx2"],
        "memory_total_mb": 65536,
    },
    "cuda": {
        "version": "12.4",
        "driver_version": "550.54.15",
        "cudnn_version": None,
        "devices": [
            {
                "id": i,
                "name": "NVIDIA A100-SXM4-80GB",
                "memory_total_mb": 81920,
                "memory_free_mb": 81000,
                "compute_capability": "8.0",
                "uuid": f"GPU-0000000{i}-aaaa-bbbb-cccc-dddddddddddd",
            }
            for i in range(2)
        ],
    },
    "mps": None,
    "rocm": None,
}


@pytest.fixture
def app(redis_url: str, key_prefix: str) -> Iterator[Celery]:
    """An installed app on this test's keys; install()'s process-wide defaults are undone after."""
    yield make_app(redis_url, key_prefix)
    set_default_store(None)
    set_fail_open(True)


@pytest.fixture
def store(redis_store: Store) -> Store:
    return redis_store


@pytest.fixture
def gpu_host(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "gpu-host.json"
    path.write_text(json.dumps(GPU_HOST))
    yield path
    hardware.configure(None)


def run(app: Celery, *args: str) -> Result:
    """Invoke ``celery -A app snakepit <args>`` in-process, the way Celery's group does."""
    obj = CLIContext(app=app, no_color=True, workdir=None)
    return CliRunner().invoke(snakepit, list(args), obj=obj, catch_exceptions=False)


def run_json(app: Celery, *args: str) -> tuple[int, Any]:
    result = run(app, *args, "--json")
    return result.exit_code, json.loads(result.stdout)


def register_node(store: Store, node: str, *, accelerator: str = "cpu", gpus: int = 0) -> None:
    devices = [
        {"kind": "cuda", "index": i, "name": "NVIDIA A100", "uuid": f"GPU-{i}"} for i in range(gpus)
    ]
    store.node_register(
        node,
        {
            "identity": {
                "platform": "linux-x86_64",
                "accelerator": accelerator,
                "cpu_features": ["avx2"],
                "gpu_count": gpus,
            },
            "devices": devices,
            "queues": ["snakepit.cpu", f"snakepit.node.{node}"],
        },
        ttl=60.0,
    )


def open_breaker(store: Store, name: str) -> None:
    breaker = CircuitBreaker(name, failure_threshold=2, reset_timeout=60.0, store=store)
    breaker.record_failure()
    breaker.record_failure()


def crash_pool(store: Store, pool: str, times: int) -> None:
    monitor = HealthMonitor(pool, store=store)
    for i in range(times):
        monitor.record_crash(f"worker-{i % 3}", reason="segfault")


def barrier(store: Store, pool: str = "default") -> CrashBarrier:
    return CrashBarrier(CrashBarrierConfig(taint_duration=120.0), pool=pool, store=store)


def taint_worker_and_device(store: Store) -> None:
    crash = barrier(store)
    crash.taint_worker("cpu@host-a", crash.crash_info(139))
    crash.taint_device("gpu0@host-b", "cuda:0", crash.crash_info(139))


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
    register_node(store, "gpu0@host-b", accelerator="cuda", gpus=1)
    register_node(store, "cpu@host-a")
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
    register_node(store, "gpu0@host-b", accelerator="cuda", gpus=1)
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
    assert "known: cli_app.infer, payments" in result.stderr


# -- taints and untaint ---------------------------------------------------------------


def test_taints_json_lists_worker_and_device_taints(app: Celery, store: Store) -> None:
    taint_worker_and_device(store)
    code, data = run_json(app, "taints")
    assert code == 0
    assert sorted(t["kind"] for t in data) == ["device", "worker"]
    assert all(t["pool"] == "default" for t in data)


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


# -- hardware and lock files ----------------------------------------------------------


def test_hardware_json_follows_the_apps_hardware_override(app: Celery, gpu_host: Path) -> None:
    app.conf.snakepit_hardware = str(gpu_host)
    code, data = run_json(app, "hardware")
    assert code == 0
    assert data["accelerator"] == "cuda"
    assert [d["id"] for d in data["cuda"]["devices"]] == [0, 1]


def test_hardware_table_names_the_accelerator_and_gpus(app: Celery, gpu_host: Path) -> None:
    app.conf.snakepit_hardware = str(gpu_host)
    out = run(app, "hardware").stdout
    assert "accelerator   cuda" in out
    assert "NVIDIA A100-SXM4-80GB" in out


def test_lock_generate_pins_this_hosts_identity_and_dependencies(app: Celery) -> None:
    result = run(app, "lock", "generate", "torch==2.3.1")
    assert result.exit_code == 0
    lock = json.loads(result.stdout)
    assert lock["hardware"] == hardware.identity()
    assert lock["dependencies"] == {"torch": "2.3.1"}


def test_lock_validate_accepts_a_lock_made_on_this_host(app: Celery, tmp_path: Path) -> None:
    path = tmp_path / "snakepit.lock"
    assert run(app, "lock", "generate", "--output", str(path)).exit_code == 0
    code, data = run_json(app, "lock", "validate", str(path))
    assert (code, data["ok"], data["reason"]) == (0, True, None)


def test_lock_validate_exits_1_and_says_why_on_other_hardware(
    app: Celery, tmp_path: Path, gpu_host: Path
) -> None:
    hardware.configure(gpu_host)
    path = tmp_path / "gpu.lock"
    path.write_text(run(app, "lock", "generate").stdout)
    hardware.configure(None)
    if hardware.identity()["accelerator"] == "cuda":
        pytest.skip("this host has CUDA GPUs: the GPU lock may match")
    code, data = run_json(app, "lock", "validate", str(path))
    assert (code, data["ok"], data["reason"]) == (1, False, "accelerator_mismatch")
    result = run(app, "lock", "validate", str(path))
    assert result.exit_code == 1
    assert "accelerator_mismatch" in result.stdout


def test_lock_validate_of_a_malformed_file_is_a_usage_error(app: Celery, tmp_path: Path) -> None:
    path = tmp_path / "broken.lock"
    path.write_text("{not json")
    assert run(app, "lock", "validate", str(path)).exit_code == 2


# -- metrics and ping ---------------------------------------------------------------


def test_metrics_once_prints_fleet_gauges_from_the_store(app: Celery, store: Store) -> None:
    open_breaker(store, "payments")
    register_node(store, "cpu@host-a")
    result = run(app, "metrics", "--once")
    assert result.exit_code == 0
    out = result.stdout
    assert 'snakepit_fleet_breaker_state{breaker="payments",state="open"} 1.0' in out
    assert 'snakepit_fleet_breaker_state{breaker="payments",state="closed"} 0.0' in out
    assert "snakepit_fleet_nodes 1.0" in out
    assert "snakepit_fleet_up 1.0" in out


def test_metrics_serves_fleet_gauges_over_http_until_sigterm(
    redis_url: str, key_prefix: str, store: Store
) -> None:
    open_breaker(store, "payments")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "SNAKEPIT_STORE_URL": redis_url,
        "SNAKEPIT_KEY_PREFIX": key_prefix,
        "PYTHONPATH": str(ROOT),
    }
    argv = [str(CELERY), "-A", "tests.apps.cli_app", "snakepit", "metrics"]
    server = subprocess.Popen(
        [*argv, "--port", str(port), "--address", "127.0.0.1"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        text = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and server.poll() is None and not text:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    text = r.read().decode()
            except OSError:
                time.sleep(0.2)
        assert 'snakepit_fleet_breaker_state{breaker="payments",state="open"} 1.0' in text
    finally:
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=30)
    assert server.returncode == 0, stderr[-2000:]


def test_ping_exits_0_when_this_host_has_a_live_node(app: Celery, store: Store) -> None:
    register_node(store, f"cpu@{socket.gethostname()}")
    code, data = run_json(app, "ping")
    assert code == 0
    assert [n["node"] for n in data["nodes"]] == [f"cpu@{socket.gethostname()}"]


def test_ping_exits_1_when_no_node_of_the_host_is_alive(app: Celery, store: Store) -> None:
    register_node(store, "cpu@elsewhere")
    assert run(app, "ping").exit_code == 1


def test_unknown_command_is_a_usage_error(app: Celery) -> None:
    assert run(app, "frobnicate").exit_code == 2


# -- through the installed `celery` executable ----------------------------------------


def celery_cli(redis_url: str, key_prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "SNAKEPIT_STORE_URL": redis_url,
        "SNAKEPIT_KEY_PREFIX": key_prefix,
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.run(
        [str(CELERY), "-A", "tests.apps.cli_app", "snakepit", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_celery_executable_has_the_snakepit_subcommand(redis_url: str, key_prefix: str) -> None:
    proc = celery_cli(redis_url, key_prefix, "--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("status", "breakers", "taints", "untaint", "reset", "lock", "metrics"):
        assert command in proc.stdout


def test_celery_executable_status_json_reads_the_apps_store(
    redis_url: str, key_prefix: str, store: Store
) -> None:
    open_breaker(store, "payments")
    proc = celery_cli(redis_url, key_prefix, "status", "--json")
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    assert {b["name"]: b["state"] for b in data["breakers"]}["payments"] == "open"


@pytest.mark.integration
def test_worker_per_device_starts_a_node_per_gpu_and_stops_them_on_sigterm(
    redis_url: str, key_prefix: str, store: Store, gpu_host: Path
) -> None:
    env = {
        **os.environ,
        "SNAKEPIT_STORE_URL": redis_url,
        "SNAKEPIT_KEY_PREFIX": key_prefix,
        "SNAKEPIT_HARDWARE": str(gpu_host),
        "PYTHONPATH": str(ROOT),
    }
    argv = [str(CELERY), "-A", "tests.apps.cli_app", "snakepit", "worker", "--per-device"]
    launcher = subprocess.Popen(
        [*argv, "--pool=solo", "--without-mingle", "--without-gossip"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    host = socket.gethostname()
    expected = {f"gpu0@{host}", f"gpu1@{host}", f"cpu@{host}"}
    try:
        deadline = time.monotonic() + 90
        nodes: set[str] = set()
        while time.monotonic() < deadline and nodes != expected and launcher.poll() is None:
            time.sleep(0.5)
            nodes = {record["node"] for record in store.node_list()}
        assert nodes == expected
    finally:
        launcher.send_signal(signal.SIGTERM)
        _, stderr = launcher.communicate(timeout=60)
    assert launcher.returncode == 0, stderr[-2000:]
    assert store.node_list() == []
