"""The snakepit_celery fault-tolerance tour (``make demo``).

Starts a private Redis, then shows what the package does, step by step,
checking each claim as it goes. Exits non-zero if any step did not behave as
narrated, and leaves no process behind.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

from snakepit_celery import (
    CircuitBreaker,
    CircuitOpenError,
    Classification,
    CrashBarrier,
    CrashInfo,
    Device,
    WorkerCrashedError,
    signals,
)
from snakepit_celery.celery.app_context import app_group
from snakepit_celery.hardware import Accelerator
from snakepit_celery.store import clear_store_cache, store_from_url
from snakepit_celery.testing.redis_server import (
    EmbeddedRedis,
    find_redis_server_binary,
    redis_url,
)
from snakepit_celery.testing.workers import WorkerNode

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Tour:
    """Narrates steps and remembers which checks failed."""

    failures: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def step(self, title: str) -> None:
        print(f"\n== {title}", flush=True)

    def say(self, text: str) -> None:
        print(f"   {text}", flush=True)

    def check(self, ok: bool, claim: str) -> None:
        mark = "ok " if ok else "FAIL"
        print(f"   [{mark}] {claim}", flush=True)
        if not ok:
            self.failures.append(claim)


def _failing_downstream() -> None:
    raise ConnectionError("model server refused the request")


def _breaker_worker(url: str, prefix: str, calls: int, outcomes: Queue[str]) -> None:
    """Run in a separate OS process: call a failing downstream through the shared breaker."""
    breaker = CircuitBreaker(
        "model-server",
        failure_threshold=5,
        reset_timeout=1.0,
        store=store_from_url(url, key_prefix=prefix),
    )
    for _ in range(calls):
        try:
            breaker.call(_failing_downstream)
        except CircuitOpenError as exc:
            outcomes.put(f"refused:{exc.retry_after:.2f}")
        except ConnectionError:
            outcomes.put("failed")
    outcomes.put("done")


def shared_breaker(tour: Tour, url: str) -> None:
    """Two OS processes hammer one downstream; the breaker they share opens once for both."""
    tour.step("1. A circuit breaker shared by two processes (state in Redis)")
    prefix = f"demo-{int(time.time())}"
    opened: list[dict[str, object]] = []
    closed: list[str] = []

    def on_open(sender: object, **kw: object) -> None:
        opened.append(kw)

    def on_close(sender: object, **kw: object) -> None:
        closed.append(str(kw.get("pool")))

    signals.breaker_opened.connect(on_open, weak=False)
    signals.breaker_closed.connect(on_close, weak=False)
    ctx = multiprocessing.get_context("fork")
    outcomes: Queue[str] = ctx.Queue()
    procs = [ctx.Process(target=_breaker_worker, args=(url, prefix, 6, outcomes)) for _ in range(2)]
    for proc in procs:
        proc.start()
    results: list[str] = []
    deadline = time.monotonic() + 20
    while results.count("done") < 2 and time.monotonic() < deadline:
        results.append(outcomes.get(timeout=max(0.1, deadline - time.monotonic())))
    for proc in procs:
        proc.join(timeout=5)
    failed = results.count("failed")
    refused = [r for r in results if r.startswith("refused")]
    tour.say(f"12 calls from 2 processes: {failed} reached the downstream, {len(refused)} refused")
    tour.check(
        5 <= failed <= 6,
        "the downstream saw failure_threshold=5 failures (plus at most one call already in flight)",
    )
    tour.check(len(refused) == 12 - failed, "every later call, from either process, was refused")

    breaker = CircuitBreaker(
        "model-server",
        failure_threshold=5,
        reset_timeout=1.0,
        store=store_from_url(url, key_prefix=prefix),
    )
    stats = breaker.stats()
    tour.say(f"stats seen from a third process: {stats.as_dict()}")
    tour.check(stats.state == "open", "the third process sees the breaker open")
    time.sleep(1.1)
    tour.check(breaker.state == "half_open", "after reset_timeout (Redis clock) it is half-open")
    breaker.call(lambda: "recovered")
    tour.check(breaker.state == "closed", "one successful probe closes it for everybody")
    tour.check(len(closed) == 1, "breaker_closed was signalled once")
    signals.breaker_opened.disconnect(on_open)
    signals.breaker_closed.disconnect(on_close)


@dataclass
class Fleet:
    """Two real worker nodes on the tour's Redis: ``cpu@demo`` and ``gpu@demo`` (one fake GPU)."""

    url: str
    prefix: str
    nodes: dict[str, WorkerNode] = field(default_factory=dict)
    workdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="snakepit-demo-"))

    def start(self) -> Fleet:
        cpu = {"accelerator": "cpu", "cuda": None, "mps": None, "rocm": None}
        gpu = {
            "accelerator": "cuda",
            "cuda": {
                "version": "12.4",
                "driver_version": "550.90.07",
                "cudnn_version": None,
                "devices": [
                    {
                        "id": 0,
                        "name": "NVIDIA L4 (simulated)",
                        "memory_total_mb": 23034,
                        "memory_free_mb": 22500,
                        "compute_capability": "8.9",
                        "uuid": "GPU-demo-0000",
                    }
                ],
            },
            "mps": None,
            "rocm": None,
        }
        for name, hw in (("cpu", cpu), ("gpu", gpu)):
            path = Path(self.workdir) / f"{name}.json"
            path.write_text(json.dumps(hw))
            env = {
                "DEMO_REDIS_URL": self.url,
                "DEMO_PREFIX": self.prefix,
                "DEMO_NODE": f"{name}@demo",
                "SNAKEPIT_HARDWARE": str(path),
            }
            node = WorkerNode("examples.demo_app", f"{name}@demo", env=env, cwd=str(ROOT))
            self.nodes[name] = node.start()
        for node in self.nodes.values():
            node.wait_ready(timeout=40)
        return self

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _executions(app_module: Any, kind: str) -> list[dict[str, Any]]:
    client = app_module._redis
    return [json.loads(raw) for raw in client.lrange(f"{app_module.PREFIX}:log:{kind}", 0, -1)]


