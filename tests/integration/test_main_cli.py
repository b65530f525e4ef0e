"""``python -m snakepit_celery hardware|lock`` run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.bin.base import CLIContext
from click.testing import CliRunner

from snakepit_celery import hardware
from snakepit_celery.celery.cli import snakepit
from tests.support.hardware import env_without_visibility, write_json

ROOT = Path(__file__).resolve().parents[2]

CPU = {
    "cores": 8,
    "threads": 16,
    "model": "Intel(R) Xeon(R) Platinum 8480+",
    "features": ["avx", "avx2", "avx512", "fma", "sse4_1", "sse4_2"],
    "memory_total_mb": 65536,
}
CUDA_HOST = {
    "accelerator": "cuda",
    "cpu": CPU,
    "cuda": {
        "version": "12.7",
        "driver_version": "565.57.01",
        "cudnn_version": None,
        "devices": [
            {
                "id": i,
                "name": "NVIDIA H100 80GB HBM3",
                "memory_total_mb": 81559,
                "memory_free_mb": 81558,
                "compute_capability": "9.0",
                "uuid": None,
            }
            for i in range(2)
        ],
    },
    "mps": None,
    "rocm": None,
    "platform": "linux-x86_64",
}
CPU_HOST = {**CUDA_HOST, "accelerator": "cpu", "cuda": None}


def run(args: list[str], hardware: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = env_without_visibility()
    env["PYTHONPATH"] = str(ROOT)
    if hardware is not None:
        env["SNAKEPIT_HARDWARE"] = str(hardware)
    return subprocess.run(
        [sys.executable, "-m", "snakepit_celery", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=ROOT,
    )


@pytest.fixture
def cuda_host(tmp_path: Path) -> Path:
    return write_json(tmp_path / "cuda.json", CUDA_HOST)


@pytest.fixture
def cpu_host(tmp_path: Path) -> Path:
    return write_json(tmp_path / "cpu.json", CPU_HOST)


def test_hardware_json_prints_detect_as_dict(cuda_host: Path) -> None:
    result = run(["hardware", "--json"], cuda_host)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == CUDA_HOST


def test_hardware_table_is_human_readable(cuda_host: Path) -> None:
    result = run(["hardware"], cuda_host)
    assert result.returncode == 0, result.stderr
    assert "accelerator   cuda" in result.stdout
    assert "cuda:1  NVIDIA H100 80GB HBM3" in result.stdout


def test_hardware_on_this_host_succeeds() -> None:
    result = run(["hardware", "--json"])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["platform"]


def test_bad_override_file_exits_2_naming_the_setting(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    result = run(["hardware"], bad)
    assert result.returncode == 2
    assert "snakepit_hardware" in result.stderr


def generate(tmp_path: Path, host: Path, *deps: str) -> Path:
    result = run(["lock", "generate", *deps], host)
    assert result.returncode == 0, result.stderr
    path = tmp_path / "snakepit.lock"
    path.write_text(result.stdout)
    return path


def test_lock_generate_records_dependencies(tmp_path: Path, cuda_host: Path) -> None:
    lock: dict[str, Any] = json.loads(generate(tmp_path, cuda_host, "torch=2.3.1").read_text())
    assert lock["dependencies"] == {"torch": "2.3.1"}
    assert lock["hardware"]["gpu_count"] == 2


def test_lock_validate_on_the_same_hardware_exits_0(tmp_path: Path, cuda_host: Path) -> None:
    lock = generate(tmp_path, cuda_host)
    result = run(["lock", "validate", str(lock)], cuda_host)
    assert result.returncode == 0, result.stderr


def test_lock_validate_on_other_hardware_exits_1_with_the_reason(
    tmp_path: Path, cuda_host: Path, cpu_host: Path
) -> None:
    lock = generate(tmp_path, cuda_host)
    result = run(["lock", "validate", str(lock)], cpu_host)
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("accelerator_mismatch")


def test_lock_validate_of_a_broken_file_exits_2(tmp_path: Path, cpu_host: Path) -> None:
    broken = tmp_path / "broken.lock"
    broken.write_text("not json")
    result = run(["lock", "validate", str(broken)], cpu_host)
    assert result.returncode == 2
    assert "snakepit_lock_file" in result.stderr


@pytest.mark.parametrize(
    "args", [[], ["lock"], ["lock", "validate"], ["frobnicate"], ["lock", "generate", "torch"]]
)
def test_usage_errors_exit_2(args: list[str], cpu_host: Path) -> None:
    assert run(args, cpu_host).returncode == 2


def celery_snakepit(host: Path, *args: str) -> tuple[int, str]:
    """``celery snakepit <args>`` in-process, seeing ``host`` as the subprocess does."""
    app = Celery("same_output", set_as_current=False)
    app.conf.snakepit_hardware = str(host)
    obj = CLIContext(app=app, no_color=True, workdir=None)
    hardware.configure(host)
    try:
        result = CliRunner().invoke(snakepit, list(args), obj=obj, catch_exceptions=False)
    finally:
        hardware.configure(None)
    return result.exit_code, result.stdout


@pytest.mark.parametrize("args", [["hardware"], ["hardware", "--json"]])
def test_hardware_prints_the_same_as_celery_snakepit(cuda_host: Path, args: list[str]) -> None:
    result = run(args, cuda_host)
    assert (result.returncode, result.stdout) == celery_snakepit(cuda_host, *args)


def test_lock_validate_prints_the_same_as_celery_snakepit(
    tmp_path: Path, cuda_host: Path, cpu_host: Path
) -> None:
    lock = str(generate(tmp_path, cuda_host))
    result = run(["lock", "validate", lock], cpu_host)
    assert (result.returncode, result.stdout) == celery_snakepit(cpu_host, "lock", "validate", lock)
