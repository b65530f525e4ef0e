"""``celery -A proj snakepit ...`` about this host and long-running: hardware, lock files,
metrics, ping, ``worker --per-device``, and the installed ``celery`` executable.

Commands run through click with a real Celery app, and a few through the
installed ``celery`` executable to prove the entry point.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from celery import Celery

from snakepit_celery import hardware
from snakepit_celery.celery.app_context import app_group
from snakepit_celery.store import Store
from tests.support.cli import (
    CELERY,
    ROOT,
    app,
    celery_cli,
    gpu_host,
    open_breaker,
    register_node,
    run,
    run_json,
    store,
)

#: The fixtures this module takes from tests.support.cli (named here so linters see them used).
__all__ = ["app", "gpu_host", "store"]


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


#: The fixtures this module takes from tests.support.cli (named here so linters see them used).
__all__ = ["app", "gpu_host", "store"]


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
    register_node(store, "cpu@host-a", group=app_group(app))
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
    register_node(store, f"cpu@{socket.gethostname()}", group=app_group(app))
    code, data = run_json(app, "ping")
    assert code == 0
    assert [n["node"] for n in data["nodes"]] == [f"cpu@{socket.gethostname()}"]


def test_ping_exits_1_when_no_node_of_the_host_is_alive(app: Celery, store: Store) -> None:
    register_node(store, "cpu@elsewhere", group=app_group(app))
    assert run(app, "ping").exit_code == 1


def test_unknown_command_is_a_usage_error(app: Celery) -> None:
    assert run(app, "frobnicate").exit_code == 2


# -- through the installed `celery` executable ----------------------------------------


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
    workers_app = Celery("cli_app", broker=redis_url, set_as_current=False)
    workers_app.conf.update(snakepit_store_url=redis_url, snakepit_key_prefix=key_prefix)
    group = app_group(workers_app)  # the node group of the cli_app the workers run
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
            nodes = {record["node"] for record in store.node_list(group=group)}
        assert nodes == expected
    finally:
        launcher.send_signal(signal.SIGTERM)
        _, stderr = launcher.communicate(timeout=60)
    assert launcher.returncode == 0, stderr[-2000:]
    assert store.node_list(group=group) == []