def _wait_result(result: Any, timeout: float = 20.0) -> tuple[str, Any]:
    """Final state and value (or exception) of a task, waiting at most ``timeout`` s."""
    try:
        return "SUCCESS", result.get(timeout=timeout, propagate=True)
    except Exception as exc:  # the task's own exception, re-raised by Celery
        return result.state, exc


def celery_tour(tour: Tour, url: str) -> None:
    """Real Celery worker nodes: retries, a shared breaker, crashes, GPU routing."""
    prefix = f"demo-{int(time.time() * 1000) % 10**8}"
    os.environ["DEMO_REDIS_URL"] = url
    os.environ["DEMO_PREFIX"] = prefix
    tour.step("2. Two real Celery worker nodes (prefork, concurrency 2)")
    fleet = Fleet(url, prefix)
    try:
        fleet.start()
        tour.say("cpu@demo: CPU only   gpu@demo: one (simulated) CUDA GPU")
        demo = importlib.import_module("examples.demo_app")
        for step in (flaky_retries, fleet_breaker, crashes, gpu_routing):
            step(tour, demo)
        status(tour, demo)
        node_death(tour, demo, fleet)
    finally:
        fleet.stop()


def flaky_retries(tour: Tour, demo: Any) -> None:
    tour.step("3. A flaky task, retried by its RetryPolicy through Celery's own retry()")
    state, value = _wait_result(demo.flaky.delay())
    attempts = [run["attempt"] for run in _executions(demo, "flaky")]
    tour.say(f"executions (Celery retries counter): {attempts} -> {state} {value!r}")
    tour.check(attempts == [0, 1, 2], "it failed twice and was retried twice (RETRY, RETRY)")
    tour.check(state == "SUCCESS" and value == "scored", "the third attempt succeeded")


