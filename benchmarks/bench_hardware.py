"""Cost of ``hardware.identity()``: the first call (detection) against cached calls.

A worker detects once at start; routing and lock checks call ``identity()``
afterwards, so the cached call must be nearly free. Each round clears the
cache (``hardware.clear_cache()``), times the first ``identity()`` (a full
probe of this host: psutil, /proc/cpuinfo, NVML / nvidia-smi, rocm-smi) and
then the mean of many cached calls. Reported as the ratio first / cached.
"""

from __future__ import annotations

import os
import statistics
import time

from benchmarks.apps.fleet import machine_details
from snakepit_celery import hardware
from snakepit_celery.hardware import ENV_VAR

ROUNDS = 5
CACHED_CALLS = 20_000


def measure() -> tuple[list[float], list[float]]:
    """(first-call seconds, cached per-call seconds) of every round."""
    first: list[float] = []
    cached: list[float] = []
    for _ in range(ROUNDS):
        hardware.clear_cache()
        started = time.perf_counter()
        hardware.identity()
        first.append(time.perf_counter() - started)
        started = time.perf_counter()
        for _ in range(CACHED_CALLS):
            hardware.identity()
        cached.append((time.perf_counter() - started) / CACHED_CALLS)
    hardware.clear_cache()
    return first, cached


def report(first: list[float], cached: list[float], accelerator: str) -> str:
    """The Markdown section for RESULTS.md."""
    ratio = statistics.median(first) / statistics.median(cached)
    return "\n".join(
        [
            machine_details(),
            "",
            f"`hardware.identity()` on this host (accelerator: {accelerator}), {ROUNDS} rounds; "
            f"cached = mean of {CACHED_CALLS:,} calls after the first.",
            "",
            "| call | min µs | median µs | max µs |",
            "|---|---|---|---|",
            f"| first (detection, after clear_cache) | {min(first) * 1e6:.0f} "
            f"| {statistics.median(first) * 1e6:.0f} | {max(first) * 1e6:.0f} |",
            f"| cached | {min(cached) * 1e6:.2f} | {statistics.median(cached) * 1e6:.2f} "
            f"| {max(cached) * 1e6:.2f} |",
            "",
            f"First call / cached call (medians): {ratio:,.0f}x.",
        ]
    )


def main() -> str:
    """Measure with real detection (any ``SNAKEPIT_HARDWARE`` override set aside)."""
    override = os.environ.pop(ENV_VAR, None)
    try:
        first, cached = measure()
        accelerator = str(hardware.identity()["accelerator"])
    finally:
        hardware.clear_cache()
        if override is not None:
            os.environ[ENV_VAR] = override
    return report(first, cached, accelerator)


if __name__ == "__main__":
    print(main())
