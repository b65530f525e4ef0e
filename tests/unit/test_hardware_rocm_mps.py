"""ROCm detection with a fake rocm-smi and MPS detection with a fake sysctl."""

from __future__ import annotations

from pathlib import Path

import pytest

from snakepit_celery.hardware import Accelerator, probe_host, rocm
from snakepit_celery.hardware import mps as mps_probe
from snakepit_celery.hardware.tools import parse_sysctl
from tests.support.hardware import FakeBin, Rule, fake_bin, fixture_text, isolated_hardware

__all__ = ["fake_bin", "isolated_hardware"]

RX7900 = "rocm_smi_showproductname_showuse_showmeminfo_vram_json_1x_rx7900xt.json"
MI250X = "rocm_smi_showproductname_json_1x_mi250x.json"
RX6800_2X = "rocm_smi_json_showmemuse_2x_rx6800_rocm-smi-1.4.1.json"
M1_PRO = "macos_sysctl_a_grep_hw_memsize_machdep_cpu_monterey-m1.txt"


def test_rocm_smi_json_gives_name_and_vram(fake_bin: FakeBin) -> None:
    fake_bin.add("rocm-smi", Rule("--json", fixture_text(RX7900)))
    info = rocm.probe({})
    assert info is not None
    (device,) = info.devices
    assert device.id == 0
    assert device.name == "Radeon RX 7900 XT"
    assert device.memory_total_mb == 21458059264 // 2**20
    assert device.memory_free_mb == (21458059264 - 27856896) // 2**20
    assert device.compute_capability == "gfx1100"


def test_rocm_smi_without_memory_leaves_memory_unknown(fake_bin: FakeBin) -> None:
    fake_bin.add("rocm-smi", Rule("--json", fixture_text(MI250X)))
    info = rocm.probe({})
    assert info is not None
    assert info.devices[0].name == "AMD INSTINCT MI200 (MCM) OAM LC MBA HPE C2"
    assert info.devices[0].memory_total_mb is None


def test_rocm_smi_lists_every_card(fake_bin: FakeBin) -> None:
    fake_bin.add("rocm-smi", Rule("--json", fixture_text(RX6800_2X)))
    info = rocm.probe({})
    assert info is not None
    assert [d.id for d in info.devices] == [0, 1]


def test_warnings_before_the_json_are_skipped(fake_bin: FakeBin) -> None:
    fake_bin.add(
        "rocm-smi",
        Rule(
            "--json",
            "WARNING: AMD GPU device(s) is/are in a low-power state\n" + fixture_text(RX7900),
        ),
    )
    info = rocm.probe({})
    assert info is not None
    assert len(info.devices) == 1


def test_hip_visible_devices_hides_rocm_devices(fake_bin: FakeBin) -> None:
    fake_bin.add("rocm-smi", Rule("--json", fixture_text(RX6800_2X)))
    info = rocm.probe({"HIP_VISIBLE_DEVICES": "1"})
    assert info is not None
    assert [d.id for d in info.devices] == [0]
    assert rocm.probe({"HIP_VISIBLE_DEVICES": ""}) is None


@pytest.mark.parametrize(
    "rule", [Rule("", "", 1), Rule("", "not json at all\n", 0), Rule("", hang=True)]
)
def test_broken_rocm_smi_means_absent(fake_bin: FakeBin, rule: Rule) -> None:
    fake_bin.add("rocm-smi", rule)
    assert rocm.probe({}) is None


def test_missing_rocm_smi_means_absent(fake_bin: FakeBin) -> None:
    assert rocm.probe({}) is None


def test_rocm_version_is_read_from_the_install(tmp_path: Path) -> None:
    info_dir = tmp_path / ".info"
    info_dir.mkdir()
    (info_dir / "version").write_text("6.1.2-119\n")
    assert rocm.read_rocm_version(environ={"ROCM_PATH": str(tmp_path)}) == "6.1.2"
    assert rocm.read_rocm_version(environ={"ROCM_PATH": str(tmp_path / "none")}) is None


# -- MPS --------------------------------------------------------------------------------


def test_apple_silicon_has_mps_named_after_the_chip() -> None:
    info = mps_probe.probe(
        system="Darwin", machine="arm64", sysctl=parse_sysctl(fixture_text(M1_PRO))
    )
    assert info is not None
    assert info.available
    assert info.device_name == "Apple M1 Pro GPU"
    assert info.memory_total_mb == 16384


def test_early_big_sur_brand_still_gives_mps() -> None:
    sysctl = parse_sysctl(fixture_text("macos_sysctl_machdep_cpu_apple_m1_bigsur_early.txt"))
    info = mps_probe.probe(system="Darwin", machine="arm64", sysctl=sysctl)
    assert info is not None
    assert info.device_name == "Apple silicon GPU"
    assert info.memory_total_mb > 0


@pytest.mark.parametrize(("system", "machine"), [("Linux", "aarch64"), ("Darwin", "x86_64")])
def test_no_mps_off_apple_silicon(system: str, machine: str) -> None:
    assert mps_probe.probe(system=system, machine=machine, sysctl={}) is None


def test_mac_host_detection_reads_sysctl_once_for_cpu_and_mps(fake_bin: FakeBin) -> None:
    fake_bin.add("sysctl", Rule("", fixture_text(M1_PRO)))
    info = probe_host(system="Darwin", machine="arm64", environ={})
    assert info.accelerator == Accelerator.MPS
    assert info.platform == "macos-arm64"
    assert info.cpu.model == "Apple M1 Pro"
    assert info.cpu.features == ("neon",)
    assert info.mps is not None and info.mps.device_name == "Apple M1 Pro GPU"
    assert len(fake_bin.calls("sysctl")) == 1


def test_mac_without_sysctl_still_detects(fake_bin: FakeBin) -> None:
    info = probe_host(system="Darwin", machine="arm64", environ={})
    assert info.accelerator == Accelerator.MPS
    assert info.cpu.features == ("neon",)


def test_linux_host_without_tools_is_cpu_only(fake_bin: FakeBin) -> None:
    info = probe_host(system="Linux", machine="x86_64", environ={})
    assert info.accelerator == Accelerator.CPU
    assert (info.cuda, info.mps, info.rocm) == (None, None, None)


def test_cuda_wins_over_rocm_on_a_mixed_host(fake_bin: FakeBin) -> None:
    from tests.support.hardware import mixed_2x_rows, query_csv

    fake_bin.add("rocm-smi", Rule("--json", fixture_text(RX7900)))
    fake_bin.add("nvidia-smi", Rule("--query-gpu", query_csv(mixed_2x_rows())), Rule("", ""))
    info = probe_host(system="Linux", machine="x86_64", environ={})
    assert info.accelerator == Accelerator.CUDA
    assert info.rocm is not None and len(info.rocm.devices) == 1