def fleet_breaker(tour: Tour, demo: Any) -> None:
    tour.step("4. A breaker shared by both nodes: the model server goes down")
    demo._redis.set(f"{demo.PREFIX}:model-server", "down")
    results = [demo.predict.delay(i) for i in range(10)]
    breaker = CircuitBreaker("model-server", store=demo.snakepit_store())
    deadline = time.monotonic() + 15
    while breaker.state != "open" and time.monotonic() < deadline:
        time.sleep(0.05)
    nodes = {run["node"] for run in _executions(demo, "predict")}
    reached = len(_executions(demo, "predict"))
    tour.say(f"{reached} calls reached the model server, from {sorted(nodes)}; breaker: open")
    tour.check(breaker.state == "open", "failures from both nodes opened ONE shared breaker")
    time.sleep(0.5)
    demo._redis.set(f"{demo.PREFIX}:model-server", "up")
    reached_while_down = len(_executions(demo, "predict"))
    tour.say("the model server is back; deferred tasks wait for reset_timeout, then a probe")
    outcomes = [_wait_result(r, timeout=30) for r in results]
    failed = [s for s, _ in outcomes if s != "SUCCESS"]
    succeeded = len(outcomes) - len(failed)
    tour.say(
        f"{len(failed)} failed (the calls that reached the dead server, in flight on 4 "
        f"processes as it opened), {succeeded} were deferred, then succeeded"
    )
    tour.check(
        len(failed) == reached_while_down and succeeded > 0,
        "every task the open breaker refused was deferred and later succeeded, none failed",
    )
    tour.check(breaker.state == "closed", "the first probe after reset_timeout closed the breaker")


def _untaint(barrier: CrashBarrier, demo: Any) -> None:
    """Lift every taint (as `celery snakepit untaint --all` would) and wait for the nodes."""
    barrier.clear_taint()
    store = demo.snakepit_store()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        nodes = store.node_list(group=app_group(demo.app))
        if len(nodes) == 2 and not any(n.get("tainted") or len(n["queues"]) < 3 for n in nodes):
            return
        time.sleep(0.2)


def crashes(tour: Tour, demo: Any) -> None:
    barrier = CrashBarrier(store=demo.snakepit_store())
    tour.step("5. An idempotent task segfaults its worker child")
    state, value = _wait_result(demo.segfault_once.delay(), timeout=30)
    runs = _executions(demo, "segfault_once")
    where = [run["node"] for run in runs]
    tour.say(f"executions on {where} -> {state} {value!r}")
    tainted = [t.worker_id for t in barrier.taints() if t.kind == "worker"]
    tour.say(f"tainted workers: {tainted}")
    tour.check(state == "SUCCESS" and len(runs) == 2, "it was re-run once and succeeded")
    tour.check(len(set(where)) == 2, "the re-run happened on the other node")
    tour.check(where[0] in tainted, "the node whose child crashed is tainted")
    _untaint(barrier, demo)

    tour.step("6. A non-idempotent task segfaults: it must not run twice")
    state, value = _wait_result(demo.segfault_plain.delay(), timeout=30)
    runs = _executions(demo, "segfault_plain")
    tour.say(f"ran {len(runs)} time(s) -> {state} {type(value).__name__}: {value}")
    tour.check(isinstance(value, WorkerCrashedError), "it ended FAILURE with WorkerCrashedError")
    tour.check(len(runs) == 1, "and ran exactly once")
    _untaint(barrier, demo)

    tour.step("7. A poison task that segfaults every time")
    state, value = _wait_result(demo.poison.delay(), timeout=30)
    runs = _executions(demo, "poison")
    tour.say(f"ran {len(runs)} time(s) -> {state} {type(value).__name__}")
    tour.check(len(runs) == 2, "it ran max_restarts + 1 = 2 times, then stopped for good")
    tour.check(isinstance(value, WorkerCrashedError), "its final state is WorkerCrashedError")
    listed = _snakepit_cli("quarantine", "list")
    for line in listed.stdout.splitlines():
        tour.say(line)
    tour.check(
        listed.returncode == 0 and "demo.poison" in listed.stdout,
        "its message waits in the quarantine (`snakepit quarantine replay ID` once fixed)",
    )
    _untaint(barrier, demo)


