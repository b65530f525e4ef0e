"""Lock files: generate on one host, validate on matching and mismatching hosts."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from snakepit_celery import hardware, lockfile
from snakepit_celery.errors import ConfigError, LockMismatchError
from snakepit_celery.hardware import CpuInfo, CudaInfo, GpuDevice, HardwareInfo, MpsInfo
from tests.support.hardware import isolated_hardware

__all__ = ["isolated_hardware"]

FEATURES = ("avx", "avx2", "avx512", "fma", "sse4_1", "sse4_2")


def on_host(accelerator: str = "cpu", gpus: int = 0, features: tuple[str, ...] = FEATURES) -> None:
    """Make this process see the given hardware."""
    cuda = None
    mps = None
    if accelerator == "cuda":
        devices = tuple(GpuDevice(i, "NVIDIA H100 80GB HBM3", 81559, 81558) for i in range(gpus))
        cuda = CudaInfo("12.7", "565.57.01", None, devices)
    elif accelerator == "mps":
        mps = MpsInfo(True, "Apple M1 Pro GPU", 16384)
    hardware.configure(
        HardwareInfo(
            accelerator=hardware.Accelerator(accelerator),
            cpu=CpuInfo(8, 16, "test cpu", features, 65536),
            cuda=cuda,
            mps=mps,
            rocm=None,
            platform="linux-x86_64",
        )
    )


def lock_for(tmp_path: Path, **host: Any) -> Path:
    on_host(**host)
    path = tmp_path / "snakepit.lock"
    path.write_text(lockfile.generate({"torch": "2.3.1"}))
    return path


def test_generate_writes_the_upstream_fields() -> None:
    on_host("cuda", 2)
    lock = json.loads(lockfile.generate({"torch": "2.3.1"}))
    assert list(lock) == ["generated_at", "hardware", "dependencies", "compatibility"]
    assert lock["hardware"] == hardware.identity()
    assert lock["dependencies"] == {"torch": "2.3.1"}
    assert lock["compatibility"] == {
        "cuda_required": True,
        "min_gpu_count": 2,
        "cpu_features": list(FEATURES),
    }
    assert datetime.fromisoformat(lock["generated_at"]).tzinfo is not None


def test_generate_is_pretty_printed() -> None:
    on_host()
    assert "\n  " in lockfile.generate({})


def test_cpu_host_lock_does_not_require_cuda() -> None:
    on_host()
    assert json.loads(lockfile.generate({}))["compatibility"]["cuda_required"] is False


def test_unserialisable_dependencies_are_a_config_error() -> None:
    on_host()
    with pytest.raises(ConfigError):
        lockfile.generate({"torch": object()})


def test_same_hardware_validates(tmp_path: Path) -> None:
    path = lock_for(tmp_path, accelerator="cuda", gpus=2)
    assert lockfile.validate(path) is None
    assert lockfile.validate(str(path)) is None


def test_lock_text_itself_validates(tmp_path: Path) -> None:
    text = lock_for(tmp_path, accelerator="cuda", gpus=2).read_text()
    assert lockfile.validate(text) is None


def test_more_gpus_and_more_features_than_locked_is_fine(tmp_path: Path) -> None:
    path = lock_for(tmp_path, accelerator="cuda", gpus=1, features=("avx",))
    on_host("cuda", 4)
    assert lockfile.validate(path) is None


def test_other_accelerator_is_accelerator_mismatch(tmp_path: Path) -> None:
    path = lock_for(tmp_path, accelerator="cuda", gpus=1)
    on_host("cpu")
    with pytest.raises(LockMismatchError) as caught:
        lockfile.validate(path)
    assert caught.value.reason == "accelerator_mismatch"
    assert "'cuda'" in str(caught.value)


def test_fewer_gpus_is_insufficient_gpus(tmp_path: Path) -> None:
    path = lock_for(tmp_path, accelerator="cuda", gpus=2)
    on_host("cuda", 1)
    with pytest.raises(LockMismatchError) as caught:
        lockfile.validate(path)
    assert caught.value.reason == "insufficient_gpus"


def test_missing_feature_is_missing_cpu_features(tmp_path: Path) -> None:
    path = lock_for(tmp_path)
    on_host(features=("avx", "sse4_1", "sse4_2"))
    with pytest.raises(LockMismatchError) as caught:
        lockfile.validate(path)
    assert caught.value.reason == "missing_cpu_features"
    assert "avx2" in str(caught.value)


def test_reasons_come_in_upstream_order(tmp_path: Path) -> None:
    path = lock_for(tmp_path, accelerator="cuda", gpus=2)
    on_host("mps", features=("neon",))
    with pytest.raises(LockMismatchError) as caught:
        lockfile.validate(path)
    assert caught.value.reason == "accelerator_mismatch"


def test_gpu_count_is_checked_before_features(tmp_path: Path) -> None:
    path = lock_for(tmp_path, accelerator="cuda", gpus=2)
    on_host("cuda", 1, features=())
    with pytest.raises(LockMismatchError) as caught:
        lockfile.validate(path)
    assert caught.value.reason == "insufficient_gpus"


def test_mismatch_message_is_one_line_starting_with_the_reason(tmp_path: Path) -> None:
    path = lock_for(tmp_path, accelerator="cuda", gpus=1)
    on_host()
    code, line = lockfile.validate_command(path)
    assert code == 1
    assert line.startswith("accelerator_mismatch")
    assert "\n" not in line


def test_invalid_json_is_a_config_error_naming_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "snakepit.lock"
    path.write_text("{broken")
    with pytest.raises(ConfigError) as caught:
        lockfile.validate(path)
    assert caught.value.setting == "snakepit_lock_file"
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    ("lock", "complaint"),
    [
        ({"dependencies": {}}, "'hardware'"),
        ({"hardware": {"gpu_count": 0, "cpu_features": []}}, "hardware.accelerator"),
        ({"hardware": {"accelerator": "cpu", "cpu_features": []}}, "hardware.gpu_count"),
        ({"hardware": {"accelerator": "cpu", "gpu_count": 0}}, "hardware.cpu_features"),
        ([1], "JSON object"),
    ],
)
def test_missing_fields_are_a_config_error(tmp_path: Path, lock: Any, complaint: str) -> None:
    path = tmp_path / "snakepit.lock"
    path.write_text(json.dumps(lock))
    with pytest.raises(ConfigError, match=complaint) as caught:
        lockfile.validate(path)
    assert caught.value.setting == "snakepit_lock_file"


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        lockfile.validate(tmp_path / "absent.lock")


def test_dependency_arguments_parse_as_name_equals_version() -> None:
    assert lockfile.parse_dependency_args(["torch=2.3.1", "numpy==1.26"]) == {
        "torch": "2.3.1",
        "numpy": "1.26",
    }
    with pytest.raises(ConfigError):
        lockfile.parse_dependency_args(["torch"])
