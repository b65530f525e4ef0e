"""NVIDIA detection: NVML first, nvidia-smi as fallback, CUDA_VISIBLE_DEVICES, cuDNN."""

from __future__ import annotations

import sys
import threading
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from snakepit_celery.hardware import nvidia
from tests.support.hardware import (
    FakeBin,
    Rule,
    fake_bin,
    fixture_text,
    geforce_5x_rows,
    h100_8x_rows,
    isolated_hardware,
    mixed_2x_rows,
    query_csv,
)

__all__ = ["fake_bin", "isolated_hardware"]

REAL_CUDNN_VERSION = nvidia.cudnn_version  # before the isolating fixture stubs it
H100_TABLE = "nvidia_smi_table_8x_h100_sxm_565.57.01.txt"
LEGACY_TABLE = "nvidia_smi_table_legacy_384.66_no_cuda_version_titanxp_TRUNCATED.txt"


def install_smi(fake_bin: FakeBin, rows: list[dict[str, str]], table: str = H100_TABLE) -> None:
    fake_bin.add(
        "nvidia-smi",
        Rule("compute_cap", query_csv(rows)),
        Rule("--query-gpu", query_csv(rows, with_compute_cap=False)),
        Rule("", fixture_text(table)),
    )


def test_nvidia_smi_lists_every_gpu_with_memory_and_versions(fake_bin: FakeBin) -> None:
    install_smi(fake_bin, h100_8x_rows())
    info = nvidia.probe({})
    assert info is not None
    assert [d.id for d in info.devices] == list(range(8))
    assert {d.name for d in info.devices} == {"NVIDIA H100 80GB HBM3"}
    assert info.devices[0].memory_total_mb == 81559
    assert info.devices[0].memory_free_mb == 81558
    assert info.devices[0].compute_capability == "9.0"
    assert info.driver_version == "565.57.01"
    assert info.version == "12.7"


def test_nvidia_smi_na_fields_become_none(fake_bin: FakeBin) -> None:
    install_smi(fake_bin, mixed_2x_rows())
    info = nvidia.probe({})
    assert info is not None
    assert [d.name for d in info.devices] == ["NVIDIA TITAN V", "NVIDIA RTX 5880 Ada Generation"]
    assert info.devices[0].memory_total_mb is None
    assert info.devices[1].uuid == "GPU-7518f6b0-991f-ce2b-3d37-c779130d3137"
    assert [d.compute_capability for d in info.devices] == ["7.0", "8.9"]


def test_old_driver_rejecting_compute_cap_is_asked_again_without_it(fake_bin: FakeBin) -> None:
    rows = mixed_2x_rows()
    fake_bin.add(
        "nvidia-smi",
        Rule(
            "compute_cap",
            fixture_text("nvidia_smi_error_compute_cap_not_valid_field_470.182.03.txt"),
            code=2,
        ),
        Rule("--query-gpu", query_csv(rows, with_compute_cap=False)),
        Rule(
            "", fixture_text("nvidia_smi_table_legacy_384.66_no_cuda_version_titanxp_TRUNCATED.txt")
        ),
    )
    info = nvidia.probe({})
    assert info is not None
    assert len(info.devices) == 2
    assert all(d.compute_capability is None for d in info.devices)
    queries = [c for c in fake_bin.calls("nvidia-smi") if "--query-gpu" in c]
    assert len(queries) == 2
    assert "compute_cap" not in queries[1]


def test_table_without_cuda_version_leaves_version_unknown(fake_bin: FakeBin) -> None:
    install_smi(
        fake_bin,
        mixed_2x_rows(),
        table=LEGACY_TABLE,
    )
    info = nvidia.probe({})
    assert info is not None
    assert info.version is None


def test_no_devices_found_means_absent(fake_bin: FakeBin) -> None:
    fake_bin.add("nvidia-smi", Rule("", fixture_text("nvidia_smi_error_no_devices_found.txt"), 6))
    assert nvidia.probe({}) is None


def test_driver_not_loaded_means_absent(fake_bin: FakeBin) -> None:
    fake_bin.add("nvidia-smi", Rule("", fixture_text("nvidia_smi_error_driver_not_loaded.txt"), 9))
    assert nvidia.probe({}) is None


def test_tool_exiting_1_means_absent(fake_bin: FakeBin) -> None:
    fake_bin.add("nvidia-smi", Rule("", "Segmentation fault\n", 1))
    assert nvidia.probe({}) is None


