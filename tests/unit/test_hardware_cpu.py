"""CPU detection: model and ISA features from real /proc/cpuinfo and sysctl captures."""

from __future__ import annotations

from pathlib import Path

import pytest

from snakepit_celery.hardware import cpu, platform_string
from snakepit_celery.hardware.tools import parse_sysctl
from tests.support.hardware import FIXTURES, fixture_text, isolated_hardware

__all__ = ["isolated_hardware"]

M1_PRO = "macos_sysctl_a_grep_hw_memsize_machdep_cpu_monterey-m1.txt"


def linux_cpu(name: str, machine: str = "x86_64") -> tuple[str, tuple[str, ...]]:
    info = cpu.probe(system="Linux", machine=machine, cpuinfo_path=FIXTURES / name)
    return info.model, info.features


def test_sapphire_rapids_has_avx512_and_the_sse_avx_family() -> None:
    model, features = linux_cpu("proc_cpuinfo_x86_64_avx512_amx_sapphirerapids.txt")
    assert model == "Intel(R) Xeon(R) Platinum 8480+"
    assert set(features) == {"avx", "avx2", "avx512", "fma", "sse4_1", "sse4_2"}


def test_ivy_bridge_has_avx_but_no_avx2_fma_or_avx512() -> None:
    model, features = linux_cpu("proc_cpuinfo_x86_64_no_avx2_xeon_e5-2650v2_ivybridge.txt")
    assert model == "Intel(R) Xeon(R) CPU E5-2650 v2 @ 2.60GHz"
    assert set(features) == {"avx", "sse4_1", "sse4_2"}


def test_graviton2_asimd_is_reported_as_neon() -> None:
    model, features = linux_cpu("proc_cpuinfo_aarch64_graviton2_neoverse_n1.txt", "aarch64")
    assert features == ("neon",)
    assert model == "ARM Neoverse-N1"


def test_graviton3_also_reports_sve() -> None:
    _, features = linux_cpu("proc_cpuinfo_aarch64_graviton3_neoverse_v1.txt", "aarch64")
    assert features == ("neon", "sve")


def test_arm_core_without_model_name_is_named_from_implementer_and_part() -> None:
    model, _ = linux_cpu("proc_cpuinfo_aarch64_ampereone.txt", "aarch64")
    assert model == "Ampere AmpereOne"


def test_features_are_sorted() -> None:
    _, features = linux_cpu("proc_cpuinfo_x86_64_avx512_amx_sapphirerapids.txt")
    assert list(features) == sorted(features)


def test_unreadable_cpuinfo_gives_no_features_and_does_not_raise(tmp_path: Path) -> None:
    info = cpu.probe(system="Linux", machine="x86_64", cpuinfo_path=tmp_path / "missing")
    assert info.features == ()
    assert info.threads >= 1
    assert info.cores >= 1


def test_cores_threads_and_memory_come_from_the_host() -> None:
    info = cpu.probe(
        system="Linux",
        machine="x86_64",
        cpuinfo_path=FIXTURES / "proc_cpuinfo_x86_64_avx512_amx_sapphirerapids.txt",
    )
    assert 1 <= info.cores <= info.threads
    assert info.memory_total_mb > 0


def test_intel_mac_features_come_from_machdep_cpu_words() -> None:
    sysctl = parse_sysctl(fixture_text("macos_sysctl_machdep_cpu_intel_i7-6700k.txt"))
    info = cpu.probe(system="Darwin", machine="x86_64", sysctl=sysctl)
    assert info.model == "Intel(R) Core(TM) i7-6700K CPU @ 4.00GHz"
    assert set(info.features) == {"avx", "avx2", "fma", "sse4_1", "sse4_2"}


def test_apple_silicon_reports_neon() -> None:
    sysctl = parse_sysctl(fixture_text(M1_PRO))
    info = cpu.probe(system="Darwin", machine="arm64", sysctl=sysctl)
    assert info.model == "Apple M1 Pro"
    assert info.features == ("neon",)


def test_sysctl_lines_parse_to_a_mapping() -> None:
    values = parse_sysctl(fixture_text(M1_PRO))
    assert values["hw.memsize"] == "17179869184"
    assert values["machdep.cpu.core_count"] == "8"


@pytest.mark.parametrize(
    ("system", "machine", "expected"),
    [
        ("Linux", "x86_64", "linux-x86_64"),
        ("Linux", "aarch64", "linux-arm64"),
        ("Darwin", "arm64", "macos-arm64"),
        ("Darwin", "x86_64", "macos-x86_64"),
        ("Windows", "AMD64", "windows-x86_64"),
        ("Linux", "armv7l", "linux-arm"),
    ],
)
def test_platform_string(system: str, machine: str, expected: str) -> None:
    assert platform_string(system, machine) == expected
