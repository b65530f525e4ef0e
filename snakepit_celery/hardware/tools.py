"""Running external probe tools safely (bounded in time, never raising), and reading their output.

A missing tool, a tool that exits non-zero, one that hangs past
``PROBE_TIMEOUT`` or prints garbage all mean "absent" to the callers; the
reason is logged at debug level.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from snakepit_celery.hardware.types import GpuDevice

__all__ = [
    "PROBE_TIMEOUT",
    "ToolOutput",
    "env_value",
    "parse_sysctl",
    "read_sysctl",
    "run_tool",
    "visible",
]

log = logging.getLogger(__name__)

#: Seconds any single external probe may take before it is killed (tests lower it).
PROBE_TIMEOUT = 2.0


@dataclass(frozen=True)
class ToolOutput:
    """What a tool printed and how it exited."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """True when the tool exited 0."""
        return self.returncode == 0


def run_tool(argv: Sequence[str], timeout: float | None = None) -> ToolOutput | None:
    """Run ``argv`` found on PATH; None when missing, hung past the timeout, or unrunnable.

    The tool runs in its own process group so a hung tool and any children it
    started are all killed at the deadline.
    """
    limit = PROBE_TIMEOUT if timeout is None else timeout
    executable = shutil.which(argv[0])
    if executable is None:
        log.debug("probe tool not found", extra={"tool": argv[0]})
        return None
    try:
        proc = subprocess.Popen(
            [executable, *argv[1:]],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,
        )
    except OSError as exc:
        log.debug("probe tool failed to start", extra={"tool": argv[0], "error": str(exc)})
        return None
    try:
        stdout, stderr = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        log.debug("probe tool timed out", extra={"tool": argv[0], "timeout": limit})
        return None
    if proc.returncode != 0:
        log.debug(
            "probe tool exited non-zero",
            extra={"tool": argv[0], "returncode": proc.returncode, "output": stdout.strip()[:200]},
        )
    return ToolOutput(proc.returncode, stdout, stderr)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, signal.SIGKILL)
        else:  # pragma: no cover - Windows
            proc.kill()
    except OSError:
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired, OSError):
        proc.communicate(timeout=1.0)


def parse_sysctl(text: str) -> dict[str, str]:
    """Parse ``name: value`` lines as ``sysctl`` prints them."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() and " " not in name.strip():
            values[name.strip()] = value.strip()
    return values


def read_sysctl() -> dict[str, str]:
    """The macOS ``hw.memsize`` and ``machdep.cpu.*`` values; empty when unavailable."""
    out = run_tool(["sysctl", "hw.memsize", "machdep.cpu"])
    # sysctl prints the names it knows even when another name fails, so a
    # non-zero exit still leaves usable lines.
    return parse_sysctl(out.stdout) if out is not None else {}


def _uuid_key(text: str) -> str:
    key = text.strip().lower()
    for prefix in ("gpu-", "0x"):
        key = key.removeprefix(prefix)
    return key


def visible(devices: Sequence[GpuDevice], spec: str | None) -> list[GpuDevice]:
    """Apply a ``CUDA_VISIBLE_DEVICES``-style ``spec`` and renumber the survivors from 0.

    ``None`` keeps every device. Otherwise the comma-separated entries are
    device indices or UUIDs (``GPU-…``; a unique prefix is enough), in the
    order the process will enumerate them. As in CUDA, the first invalid
    entry (``-1``, an unknown index, an ambiguous prefix, a duplicate, a MIG
    UUID this layer does not enumerate) ends the list, so ``""`` and ``"-1"``
    hide everything.
    """
    if spec is None:
        return list(devices)
    by_index = {d.id: d for d in devices}
    chosen: list[GpuDevice] = []
    for raw in spec.split(","):
        token = raw.strip()
        match: GpuDevice | None = None
        if token.isdigit():
            match = by_index.get(int(token))
        elif token.lower().startswith("gpu-") and len(token) > 4:
            wanted = _uuid_key(token)
            found = [d for d in devices if d.uuid and _uuid_key(d.uuid).startswith(wanted)]
            match = found[0] if len(found) == 1 else None
        if match is None or match in chosen:
            break
        chosen.append(match)
    return [replace(d, id=i) for i, d in enumerate(chosen)]


def env_value(environ: Mapping[str, str] | None, *names: str) -> str | None:
    """The first of ``names`` set in ``environ`` (default ``os.environ``), else None."""
    env = os.environ if environ is None else environ
    for name in names:
        if name in env:
            return env[name]
    return None
