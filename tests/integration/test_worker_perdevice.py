"""``snakepit worker --per-device``: command building (pure) and a real run with 2 fake GPUs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from snakepit_celery.celery.perdevice import (
    NODE_MARKER_ENV,
    build_commands,
    node_overrides,
    worst_exit_code,
)
from snakepit_celery.errors import ConfigError
from snakepit_celery.hardware import Device, HardwareInfo
from snakepit_celery.testing import wait_until
from tests.support.fleet import ROOT, Fleet, cuda_hardware, fleet_fixture, write_hardware

GPUS = [Device("cuda", 0), Device("cuda", 1)]


def test_one_node_per_gpu_plus_a_cpu_node() -> None:
    commands = build_commands("proj", [], GPUS, hostname="h", python="py")
    assert [c.name for c in commands] == ["gpu0@h", "gpu1@h", "cpu@h"]
    assert commands[0].argv == (
        "py",
        "-m",
        "celery",
        "-A",
        "proj",
        "worker",
        "-n",
        "gpu0@h",
        "--concurrency=1",
    )


def test_each_gpu_node_sees_only_its_gpu() -> None:
    commands = build_commands("proj", [], GPUS, hostname="h", environ={})
    assert [c.env["CUDA_VISIBLE_DEVICES"] for c in commands] == ["0", "1", ""]
    assert commands[0].env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


def test_gpu_index_maps_through_an_existing_visible_list() -> None:
    commands = build_commands(
        "proj", [], GPUS, hostname="h", environ={"CUDA_VISIBLE_DEVICES": "2,3"}
    )
    assert [c.env["CUDA_VISIBLE_DEVICES"] for c in commands[:2]] == ["2", "3"]


def test_extra_args_reach_every_node_and_concurrency_is_kept() -> None:
    commands = build_commands("proj", ["-l", "INFO", "-c", "4"], GPUS, hostname="h")
    for command in commands:
        assert command.argv[-4:] == ("-l", "INFO", "-c", "4")
        assert "--concurrency=1" not in command.argv


def test_cpu_node_keeps_the_default_concurrency() -> None:
    (cpu,) = [c for c in build_commands("proj", [], GPUS, hostname="h") if c.name == "cpu@h"]
    assert not any(arg.startswith("--concurrency") for arg in cpu.argv)


def test_rocm_devices_get_rocm_nodes_with_hip_visibility() -> None:
    (rocm, _) = build_commands("proj", [], [Device("rocm", 0)], hostname="h", environ={})
    assert rocm.name == "rocm0@h"
    assert rocm.env["HIP_VISIBLE_DEVICES"] == "0"


def test_no_gpu_gives_just_the_cpu_node() -> None:
    assert [c.name for c in build_commands("proj", [], [], hostname="h")] == ["cpu@h"]


def test_no_cpu_node_when_asked() -> None:
    names = [c.name for c in build_commands("proj", [], GPUS, hostname="h", cpu_node=False)]
    assert names == ["gpu0@h", "gpu1@h"]


@pytest.mark.parametrize("args", [["-n", "x@h"], ["--hostname=x@h"], ["-nx@h"]])
def test_naming_the_node_yourself_is_a_config_error(args: list[str]) -> None:
    with pytest.raises(ConfigError):
        build_commands("proj", args, GPUS, hostname="h")


def test_worst_exit_code_counts_signals_like_a_shell() -> None:
    assert worst_exit_code([0, 0]) == 0
    assert worst_exit_code([0, 1, 0]) == 1
    assert worst_exit_code([0, -9, 1]) == 137
    assert worst_exit_code([None]) == 1


def test_node_overrides_split_an_overridden_host_per_device() -> None:
    info = HardwareInfo.from_dict(cuda_hardware(2))
    views = node_overrides(build_commands("proj", [], GPUS, hostname="h"), info)
    assert [d["uuid"] for d in views["gpu1@h"]["cuda"]["devices"]] == ["GPU-test-0001"]
    assert views["gpu1@h"]["cuda"]["devices"][0]["id"] == 0
    assert views["cpu@h"]["cuda"] is None
    assert views["cpu@h"]["accelerator"] == "cpu"


# -- a real launcher with two fake GPUs ----------------------------------------------------

LAUNCHER = """
import sys
from snakepit_celery import hardware
from snakepit_celery.celery.perdevice import run_per_device
gpus = [d for d in hardware.devices() if d.kind in ("cuda", "rocm")]
sys.exit(run_per_device("tests.apps.worker_app", sys.argv[1:], gpus, hostname="t",
                        hardware_override=hardware.detect(), stop_timeout=20))
"""


@pytest.fixture
def fleet(redis_url: str, key_prefix: str, tmp_path: Path) -> Iterator[Fleet]:
    yield from fleet_fixture(redis_url, key_prefix, tmp_path)


@pytest.fixture
def launcher(fleet: Fleet) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "WORKER_APP_REDIS_URL": fleet.redis_url,
        "WORKER_APP_KEY_PREFIX": fleet.key_prefix,
        "PYTHONPATH": str(ROOT),
        "SNAKEPIT_HARDWARE": str(write_hardware(fleet.tmp_path / "host.json", cuda_hardware(2))),
    }
    env.pop(NODE_MARKER_ENV, None)
    log = (fleet.tmp_path / "launcher.log").open("wb")
    worker_args = ["-P", "threads", "-c", "1", "--without-mingle", "--without-gossip", "-l", "INFO"]
    process = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, *worker_args],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: len(fleet.nodes()) == 3, 60, what="three nodes")
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(40)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.kill()
                process.wait(10)
        log.close()


@pytest.mark.integration
@pytest.mark.timeout(150)
def test_per_device_nodes_each_register_their_own_gpu(
    fleet: Fleet, launcher: subprocess.Popen[bytes]
) -> None:
    records = {r["node"]: r for r in fleet.nodes()}
    assert sorted(records) == ["cpu@t", "gpu0@t", "gpu1@t"]
    assert [d["uuid"] for d in records["gpu0@t"]["devices"]] == ["GPU-test-0000"]
    assert [d["uuid"] for d in records["gpu1@t"]["devices"]] == ["GPU-test-0001"]
    assert records["cpu@t"]["devices"] == []
    assert fleet.queue("node.gpu1@t.cuda.0") in records["gpu1@t"]["queues"]


@pytest.mark.integration
@pytest.mark.timeout(150)
def test_sigterm_stops_every_node_cleanly(fleet: Fleet, launcher: subprocess.Popen[bytes]) -> None:
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(40) == 0
    assert fleet.nodes() == []


@pytest.mark.integration
@pytest.mark.timeout(150)
def test_a_dying_node_stops_the_others_and_sets_the_exit_code(
    fleet: Fleet, launcher: subprocess.Popen[bytes]
) -> None:
    gpu1 = fleet.node("gpu1@t")
    assert gpu1 is not None
    os.kill(int(gpu1["pid"]), signal.SIGKILL)
    assert launcher.wait(40) == 128 + signal.SIGKILL
    assert fleet.node("gpu0@t") is None
    assert fleet.node("cpu@t") is None
