"""GPU health and placement: Xid-to-taint latency, placement decision cost, heartbeat size.

1. A faked NVML (``pynvml`` functions replaced, as in the tests) delivers an
   Xid 79 event to a node's ``GpuHealthService`` on real Redis; another
   process polls the store and notes when the GPU's taint appears. Target:
   under 1 s (one event wait of 0.2 s at most, one store write).
2. ``place_by_memory`` over a fleet of 16 nodes x 8 GPUs: the router's pure
   decision, per call (target: at most 50 µs), next to ``decide_route``.
3. Bytes a GPU adds to a node's heartbeat record (free/total memory, health).
"""

from __future__ import annotations

import json
import multiprocessing
import queue
import statistics
import time
from types import SimpleNamespace
from typing import Any

import pynvml

from benchmarks.apps.fleet import machine_details
from snakepit_celery.celery.bootsteps.gpu_watch import GpuHealthService
from snakepit_celery.policy.placement import place_by_memory
from snakepit_celery.policy.routing import decide_route, parse_prefs
from snakepit_celery.policy.snapshot import FleetSnapshot
from snakepit_celery.store import store_from_url
from snakepit_celery.testing.redis_server import redis_url as find_redis_url

TRIALS = 10
DECISIONS = 20_000
GPU = "GPU-bench-0000"
NODE = "bench-gpu@host"
MEMBER = f"device:{NODE}:{GPU}"


class _Nvml:
    """Just enough NVML for one GPU: events come from ``events``."""

    def __init__(self) -> None:
        self.events: queue.Queue[int] = queue.Queue()

    def wait(self, _events: Any, timeout_ms: int) -> Any:
        try:
            xid = self.events.get(timeout=timeout_ms / 1000)
        except queue.Empty:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT) from None
        return SimpleNamespace(device=0, eventType=0x0008, eventData=xid)

    def install(self) -> dict[str, Any]:
        """Replace pynvml's functions; returns the originals (for ``restore``)."""
        memory = SimpleNamespace(total=81920 * 2**20, free=81000 * 2**20, used=920 * 2**20)
        fakes: dict[str, Any] = {
            "nvmlInit": lambda: None,
            "nvmlShutdown": lambda: None,
            "nvmlDeviceGetHandleByUUID": lambda uuid: 0,
            "nvmlDeviceGetUUID": lambda handle: GPU,
            "nvmlEventSetCreate": lambda: "events",
            "nvmlDeviceGetSupportedEventTypes": lambda handle: 0xFFFF,
            "nvmlDeviceRegisterEvents": lambda handle, mask, events: None,
            "nvmlEventSetWait": self.wait,
            "nvmlEventSetFree": lambda events: None,
            "nvmlDeviceGetMemoryInfo": lambda handle: memory,
            "nvmlDeviceGetRetiredPagesPendingStatus": lambda handle: 0,
            "nvmlDeviceGetRemappedRows": lambda handle: (0, 0, 0, 0),
            "nvmlDeviceGetTotalEccErrors": lambda handle, kind, counter: 0,
        }
        originals = {name: getattr(pynvml, name) for name in fakes}
        for name, fake in fakes.items():
            setattr(pynvml, name, fake)
        return originals


def _poll(url: str, prefix: str, seen: Any) -> None:
    """In another process: report ``time.time()`` when the GPU's taint shows in the store."""
    store = store_from_url(url, key_prefix=prefix)
    while True:
        if any(t.member == MEMBER for t in store.taint_list("default")):
            seen.put(time.time())
            return
        time.sleep(0.002)


def taint_latency(url: str) -> list[float]:
    """Seconds from an Xid event to its taint being visible to another process, per trial."""
    nvml = _Nvml()
    originals = nvml.install()
    prefix = f"bench-gpu-{int(time.time())}"
    store = store_from_url(url, key_prefix=prefix)
    devices = [{"kind": "cuda", "index": 0, "uuid": GPU, "name": "A100"}]
    service = GpuHealthService(NODE, devices, store, probe_interval=60.0)
    service.start()
    context = multiprocessing.get_context("fork")
    latencies: list[float] = []
    try:
        for _ in range(TRIALS):
            store.taint_clear("default")
            service.taints.clear()
            seen = context.Queue()
            poller = context.Process(target=_poll, args=(url, prefix, seen), daemon=True)
            poller.start()
            time.sleep(0.3)
            sent = time.time()
            nvml.events.put(79)
            latencies.append(seen.get(timeout=10) - sent)
            poller.join(5)
    finally:
        service.stop()
        store.taint_clear("default")
        for name, original in originals.items():
            setattr(pynvml, name, original)
    return latencies


def _fleet() -> FleetSnapshot:
    nodes = [
        {
            "node": f"node{n:02d}",
            "devices": [
                {
                    "kind": "cuda",
                    "index": i,
                    "uuid": f"GPU-{n}-{i}",
                    "memory_free_mb": 1000 * ((n * 8 + i) % 80),
                    "memory_total_mb": 81920,
                }
                for i in range(8)
            ],
        }
        for n in range(16)
    ]
    return FleetSnapshot(tuple(nodes), frozenset({"device:node03:GPU-3-1"}), {"GPU-5-5": 20000})


def decision_cost() -> tuple[float, float]:
    """(µs per ``place_by_memory``, µs per ``decide_route``) over a 16 x 8 GPU fleet."""
    snapshot = _fleet()
    prefs = parse_prefs(["cuda", "cpu"])
    started = time.perf_counter()
    for _ in range(DECISIONS):
        place_by_memory(prefs, snapshot, 30000)
    placement = (time.perf_counter() - started) / DECISIONS
    started = time.perf_counter()
    for _ in range(DECISIONS):
        decide_route(prefs, snapshot)
    route = (time.perf_counter() - started) / DECISIONS
    return placement * 1e6, route * 1e6


def heartbeat_bytes_per_gpu() -> int:
    """JSON bytes one GPU's memory and health add to its device entry in the heartbeat."""
    device = {"kind": "cuda", "index": 0, "uuid": GPU, "name": "NVIDIA A100-SXM4-80GB"}
    watched = {**device, "health": "ok", "memory_free_mb": 81000, "memory_total_mb": 81920}
    return len(json.dumps(watched)) - len(json.dumps(device))


def main() -> str:
    url = find_redis_url().rstrip("/")
    latencies = taint_latency(url)
    placement, route = decision_cost()
    extra = heartbeat_bytes_per_gpu()
    return "\n".join(
        [
            machine_details(),
            "",
            f"Xid 79 event (faked NVML) to the GPU's taint visible to another process, "
            f"{TRIALS} trials (target < 1 s):",
            "",
            "| min ms | median ms | max ms |",
            "|---|---|---|",
            f"| {min(latencies) * 1e3:.0f} | {statistics.median(latencies) * 1e3:.0f} "
            f"| {max(latencies) * 1e3:.0f} |",
            "",
            f"Placement decision over 16 nodes x 8 GPUs (mean of {DECISIONS:,}; target <= 50 µs): "
            f"`place_by_memory` {placement:.1f} µs, `decide_route` {route:.1f} µs.",
            "",
            f"Heartbeat: each watched GPU adds {extra} bytes of JSON (free/total memory, health).",
        ]
    )