def test_hanging_tool_is_killed_and_means_absent(fake_bin: FakeBin) -> None:
    fake_bin.add("nvidia-smi", Rule("", hang=True))
    assert nvidia.probe({}) is None
    assert len(fake_bin.calls("nvidia-smi")) == 1


def test_missing_tool_means_absent(fake_bin: FakeBin) -> None:
    assert nvidia.probe({}) is None


def test_garbage_lines_are_skipped(fake_bin: FakeBin) -> None:
    rows = h100_8x_rows()[:1]
    fake_bin.add(
        "nvidia-smi",
        Rule("compute_cap", "WARNING: something odd\n" + query_csv(rows)),
        Rule("", fixture_text(H100_TABLE)),
    )
    info = nvidia.probe({})
    assert info is not None
    assert len(info.devices) == 1


# -- NVML -------------------------------------------------------------------------------


class FakeNvml:
    """NVML answers for two GPUs, installed by monkeypatching pynvml's functions."""

    names = ("NVIDIA A100-SXM4-80GB", "NVIDIA A100-SXM4-80GB")
    uuids = ("GPU-1a2b3c4d-0000-1111-2222-333344445555", "GPU-9f8e7d6c-0000-1111-2222-333344445555")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.shutdowns = 0
        functions: dict[str, Any] = {
            "nvmlInit": lambda: None,
            "nvmlShutdown": self._shutdown,
            "nvmlSystemGetDriverVersion": lambda: "550.90.07",
            "nvmlSystemGetCudaDriverVersion": lambda: 12040,
            "nvmlDeviceGetCount": lambda: 2,
            "nvmlDeviceGetHandleByIndex": lambda i: i,
            "nvmlDeviceGetName": lambda h: self.names[h],
            "nvmlDeviceGetUUID": lambda h: self.uuids[h],
            "nvmlDeviceGetMemoryInfo": lambda h: SimpleNamespace(
                total=81920 * 2**20, free=(81920 - 10 * h) * 2**20, used=10 * h * 2**20
            ),
            "nvmlDeviceGetCudaComputeCapability": lambda h: (8, 0),
        }
        for name, fn in functions.items():
            monkeypatch.setattr(pynvml, name, fn)

    def _shutdown(self) -> None:
        self.shutdowns += 1


def test_nvml_is_used_first_and_nvidia_smi_not_called(
    fake_bin: FakeBin, monkeypatch: pytest.MonkeyPatch
) -> None:
    nvml = FakeNvml(monkeypatch)
    install_smi(fake_bin, h100_8x_rows())
    info = nvidia.probe({})
    assert info is not None
    assert [d.uuid for d in info.devices] == list(FakeNvml.uuids)
    assert info.devices[1].memory_free_mb == 81910
    assert info.devices[0].compute_capability == "8.0"
    assert info.version == "12.4"
    assert info.driver_version == "550.90.07"
    assert fake_bin.calls("nvidia-smi") == []
    assert nvml.shutdowns == 1


def test_nvml_library_not_found_falls_back_to_nvidia_smi(fake_bin: FakeBin) -> None:
    install_smi(fake_bin, h100_8x_rows())
    info = nvidia.probe({})
    assert info is not None
    assert len(info.devices) == 8


@pytest.mark.parametrize("error", ["NVMLError_DriverNotLoaded", "NVMLError_Unknown"])
def test_any_nvml_init_error_falls_back(
    fake_bin: FakeBin, monkeypatch: pytest.MonkeyPatch, error: str
) -> None:
    def broken() -> None:
        raise getattr(pynvml, error)()

    monkeypatch.setattr(pynvml, "nvmlInit", broken)
    install_smi(fake_bin, mixed_2x_rows())
    info = nvidia.probe({})
    assert info is not None
    assert len(info.devices) == 2


def test_unsupported_nvml_query_leaves_that_field_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeNvml(monkeypatch)

    def not_supported(handle: int) -> tuple[int, int]:
        raise pynvml.NVMLError_NotSupported()

    monkeypatch.setattr(pynvml, "nvmlDeviceGetCudaComputeCapability", not_supported)
    info = nvidia.probe({})
    assert info is not None
    assert [d.compute_capability for d in info.devices] == [None, None]
    assert info.devices[0].name == "NVIDIA A100-SXM4-80GB"


def test_hanging_nvml_is_abandoned_for_nvidia_smi(
    fake_bin: FakeBin, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    monkeypatch.setattr(pynvml, "nvmlInit", lambda: release.wait(10))
    install_smi(fake_bin, mixed_2x_rows())
    try:
        info = nvidia.probe({})
    finally:
        release.set()
    assert info is not None
    assert len(info.devices) == 2


def test_nvml_with_zero_devices_means_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeNvml(monkeypatch)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: 0)
    assert nvidia.probe({}) is None


