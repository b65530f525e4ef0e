"""GPU health: the findings table, the NVML watcher (fake NVML at the boundary), the service."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from snakepit_celery import signals
from snakepit_celery.celery.bootsteps.gpu_recycle import recycle_over_gpu_memory
from snakepit_celery.celery.bootsteps.gpu_watch import GpuHealthService
from snakepit_celery.celery.crash import ChildRecycled
from snakepit_celery.errors import ConfigError
from snakepit_celery.hardware.gpu_health import NvmlWatcher, process_gpu_memory_mb
from snakepit_celery.hardware.gpu_notice import read_notice
from snakepit_celery.policy.gpu_health import (
    HEALTH_ACTIONS,
    FindingKind,
    GpuFinding,
    HealthClass,
    TaintBackoff,
    xid_class,
)
from snakepit_celery.store.memory import MemoryStore
from snakepit_celery.testing import wait_until
from tests.support.fake_nvml import (
    DOUBLE_BIT_ECC_EVENT,
    XID_EVENT,
    FakeNvml,
    add_event,
    scenario,
    write_scenario,
)

GPU0, GPU1 = "GPU-test-0000", "GPU-test-0001"
DEVICES = [
    {"kind": "cuda", "index": 0, "uuid": GPU0, "name": "A100"},
    {"kind": "cuda", "index": 1, "uuid": GPU1, "name": "A100"},
]


# -- the table ---------------------------------------------------------------------------


@pytest.mark.parametrize("xid", [46, 48, 63, 64, 79, 95])
def test_xids_that_need_a_reset_are_hardware_class(xid: int) -> None:
    assert xid_class(xid) is HealthClass.HARDWARE
    assert HEALTH_ACTIONS[HealthClass.HARDWARE].sticky


@pytest.mark.parametrize("xid", [13, 31, 43, 45, 68])
def test_application_xids_blame_the_task_not_the_gpu(xid: int) -> None:
    action = HEALTH_ACTIONS[xid_class(xid)]
    assert action.blame_task and not action.taint


def test_contained_ecc_recycles_without_taint() -> None:
    action = HEALTH_ACTIONS[xid_class(94)]
    assert action.recycle_child and not action.taint


def test_unknown_xid_is_blamed_on_the_gpu_for_a_while() -> None:
    finding = GpuFinding(GPU0, FindingKind.XID, xid=1234)
    assert not finding.known
    assert finding.health_class is HealthClass.TRANSIENT


def test_non_xid_findings_have_a_class() -> None:
    assert GpuFinding(GPU0, FindingKind.GPU_LOST).health_class is HealthClass.HARDWARE
    assert GpuFinding(GPU0, FindingKind.ECC_RISING).health_class is HealthClass.TRANSIENT


def test_taint_doubles_inside_the_window_and_is_capped() -> None:
    backoff = TaintBackoff(base=10.0, window=100.0, cap=35.0)
    assert backoff.duration([], 1000.0) == 10.0
    assert backoff.duration([950.0], 1000.0) == 20.0
    assert backoff.duration([940.0, 950.0, 990.0], 1000.0) == 35.0
    assert backoff.duration([800.0], 1000.0) == 10.0  # outside the window


@pytest.mark.parametrize("kwargs", [{"base": 0}, {"window": -1}, {"cap": 1.0, "base": 5.0}])
def test_bad_backoff_is_a_config_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        TaintBackoff(**kwargs)


# -- the watcher ---------------------------------------------------------------------------


@pytest.fixture
def nvml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = write_scenario(tmp_path / "nvml.json", scenario(2))
    FakeNvml(path).install(monkeypatch.setattr)
    return path


class Seen:
    def __init__(self) -> None:
        self.findings: list[GpuFinding] = []

    def __call__(self, finding: GpuFinding) -> None:
        self.findings.append(finding)

    def kinds(self) -> list[tuple[str, FindingKind, int | None]]:
        return [(f.uuid, f.kind, f.xid) for f in self.findings]


def watch(seen: Seen, **kwargs: Any) -> NvmlWatcher:
    watcher = NvmlWatcher([GPU0, GPU1], seen, event_timeout=0.02, probe_interval=0.05, **kwargs)
    watcher.start()
    return watcher


def test_xid_event_is_reported_for_its_gpu(nvml: Path) -> None:
    seen = Seen()
    watcher = watch(seen)
    try:
        add_event(nvml, GPU1, XID_EVENT, 79)
        wait_until(lambda: seen.findings, 5, what="a finding")
        assert seen.kinds() == [(GPU1, FindingKind.XID, 79)]
    finally:
        watcher.stop()


def test_double_bit_ecc_event_is_reported(nvml: Path) -> None:
    seen = Seen()
    watcher = watch(seen)
    try:
        add_event(nvml, GPU0, DOUBLE_BIT_ECC_EVENT, 0)
        wait_until(lambda: seen.findings, 5, what="a finding")
        assert seen.kinds() == [(GPU0, FindingKind.DOUBLE_BIT_ECC, None)]
    finally:
        watcher.stop()


def test_probe_samples_free_memory(nvml: Path) -> None:
    watcher = watch(Seen())
    try:
        wait_until(lambda: len(watcher.memory()) == 2, 5, what="memory samples")
        sample = watcher.memory()[GPU0]
        assert (sample.free_mb, sample.total_mb) == (81919, 81920)
    finally:
        watcher.stop()


def test_state_findings_are_reported_once_while_they_last(nvml: Path) -> None:
    data = scenario(2)
    data["gpus"][0]["pages_pending"] = 1
    data["gpus"][1]["remap"] = [0, 0, 0, 1]
    write_scenario(nvml, data)
    seen = Seen()
    watcher = watch(seen)
    try:
        wait_until(lambda: len(seen.findings) >= 2, 5, what="findings")
        time.sleep(0.3)  # several probe rounds
        assert sorted(seen.kinds()) == [
            (GPU0, FindingKind.PAGES_PENDING, None),
            (GPU1, FindingKind.REMAP_FAILURE, None),
        ]
    finally:
        watcher.stop()


def test_lost_gpu_and_rising_ecc_are_found_by_the_probe(nvml: Path) -> None:
    seen = Seen()
    watcher = watch(seen)
    try:
        wait_until(lambda: len(watcher.memory()) == 2, 5, what="first probe")
        data = scenario(2)
        data["gpus"][0]["lost"] = True
        data["gpus"][1]["ecc"] = 3
        write_scenario(nvml, data)
        wait_until(lambda: len(seen.findings) >= 2, 5, what="findings")
        assert {(u, k) for u, k, _ in seen.kinds()} == {
            (GPU0, FindingKind.GPU_LOST),
            (GPU1, FindingKind.ECC_RISING),
        }
    finally:
        watcher.stop()


def test_no_nvml_means_the_watcher_ends_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    import pynvml

    def missing() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", missing)
    seen = Seen()
    watcher = watch(seen)
    wait_until(lambda: not watcher.alive, 5, what="the watcher to end")
    assert not watcher.ready.is_set() and seen.findings == []


def test_raising_nvml_calls_never_stop_the_watch(
    nvml: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pynvml

    def broken(*_: Any) -> Any:
        raise RuntimeError("driver hiccup")

    for name in ("nvmlDeviceGetRemappedRows", "nvmlDeviceGetTotalEccErrors", "nvmlDeviceGetUUID"):
        monkeypatch.setattr(pynvml, name, broken)
    seen = Seen()
    watcher = watch(seen)
    try:
        add_event(nvml, GPU0, XID_EVENT, 79)  # its UUID cannot be read: dropped
        time.sleep(0.3)
        assert watcher.alive and seen.findings == []
        assert len(watcher.memory()) == 2
    finally:
        watcher.stop()


def test_hanging_nvml_holds_only_the_watcher_thread(nvml: Path) -> None:
    data = scenario(2)
    data["hang"] = True
    write_scenario(nvml, data)
    watcher = watch(Seen())
    started = time.monotonic()
    watcher.stop(timeout=0.2)
    assert time.monotonic() - started < 1.0
    assert threading.main_thread().is_alive()


# -- the service -------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def service(nvml: Path) -> Any:
    store = MemoryStore()
    clock = Clock()
    changes: list[int] = []
    svc = GpuHealthService(
        "gpu-node",
        DEVICES,
        store,
        backoff=TaintBackoff(base=10.0, window=100.0, cap=40.0),
        on_change=lambda: changes.append(1),
        clock=clock,
    )
    svc.watcher.start()
    wait_until(svc.watcher.ready.is_set, 5, what="NVML open")
    svc.test_clock = clock  # type: ignore[attr-defined]
    svc.changes = changes  # type: ignore[attr-defined]
    yield svc
    svc.stop()


def taint_members(store: MemoryStore) -> list[str]:
    return [t.member for t in store.taint_list("default")]


def test_xid_79_taints_that_gpu_by_uuid_sticky(service: GpuHealthService) -> None:
    received: list[dict[str, Any]] = []
    signals.gpu_health.connect(
        lambda sender, **kw: received.append(kw), weak=False, dispatch_uid="test-gpu"
    )
    try:
        service.handle(GpuFinding(GPU0, FindingKind.XID, xid=79))
    finally:
        signals.gpu_health.disconnect(dispatch_uid="test-gpu")
    store: Any = service.store
    assert taint_members(store) == [f"device:gpu-node:{GPU0}"]
    assert store.taint_list("default")[0].remaining > 86400
    assert received[0]["gpu_uuid"] == GPU0 and received[0]["health_class"] == "hardware"
    assert received[0]["action"] == "tainted" and received[0]["xid"] == 79
    assert service.counts[("hardware", 79)] == 1
    assert service.status()[GPU0]["health"] == "hardware"
    assert service.status()[GPU1]["health"] == "ok"
    notice = read_notice()
    assert notice is not None and notice.tainted == {GPU0}
    assert service.changes  # type: ignore[attr-defined]


def test_application_xid_leaves_the_gpu_untainted(service: GpuHealthService) -> None:
    service.handle(GpuFinding(GPU1, FindingKind.XID, xid=13))
    assert taint_members(service.store) == []  # type: ignore[arg-type]
    notice = read_notice()
    assert notice is not None and GPU1 in notice.recycle and not notice.tainted
    assert service.counts[("application", 13)] == 1


def test_unknown_xid_is_logged_counted_and_taints_for_a_while(
    service: GpuHealthService, caplog: pytest.LogCaptureFixture
) -> None:
    service.handle(GpuFinding(GPU1, FindingKind.XID, xid=4242))
    assert "unknown Xid 4242" in caplog.text
    assert service.counts[("transient", 4242)] == 1
    remaining = service.store.taint_list("default")[0].remaining
    assert 10.0 < remaining < 60.0


def test_transient_taint_ends_only_after_a_passing_probe(service: GpuHealthService) -> None:
    service.handle(GpuFinding(GPU1, FindingKind.ECC_RISING))
    clock: Clock = service.test_clock  # type: ignore[attr-defined]
    service.tick()
    assert taint_members(service.store) == [f"device:gpu-node:{GPU1}"]  # type: ignore[arg-type]
    clock.now += 11
    service.tick()
    assert taint_members(service.store) == []  # type: ignore[arg-type]
    assert service.status()[GPU1]["health"] == "ok"


def test_failing_probe_at_expiry_doubles_the_taint(service: GpuHealthService, nvml: Path) -> None:
    service.handle(GpuFinding(GPU1, FindingKind.ECC_RISING))
    clock: Clock = service.test_clock  # type: ignore[attr-defined]
    clock.now += 11
    data = scenario(2)
    data["gpus"][1]["lost"] = True
    write_scenario(nvml, data)
    service.tick()
    taint = service.taints[GPU1]
    assert taint.health_class is HealthClass.HARDWARE  # lost: sticky now


def test_retaint_inside_the_window_doubles(service: GpuHealthService) -> None:
    clock: Clock = service.test_clock  # type: ignore[attr-defined]
    service.handle(GpuFinding(GPU1, FindingKind.ECC_RISING))
    clock.now += 11
    service.tick()  # probe passes: back
    service.handle(GpuFinding(GPU1, FindingKind.ECC_RISING))
    assert service.taints[GPU1].until == pytest.approx(clock.now + 20.0)


def test_sticky_taint_stays_until_an_operator_untaints(service: GpuHealthService) -> None:
    service.handle(GpuFinding(GPU0, FindingKind.DOUBLE_BIT_ECC))
    clock: Clock = service.test_clock  # type: ignore[attr-defined]
    clock.now += 10**6
    service.tick()
    assert taint_members(service.store) == [f"device:gpu-node:{GPU0}"]  # type: ignore[arg-type]
    service.store.taint_clear("default", f"device:gpu-node:{GPU0}")
    service.tick()
    assert GPU0 not in service.taints and service.status()[GPU0]["health"] == "ok"


def test_node_without_gpu_uuids_starts_no_watcher() -> None:
    svc = GpuHealthService("cpu-node", [], MemoryStore())
    assert not svc.start() and not svc.watcher.alive


def test_findings_are_counted_by_class_and_xid_in_prometheus(service: GpuHealthService) -> None:
    from prometheus_client import REGISTRY

    from snakepit_celery.metrics.gpu import enable_gpu_metrics

    enable_gpu_metrics()
    labels = {"node": "gpu-node", "health_class": "hardware", "xid": "79", "action": "tainted"}
    before = REGISTRY.get_sample_value("snakepit_gpu_health_findings_total", labels) or 0.0
    service.handle(GpuFinding(GPU0, FindingKind.XID, xid=79))
    assert REGISTRY.get_sample_value("snakepit_gpu_health_findings_total", labels) == before + 1


# -- max_gpu_memory_per_child --------------------------------------------------------------


def test_child_over_its_gpu_memory_limit_is_recycled_after_the_task(nvml: Path) -> None:
    data = scenario(2)
    data["processes"] = [
        {"pid": os.getpid(), "uuid": GPU0, "mb": 3000},
        {"pid": os.getpid(), "uuid": GPU1, "mb": 1500},
        {"pid": 1, "uuid": GPU0, "mb": 60000},
    ]
    write_scenario(nvml, data)
    assert process_gpu_memory_mb(os.getpid()) == 4500
    recycle_over_gpu_memory(5000, "t1", "SUCCESS")  # under the limit: stays
    recycle_over_gpu_memory(None, "t1", "SUCCESS")  # no limit
    with pytest.raises(ChildRecycled) as caught:
        recycle_over_gpu_memory(4000, "t1", "SUCCESS")
    assert caught.value.task_id == "t1" and "4500 MB" in caught.value.error


def test_unknown_per_process_memory_never_recycles(monkeypatch: pytest.MonkeyPatch) -> None:
    import pynvml

    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: time.sleep(5))
    started = time.monotonic()
    assert process_gpu_memory_mb(os.getpid(), timeout=0.1) is None
    recycle_over_gpu_memory(1, "t1", "SUCCESS")
    assert time.monotonic() - started < 2.0


def test_gpu_health_is_a_fleet_level_event_carrying_the_gpu_uuid_and_node() -> None:
    from celery import Celery

    from snakepit_celery.celery.events import signal_event

    type_, body = signal_event(
        Celery(set_as_current=False),
        "gpu_health",
        {"node": "gpu@host", "gpu_uuid": GPU0, "xid": 79, "health_class": "hardware"},
    )
    assert type_ == "snakepit-gpu-health"
    assert body["gpu_uuid"] == GPU0 and body["node"] == "gpu@host" and "uuid" not in body


def test_status_is_empty_until_nvml_answers() -> None:
    svc = GpuHealthService("gpu-node", DEVICES, MemoryStore())
    assert svc.status() == {}


def test_gpu_settings_are_checked_and_name_the_setting() -> None:
    from snakepit_celery.config import load_settings

    settings = load_settings(
        {"snakepit_gpu_health": {"base": 5}, "snakepit_max_gpu_memory_per_child": 2048}, env={}
    )
    assert settings.gpu_health == TaintBackoff(base=5)
    assert settings.max_gpu_memory_per_child == 2048
    with pytest.raises(ConfigError, match=r'snakepit_gpu_health\["base"\]'):
        load_settings({"snakepit_gpu_health": {"base": -1}}, env={})
    with pytest.raises(ConfigError, match="snakepit_max_gpu_memory_per_child"):
        load_settings({"snakepit_max_gpu_memory_per_child": 0}, env={})
    env = {"SNAKEPIT_GPU_HEALTH": '{"cap": 60}', "SNAKEPIT_MAX_GPU_MEMORY_PER_CHILD": "512"}
    from_env = load_settings({}, env=env)
    assert from_env.gpu_health.cap == 60 and from_env.max_gpu_memory_per_child == 512
