"""Test helpers for the hardware layer: fake probe tools on PATH, fixtures, isolation.

Fakes sit only at the process boundary: small shell scripts named like the
real tools, printing real captured output (tests/fixtures/hardware/).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pynvml
import pytest

from snakepit_celery import hardware
from snakepit_celery.hardware import nvidia, tools

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hardware"

VISIBILITY_VARS = ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES")


def fixture_text(name: str) -> str:
    """The text of one captured fixture."""
    return (FIXTURES / name).read_text()


@dataclass
class Rule:
    """When the tool's arguments contain ``contains``, print ``stdout`` and exit ``code``."""

    contains: str
    stdout: str = ""
    code: int = 0
    hang: bool = False


@dataclass
class FakeBin:
    """A directory of fake tools that is the only thing on PATH."""

    path: Path
    calls_log: Path
    tools: dict[str, list[Rule]] = field(default_factory=dict)

    def add(self, name: str, *rules: Rule) -> None:
        """Install tool ``name`` answering by the first rule whose text occurs in its args."""
        cat = shutil.which("cat") or "/bin/cat"
        sleep = shutil.which("sleep") or "/bin/sleep"
        lines = ["#!/bin/sh", f'echo "{name} $*" >> {shlex.quote(str(self.calls_log))}']
        lines.append('case " $* " in')
        for i, rule in enumerate(rules):
            out = self.path / f".{name}.{i}.out"
            out.write_text(rule.stdout)
            lines.append(f"  *{_case_pattern(rule.contains)}*)")
            if rule.hang:
                lines.append(f"    exec {sleep} 30 ;;")
            else:
                lines.append(f"    {cat} {shlex.quote(str(out))}; exit {rule.code} ;;")
        lines.append("  *) exit 2 ;;")
        lines.append("esac")
        script = self.path / name
        script.write_text("\n".join(lines) + "\n")
        script.chmod(0o755)

    def calls(self, name: str) -> list[str]:
        """Argument lines the tool ``name`` was called with, in order."""
        if not self.calls_log.exists():
            return []
        prefix = f"{name} "
        return [
            line[len(prefix) :]
            for line in self.calls_log.read_text().splitlines()
            if line.startswith(prefix)
        ]


def _case_pattern(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_=., " else f"\\{c}" for c in text).replace(
        " ", "\\ "
    )


@pytest.fixture
def fake_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeBin:
    """An empty PATH of fake tools: every real probe tool is hidden."""
    path = tmp_path / "bin"
    path.mkdir()
    monkeypatch.setenv("PATH", str(path))
    return FakeBin(path, tmp_path / "calls.log")


@pytest.fixture(autouse=True)
def isolated_hardware(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No real NVML, no cuDNN, no visibility or override env, a short probe timeout, no cache."""

    def no_nvml() -> None:
        raise pynvml.NVMLError_LibraryNotFound()

    monkeypatch.setattr(pynvml, "nvmlInit", no_nvml)
    monkeypatch.setattr(nvidia, "cudnn_version", lambda: None)
    monkeypatch.setattr(tools, "PROBE_TIMEOUT", 0.5)
    for name in (*VISIBILITY_VARS, "SNAKEPIT_HARDWARE", "ROCM_PATH"):
        monkeypatch.delenv(name, raising=False)
    hardware.configure(None)
    yield
    hardware.configure(None)


# -- nvidia-smi --query-gpu output composed from real captured values --------------------
#
# No verbatim capture of the exact query exists (see fixtures/hardware/SOURCES.md), so the
# fake prints the documented csv,noheader,nounits format filled with values that were
# captured on real machines.

QUERY_ALL = "compute_cap"  # present only in the first (full) query


def mixed_2x_rows() -> list[dict[str, str]]:
    """TITAN V + RTX 5880 Ada (driver 570.86.15): names, indices, compute caps, UUIDs."""
    csv = fixture_text(
        "nvidia_smi_query_compute_cap_compute_mode_driver_version_name_index_csv_2x_570.86.15.csv"
    )
    header, *rows = [line.split(", ") for line in csv.strip().splitlines()]
    listing = fixture_text("nvidia_smi_L_2x_mixed_titanv_rtx5880ada_570.86.15.txt")
    uuids = [line.split("UUID: ")[1].rstrip(")") for line in listing.strip().splitlines()]
    result = []
    for row, uuid in zip(rows, uuids, strict=True):
        values = dict(zip(header, row, strict=True))
        values.update({"memory.total": "[N/A]", "memory.free": "[N/A]", "uuid": uuid})
        result.append(values)
    return result


def h100_8x_rows() -> list[dict[str, str]]:
    """8x H100 SXM (driver 565.57.01): index, name and memory from the captured table."""
    table = fixture_text("nvidia_smi_table_8x_h100_sxm_565.57.01.txt").splitlines()
    rows = []
    for i, line in enumerate(table):
        cells = line.strip("|").split("|")
        first = cells[0].split()
        if len(cells) == 3 and first and first[0].isdigit() and "NVIDIA" in cells[0]:
            used, total = table[i + 1].split("|")[2].replace("MiB", "").split("/")
            rows.append(
                {
                    "index": first[0],
                    "name": " ".join(first[1:-1]),
                    "memory.total": total.strip(),
                    "memory.free": str(int(total) - int(used)),
                    "uuid": "[N/A]",
                    "compute_cap": "9.0",
                    "driver_version": "565.57.01",
                }
            )
    return rows


def query_csv(rows: list[dict[str, str]], with_compute_cap: bool = True) -> str:
    """The csv,noheader,nounits lines for NVIDIA_SMI_FIELDS (minus compute_cap if asked)."""
    fields = [f for f in nvidia.NVIDIA_SMI_FIELDS if with_compute_cap or f != "compute_cap"]
    return "".join(", ".join(row[f] for f in fields) + "\n" for row in rows)


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as JSON to ``path`` and return the path."""
    path.write_text(json.dumps(data))
    return path


def env_without_visibility() -> dict[str, str]:
    """This process's environment minus GPU visibility and override variables."""
    return {k: v for k, v in os.environ.items() if k not in (*VISIBILITY_VARS, "SNAKEPIT_HARDWARE")}


def geforce_5x_rows() -> list[dict[str, str]]:
    """5 GeForce cards: names, indices and UUIDs from a captured name,pci.bus,index,uuid CSV."""
    csv = fixture_text("nvidia_smi_query_name_pcibus_index_uuid_csv_5x_geforce.csv")
    header, *rows = [line.split(", ") for line in csv.strip().splitlines()]
    result = []
    for row in rows:
        values = dict(zip(header, row, strict=True))
        result.append(
            {
                "index": values["index"],
                "name": values["name"],
                "memory.total": "[N/A]",
                "memory.free": "[N/A]",
                "uuid": values["uuid"],
                "compute_cap": "6.1",
                "driver_version": "[N/A]",
            }
        )
    return result