def gpu_routing(tour: Tour, demo: Any) -> None:
    tour.step("8. GPU routing: device=['cuda', 'cpu']")
    first = [_wait_result(demo.embed.delay(i))[1] for i in range(3)]
    nodes = {run["node"] for run in _executions(demo, "embed")}
    tour.say(f"devices: {first}, nodes: {sorted(nodes)}")
    tour.check(nodes == {"gpu@demo"} and set(first) == {"cuda:0"}, "they ran on the GPU node")
    barrier = CrashBarrier(store=demo.snakepit_store())
    info = CrashInfo(
        "CUDA error: uncorrectable ECC error encountered", None, None, Classification.GPU, "cuda:0"
    )
    barrier.taint_device("gpu@demo", Device(Accelerator.CUDA, 0, uuid="GPU-demo-0000"), info)
    tour.say("gpu@demo's GPU is tainted (uncorrectable ECC error)")
    time.sleep(1.1)
    later = [_wait_result(demo.embed.delay(i))[1] for i in range(3, 6)]
    tour.say(f"devices now: {later}")
    tour.check(set(later) == {"cpu"}, "new tasks fall back to the next preference, the CPU")
    _untaint(barrier, demo)


def _snakepit_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``celery -A examples.demo_app snakepit <args>``, as an operator would type it."""
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "examples.demo_app", "snakepit", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(ROOT),
        env={**os.environ},
        check=False,
    )


def status(tour: Tour, demo: Any) -> None:
    tour.step("9. celery snakepit status")
    proc = _snakepit_cli("status")
    for line in proc.stdout.splitlines():
        tour.say(line)
    tour.check(proc.returncode in (0, 1) and "gpu@demo" in proc.stdout, "status lists both nodes")


def _wait_runs(demo: Any, kind: str, count: int, timeout: float) -> list[dict[str, Any]]:
    """The executions of ``kind`` once there are ``count`` (fewer after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    runs = _executions(demo, kind)
    while len(runs) < count and time.monotonic() < deadline:
        time.sleep(0.05)
        runs = _executions(demo, kind)
    return runs


def node_death(tour: Tour, demo: Any, fleet: Fleet) -> None:
    tour.step("10. A whole node is SIGKILLed while its task runs (OOM killer, lost spot VM)")
    result = demo.long.delay(4.0)
    first = _wait_runs(demo, "long", 1, timeout=20)
    time.sleep(1.0)  # its node's heartbeat (every 0.5 s) records the task it holds
    victim = str(first[0]["node"]) if first else "?"
    node = fleet.nodes.get(victim.partition("@")[0])
    if node is None:
        tour.check(False, "the task started on a node")
        return
    killed = time.monotonic()
    node.kill()
    runs = _wait_runs(demo, "long", 2, timeout=30)
    moved = time.monotonic() - killed
    state, _ = _wait_result(result, timeout=30)
    where = [str(run["node"]) for run in runs]
    tour.say(f"killed {victim} (parent and children); runs on {where}, re-run after {moved:.1f}s")
    tour.check(
        len(runs) == 2 and where[1] != victim and moved < 10,
        "a live node's reaper saw its heartbeats stop and the task ran again on the live node "
        "within seconds (plain Celery: after the visibility timeout, 20 s here, 1 h by default)",
    )
    tour.check(state == "SUCCESS", "and succeeded")


STEPS: list[Callable[[Tour, str], None]] = [shared_breaker, celery_tour]


def main() -> int:
    """Run the tour; 0 when every check held."""
    tour = Tour()
    binary = find_redis_server_binary()
    server = EmbeddedRedis(binary).start() if binary else None
    url = server.url if server else redis_url()
    print(f"snakepit_celery tour — Redis at {url} ({'private server' if server else 'shared'})")
    try:
        for step in STEPS:
            step(tour, url)
    finally:
        clear_store_cache()
        if server is not None:
            server.stop()
    elapsed = time.monotonic() - tour.started
    if tour.failures:
        print(f"\n{len(tour.failures)} check(s) failed in {elapsed:.1f}s:")
        for claim in tour.failures:
            print(f" - {claim}")
        return 1
    print(f"\nAll checks held ({elapsed:.1f}s).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
