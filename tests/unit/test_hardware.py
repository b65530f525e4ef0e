"""The public hardware API: detect/override/cache, select, device_info, identity, capabilities."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from snakepit_celery import hardware
from snakepit_celery.errors import ConfigError, DeviceNotAvailableError
from snakepit_celery.hardware import (
    Accelerator,
    CpuInfo,
    CudaInfo,
    Device,
    GpuDevice,
    HardwareInfo,
    MpsInfo,
    RocmInfo,
)
from tests.support.hardware import isolated_hardware, write_json

__all__ = ["isolated_hardware"]

CPU = CpuInfo(
    cores=8,
    threads=16,
    model="Intel(R) Xeon(R) Platinum 8480+",
    features=("avx", "avx2", "avx512", "fma", "sse4_1", "sse4_2"),
    memory_total_mb=65536,
)
UUID0 = "GPU-b5169cef-2205-c30e-f2b3-220cfa14bafd"
UUID1 = "GPU-7518f6b0-991f-ce2b-3d37-c779130d3137"
CUDA_2X = CudaInfo(
    version="12.4",
    driver_version="550.90.07",
    cudnn_version="9.1.0",
    devices=(
        GpuDevice(0, "NVIDIA TITAN V", 12288, 12000, "7.0", UUID0),
        GpuDevice(1, "NVIDIA RTX 5880 Ada Generation", 49140, 49000, "8.9", UUID1),
    ),
)
MPS = MpsInfo(available=True, device_name="Apple M1 Pro GPU", memory_total_mb=16384)
ROCM_1X = RocmInfo(version="6.1.2", devices=(GpuDevice(0, "Radeon RX 7900 XT", 20464, 20438),))


def host(
    cuda: CudaInfo | None = None,
    mps: MpsInfo | None = None,
    rocm: RocmInfo | None = None,
    cpu: CpuInfo = CPU,
    platform: str = "linux-x86_64",
) -> HardwareInfo:
    """Configure an overridden host and return it."""
    info = HardwareInfo(
        accelerator=hardware.types.primary_accelerator(cuda, mps, rocm),
        cpu=cpu,
        cuda=cuda,
        mps=mps,
        rocm=rocm,
        platform=platform,
    )
    hardware.configure(info)
    return info


# -- detection, cache, override ---------------------------------------------------------


def test_detect_on_this_host_never_raises_and_describes_the_cpu() -> None:
    info = hardware.detect()
    assert info.cpu.threads >= 1
    assert info.platform == hardware.platform_string()
    json.dumps(info.as_dict())


def test_detect_is_cached_until_clear_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = hardware.probe_host

    def counting(**kwargs: Any) -> HardwareInfo:
        calls.append(1)
        return real(**kwargs)

    monkeypatch.setattr(hardware, "probe_host", counting)
    first = hardware.detect()
    assert hardware.detect() is first
    assert len(calls) == 1
    hardware.clear_cache()
    hardware.detect()
    assert len(calls) == 2


def test_as_dict_round_trips_through_from_dict() -> None:
    info = host(cuda=CUDA_2X, rocm=ROCM_1X)
    assert HardwareInfo.from_dict(info.as_dict()) == info
    json.dumps(info.as_dict())


def test_env_override_file_replaces_detection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wanted = HardwareInfo(Accelerator.CUDA, CPU, CUDA_2X, None, None, "linux-x86_64")
    monkeypatch.setenv("SNAKEPIT_HARDWARE", str(write_json(tmp_path / "hw.json", wanted.as_dict())))
    assert hardware.detect() == wanted


def test_override_may_omit_sections_and_derives_the_accelerator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_json(tmp_path / "hw.json", {"rocm": ROCM_1X.as_dict()})
    monkeypatch.setenv("SNAKEPIT_HARDWARE", str(path))
    info = hardware.detect()
    assert info.accelerator == Accelerator.ROCM
    assert info.cuda is None
    assert info.platform == hardware.platform_string()


def test_configured_override_wins_over_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = write_json(tmp_path / "env.json", {"accelerator": "cpu", "cpu": CPU.as_dict()})
    monkeypatch.setenv("SNAKEPIT_HARDWARE", str(env_file))
    setting_file = write_json(tmp_path / "setting.json", {"cuda": CUDA_2X.as_dict()})
    hardware.configure(setting_file)
    assert hardware.detect().accelerator == Accelerator.CUDA
    hardware.configure(None)
    assert hardware.detect().accelerator == Accelerator.CPU


def test_invalid_json_override_names_the_setting_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "hw.json"
    path.write_text("{not json")
    monkeypatch.setenv("SNAKEPIT_HARDWARE", str(path))
    with pytest.raises(ConfigError) as caught:
        hardware.detect()
    assert caught.value.setting == "snakepit_hardware"
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        ([1, 2], "expected an object"),
        ({"cuda": {"devices": {"0": {}}}}, "cuda.devices"),
        ({"cuda": {"devices": [{"id": "zero"}]}}, "cuda.devices[0].id"),
        ({"accelerator": "tpu"}, "accelerator"),
        ({"accelerator": "cuda"}, "needs a 'cuda' section"),
        ({"gpus": 2}, "unknown key"),
        ({"cpu": {"features": "avx"}}, "cpu.features"),
    ],
)
def test_wrong_shape_override_is_a_config_error(tmp_path: Path, data: Any, complaint: str) -> None:
    path = write_json(tmp_path / "hw.json", data)
    with pytest.raises(ConfigError) as caught:
        hardware.configure(path)
    assert caught.value.setting == "snakepit_hardware"
    assert complaint in str(caught.value)
    assert str(path) in str(caught.value)


def test_missing_override_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="snakepit_hardware"):
        hardware.configure(tmp_path / "absent.json")


def test_restrict_gives_the_view_of_one_visible_gpu() -> None:
    info = host(cuda=CUDA_2X)
    only = hardware.restrict(info, "1")
    assert only.cuda is not None
    assert [(d.id, d.uuid) for d in only.cuda.devices] == [(0, UUID1)]
    assert hardware.restrict(info, "").accelerator == Accelerator.CPU


# -- capabilities and identity ----------------------------------------------------------


def test_capabilities_of_a_cuda_host() -> None:
    host(cuda=CUDA_2X)
    caps = hardware.capabilities()
    assert (caps.cuda, caps.mps, caps.rocm) == (True, False, False)
    assert (caps.avx, caps.avx2, caps.avx512) == (True, True, True)
    assert caps.cuda_version == "12.4"
    assert caps.cudnn_version == "9.1.0"
    assert caps.cudnn is True


def test_capabilities_of_an_ivy_bridge_cpu_host() -> None:
    host(cpu=CpuInfo(8, 16, "Xeon E5-2650 v2", ("avx", "sse4_1", "sse4_2"), 32768))
    caps = hardware.capabilities()
    assert caps.as_dict() == {
        "cuda": False,
        "mps": False,
        "rocm": False,
        "avx": True,
        "avx2": False,
        "avx512": False,
        "cuda_version": None,
        "cudnn_version": None,
        "cudnn": False,
    }


def test_identity_has_exactly_the_upstream_keys() -> None:
    host(cuda=CUDA_2X)
    assert hardware.identity() == {
        "platform": "linux-x86_64",
        "accelerator": "cuda",
        "cpu_features": ["avx", "avx2", "avx512", "fma", "sse4_1", "sse4_2"],
        "gpu_count": 2,
    }


@pytest.mark.parametrize(
    ("kwargs", "accelerator", "gpu_count"),
    [
        ({}, "cpu", 0),
        ({"mps": MPS}, "mps", 1),
        ({"rocm": ROCM_1X}, "rocm", 1),
        ({"cuda": CUDA_2X, "rocm": ROCM_1X}, "cuda", 2),
    ],
)
def test_identity_counts_devices_of_the_primary_accelerator(
    kwargs: dict[str, Any], accelerator: str, gpu_count: int
) -> None:
    host(**kwargs)
    identity = hardware.identity()
    assert identity["accelerator"] == accelerator
    assert identity["gpu_count"] == gpu_count


def test_identity_is_stable_and_json_serialisable() -> None:
    host(cuda=CUDA_2X)
    first = hardware.identity()
    assert hardware.identity() == first
    assert json.loads(json.dumps(first)) == first


def test_devices_lists_accelerators_with_uuids() -> None:
    host(cuda=CUDA_2X, rocm=ROCM_1X)
    listed = [(str(d.device), d.uuid, d.name) for d in hardware.devices()]
    assert listed == [
        ("cuda:0", UUID0, "NVIDIA TITAN V"),
        ("cuda:1", UUID1, "NVIDIA RTX 5880 Ada Generation"),
        ("rocm:0", None, "Radeon RX 7900 XT"),
    ]


def test_cpu_host_lists_no_devices() -> None:
    host()
    assert hardware.devices() == []


# -- Device -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device", "text"),
    [
        (Device("cuda", 1), "cuda:1"),
        (Device("cuda"), "cuda:0"),
        (Device("rocm", 0), "rocm:0"),
        (Device("mps"), "mps"),
        (Device("cpu"), "cpu"),
    ],
)
def test_device_str_is_torch_spelling(device: Device, text: str) -> None:
    assert str(device) == text
    assert Device.parse(text) == device


def test_device_equality_ignores_uuid() -> None:
    assert Device("cuda", 0, UUID0) == Device("cuda", 0)
    assert hash(Device("cuda", 0, UUID0)) == hash(Device("cuda", 0))


def test_device_kind_is_the_accelerator_enum() -> None:
    assert Device("cuda", 1).kind is Accelerator.CUDA
    assert Device("cuda", 1).kind == "cuda"


@pytest.mark.parametrize("args", [("gpu",), ("cuda", -1), ("mps", 1), ("cpu", 2)])
def test_invalid_device_is_a_config_error(args: tuple[Any, ...]) -> None:
    with pytest.raises(ConfigError):
        Device(*args)


# -- select -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, "cpu"),
        ({"rocm": ROCM_1X}, "rocm:0"),
        ({"mps": MPS, "rocm": ROCM_1X}, "mps"),
        ({"cuda": CUDA_2X, "mps": MPS, "rocm": ROCM_1X}, "cuda:0"),
    ],
)
def test_auto_prefers_cuda_then_mps_then_rocm_then_cpu(
    kwargs: dict[str, Any], expected: str
) -> None:
    host(**kwargs)
    assert str(hardware.select("auto")) == expected


@pytest.mark.parametrize(
    "pref", ["cuda:1", ("cuda", 1), ["cuda", 1], Device("cuda", 1), " CUDA:1 "]
)
def test_every_spelling_of_a_cuda_device_selects_it(pref: Any) -> None:
    host(cuda=CUDA_2X)
    device = hardware.select(pref)
    assert device == Device("cuda", 1)
    assert device.uuid == UUID1


def test_cuda_means_device_zero() -> None:
    host(cuda=CUDA_2X)
    assert hardware.select("cuda") == Device("cuda", 0)
    assert hardware.select("cuda").uuid == UUID0


def test_cpu_is_always_available() -> None:
    host(cuda=CUDA_2X)
    assert hardware.select("cpu") == Device("cpu")


@pytest.mark.parametrize("pref", ["cuda:2", "mps", "rocm", ("rocm", 0)])
def test_absent_device_raises_device_not_available(pref: Any) -> None:
    host(cuda=CUDA_2X)
    with pytest.raises(DeviceNotAvailableError) as caught:
        hardware.select(pref)
    assert caught.value.requested == pref


@pytest.mark.parametrize("pref", ["gpu", "cuda:x", "cuda:-1", "mps:1", ("cpu", 1), 3, None])
def test_unknown_spelling_raises_config_error(pref: Any) -> None:
    host(cuda=CUDA_2X)
    with pytest.raises(ConfigError):
        hardware.select(pref)


def test_fallback_takes_the_first_available() -> None:
    host(mps=MPS)
    assert hardware.select_with_fallback(["cuda", "mps", "cpu"]) == Device("mps")


def test_fallback_reaches_cpu_on_a_cpu_host() -> None:
    host()
    assert hardware.select_with_fallback(["cuda", "mps", "cpu"]) == Device("cpu")


def test_fallback_accepts_a_single_preference() -> None:
    host(cuda=CUDA_2X)
    assert hardware.select_with_fallback("cuda:1") == Device("cuda", 1)
    assert hardware.select_with_fallback(("cuda", 1)) == Device("cuda", 1)


def test_fallback_with_nothing_available_raises() -> None:
    host()
    with pytest.raises(DeviceNotAvailableError) as caught:
        hardware.select_with_fallback(["cuda", "rocm"])
    assert caught.value.requested == ["cuda", "rocm"]


def test_fallback_on_empty_list_raises() -> None:
    host()
    with pytest.raises(DeviceNotAvailableError):
        hardware.select_with_fallback([])


def test_fallback_rejects_a_typo_even_after_an_available_device() -> None:
    host()
    with pytest.raises(ConfigError):
        hardware.select_with_fallback(["cpu", "cdua"])


# -- device_info ------------------------------------------------------------------------


def test_cuda_device_info_has_the_upstream_keys() -> None:
    host(cuda=CUDA_2X)
    assert hardware.device_info("cuda:1") == {
        "type": "cuda",
        "device_id": 1,
        "name": "NVIDIA RTX 5880 Ada Generation",
        "memory_total_mb": 49140,
        "memory_free_mb": 49000,
        "cuda_version": "12.4",
        "compute_capability": "8.9",
    }


def test_cpu_device_info_has_the_upstream_keys() -> None:
    host()
    assert hardware.device_info(Device("cpu")) == {
        "type": "cpu",
        "name": "Intel(R) Xeon(R) Platinum 8480+",
        "cores": 8,
        "threads": 16,
        "memory_mb": 65536,
    }


def test_mps_and_rocm_device_info() -> None:
    host(mps=MPS, rocm=ROCM_1X)
    assert hardware.device_info("mps") == {
        "type": "mps",
        "name": "Apple M1 Pro GPU",
        "memory_mb": 16384,
    }
    assert hardware.device_info(("rocm", 0))["rocm_version"] == "6.1.2"


def test_device_info_for_an_absent_device_raises() -> None:
    host()
    with pytest.raises(DeviceNotAvailableError):
        hardware.device_info("cuda:0")