def test_cuda_driver_version_integer_is_major_dot_minor() -> None:
    assert nvidia.format_cuda_version(12040) == "12.4"
    assert nvidia.format_cuda_version(11080) == "11.8"


# -- CUDA_VISIBLE_DEVICES ---------------------------------------------------------------


def visible_uuids(fake_bin: FakeBin, value: str) -> list[str | None] | None:
    install_smi(fake_bin, mixed_2x_rows())
    info = nvidia.probe({"CUDA_VISIBLE_DEVICES": value})
    if info is None:
        return None
    assert [d.id for d in info.devices] == list(range(len(info.devices)))
    return [d.uuid for d in info.devices]


TITAN = "GPU-b5169cef-2205-c30e-f2b3-220cfa14bafd"
ADA = "GPU-7518f6b0-991f-ce2b-3d37-c779130d3137"


def test_visible_index_renumbers_from_zero(fake_bin: FakeBin) -> None:
    assert visible_uuids(fake_bin, "1") == [ADA]


def test_visible_order_is_the_listed_order(fake_bin: FakeBin) -> None:
    assert visible_uuids(fake_bin, "1,0") == [ADA, TITAN]


def test_visible_uuid_and_unique_prefix_select_a_device(fake_bin: FakeBin) -> None:
    assert visible_uuids(fake_bin, ADA) == [ADA]
    assert visible_uuids(fake_bin, "GPU-b5169cef") == [TITAN]


@pytest.mark.parametrize("value", ["", "-1", "7", "GPU-ffffffff"])
def test_visible_nothing_means_no_cuda(fake_bin: FakeBin, value: str) -> None:
    assert visible_uuids(fake_bin, value) is None


def test_visible_invalid_entry_truncates_the_list(fake_bin: FakeBin) -> None:
    assert visible_uuids(fake_bin, "0,-1,1") == [TITAN]


def test_visible_duplicate_entry_truncates_the_list(fake_bin: FakeBin) -> None:
    assert visible_uuids(fake_bin, "1,1,0") == [ADA]


def test_process_environment_is_used_by_default(
    fake_bin: FakeBin, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_smi(fake_bin, mixed_2x_rows())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    info = nvidia.probe()
    assert info is not None
    assert [d.uuid for d in info.devices] == [ADA]


# -- cuDNN ------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "text"), [(8902, "8.9.2"), (7605, "7.6.5"), (90100, "9.1.0")])
def test_cudnn_version_integers_are_formatted(raw: int, text: str) -> None:
    assert nvidia.format_cudnn_version(raw) == text


def test_cudnn_version_comes_from_an_already_imported_torch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_torch = SimpleNamespace(
        backends=SimpleNamespace(cudnn=SimpleNamespace(version=lambda: 90100))
    )
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    assert REAL_CUDNN_VERSION() == "9.1.0"


def test_cudnn_version_is_reported_in_cuda_info(
    fake_bin: FakeBin, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_smi(fake_bin, mixed_2x_rows())
    monkeypatch.setattr(nvidia, "cudnn_version", lambda: "8.9.2")
    info = nvidia.probe({})
    assert info is not None
    assert info.cudnn_version == "8.9.2"


def test_uuid_prefix_picks_among_many_gpus(fake_bin: FakeBin) -> None:
    install_smi(fake_bin, geforce_5x_rows())
    info = nvidia.probe({"CUDA_VISIBLE_DEVICES": "GPU-15ea7bf9,4"})
    assert info is not None
    assert [d.name for d in info.devices] == ["GeForce GTX 1080 Ti", "GeForce GTX 1060 6GB"]
    assert info.devices[1].uuid == "GPU-ff3318a7-f0dd-dc57-1fb8-cc95ba35c56e"


def test_ambiguous_uuid_prefix_truncates_the_list(fake_bin: FakeBin) -> None:
    install_smi(fake_bin, geforce_5x_rows())
    info = nvidia.probe({"CUDA_VISIBLE_DEVICES": "2,GPU-f,1"})
    assert info is not None
    assert [d.uuid for d in info.devices] == ["GPU-3dc4f2b0-6e1b-c088-c342-4367c334795a"]


def test_cuda_version_is_read_from_the_table_header() -> None:
    assert nvidia.parse_cuda_version(fixture_text("nvidia_smi_table_1x_l4_550.90.07.txt")) == "12.4"
