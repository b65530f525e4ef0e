"""CrashBarrier: crash_info, retry gating, worker/device taints and crash ledger on real Redis."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from billiard.exceptions import WorkerLostError

from snakepit_celery import signals, testing
from snakepit_celery.barrier import CrashBarrier
from snakepit_celery.errors import (
    ConfigError,
    RetryExhaustedError,
    StoreUnavailableError,
    WorkerCrashedError,
)
from snakepit_celery.hardware.types import Accelerator, Device
from snakepit_celery.policy.barrier_config import CrashBarrierConfig
from snakepit_celery.policy.crash import Classification, CrashInfo
from snakepit_celery.policy.taints import Taint, TaintKind, device_key
from snakepit_celery.store import RedisStore, set_fail_open, store_from_url
from snakepit_celery.store.base import Store

SHORT_TAINT = 0.3
WAIT_LIMIT = 5.0

ILLEGAL_ACCESS = (
    "CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be "
    "asynchronously reported at some other API call, so the stacktrace below might be incorrect."
)
SEGV_LOST = "Worker exited prematurely: signal 11 (SIGSEGV) Job: 3."


@pytest.fixture
def store(redis_url: str, key_prefix: str) -> Store:
    return store_from_url(redis_url, key_prefix=key_prefix)


@pytest.fixture
def barrier(store: Store) -> CrashBarrier:
    config = CrashBarrierConfig(enabled=True, taint_duration=30.0)
    return CrashBarrier(config, pool="gpu-pool", store=store)


@pytest.fixture
def short_barrier(store: Store) -> CrashBarrier:
    config = CrashBarrierConfig(enabled=True, taint_duration=SHORT_TAINT)
    return CrashBarrier(config, pool="gpu-pool", store=store)


@pytest.fixture
def received() -> Iterator[dict[str, list[dict[str, Any]]]]:
    """Every worker_tainted / device_tainted signal sent during the test."""
    seen: dict[str, list[dict[str, Any]]] = {"worker_tainted": [], "device_tainted": []}

    def on_worker(sender: object, signal: object, **kwargs: Any) -> None:
        seen["worker_tainted"].append(kwargs)

    def on_device(sender: object, signal: object, **kwargs: Any) -> None:
        seen["device_tainted"].append(kwargs)

    signals.worker_tainted.connect(on_worker, weak=False)
    signals.device_tainted.connect(on_device, weak=False)
    yield seen
    signals.worker_tainted.disconnect(on_worker)
    signals.device_tainted.disconnect(on_device)


@pytest.fixture
def fail_closed() -> Iterator[None]:
    set_fail_open(False)
    yield
    set_fail_open(True)


def wait_until(condition: Callable[[], bool], limit: float = WAIT_LIMIT) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def cuda(index: int, uuid: str | None = None) -> Device:
    return Device(Accelerator.CUDA, index, uuid=uuid)


def segfault_info(device: str | None = None) -> CrashInfo:
    return CrashInfo(SEGV_LOST, -11, 11, Classification.SEGFAULT, device)


def gpu_info(reason: str = ILLEGAL_ACCESS) -> CrashInfo:
    return CrashInfo(reason, None, None, Classification.GPU, "cuda:0")


# -- construction -------------------------------------------------------------------


def test_config_may_be_a_settings_dict(store: Store) -> None:
    barrier = CrashBarrier({"enabled": True, "max_restarts": 2}, store=store)
    assert barrier.config == CrashBarrierConfig(enabled=True, max_restarts=2)
    assert barrier.enabled
    assert barrier.pool == "default"


def test_config_none_means_the_defaults(store: Store) -> None:
    assert CrashBarrier(None, store=store).config == CrashBarrierConfig()


def test_invalid_settings_dict_raises_config_error() -> None:
    with pytest.raises(ConfigError):
        CrashBarrier({"retry": "maybe"})


def test_store_may_be_a_url(redis_url: str, key_prefix: str) -> None:
    barrier = CrashBarrier(CrashBarrierConfig(), store=redis_url)
    assert isinstance(barrier.store, RedisStore)


# -- crash_info ------------------------------------------------------------------------


def test_crash_info_of_a_segfault_exit_code(barrier: CrashBarrier) -> None:
    info = barrier.crash_info(139)
    assert info is not None
    assert (info.classification, info.exit_code, info.signal) == ("segfault", 139, 11)


def test_crash_info_of_a_negative_multiprocessing_exit_code(barrier: CrashBarrier) -> None:
    info = barrier.crash_info(-9)
    assert info is not None
    assert info.classification == Classification.OOM


def test_crash_info_is_none_for_a_clean_exit(barrier: CrashBarrier) -> None:
    assert barrier.crash_info(0) is None
    assert barrier.crash_info(None) is None


def test_crash_info_is_none_when_the_classification_is_not_marked(barrier: CrashBarrier) -> None:
    assert barrier.crash_info(134) is None  # abort is not in the default mark_on


def test_describe_reports_a_crash_even_when_it_does_not_taint(barrier: CrashBarrier) -> None:
    info = barrier.describe(134)
    assert info is not None
    assert info.classification == Classification.ABORT


def test_crash_info_for_a_listed_exit_code(store: Store) -> None:
    barrier = CrashBarrier(CrashBarrierConfig(taint_on_exit_codes=(134, 70)), store=store)
    assert barrier.crash_info(134) is not None
    info = barrier.crash_info(70)
    assert info is not None
    assert info.classification == Classification.UNKNOWN
    assert barrier.crash_info(71) is None


def test_crash_info_of_billiards_worker_lost_error(barrier: CrashBarrier) -> None:
    info = barrier.crash_info(WorkerLostError(SEGV_LOST), device="cuda:1")
    assert info == CrashInfo(SEGV_LOST, None, 11, Classification.SEGFAULT, "cuda:1")


def test_crash_info_of_a_worker_lost_error_with_an_exit_status(barrier: CrashBarrier) -> None:
    info = barrier.crash_info(WorkerLostError("Worker exited prematurely: exitcode 137 Job: 0."))
    assert info is not None
    assert (info.classification, info.exit_code, info.signal) == ("oom", 137, 9)


def test_crash_info_of_a_worker_crashed_error(barrier: CrashBarrier) -> None:
    exc = WorkerCrashedError("gpu", exit_code=None, signal=None, worker_id="w1", device="cuda:3")
    info = barrier.crash_info(exc)
    assert info is not None
    assert info.classification == Classification.GPU
    assert info.device == "cuda:3"


def test_crash_info_of_a_worker_crashed_error_without_classification(
    barrier: CrashBarrier,
) -> None:
    info = barrier.crash_info(WorkerCrashedError("bogus", exit_code=139))
    assert info is not None
    assert info.classification == Classification.SEGFAULT


def test_crash_info_of_a_cuda_fatal_exception(barrier: CrashBarrier) -> None:
    info = barrier.crash_info(RuntimeError(ILLEGAL_ACCESS), device=cuda(0))
    assert info is not None
    assert info.classification == Classification.GPU
    assert info.device == "cuda:0"
    assert info.exit_code is None


def test_crash_info_finds_the_cuda_error_in_the_cause_chain(barrier: CrashBarrier) -> None:
    try:
        try:
            raise RuntimeError("CUDA error: unspecified launch failure")
        except RuntimeError as inner:
            raise ValueError("inference failed") from inner
    except ValueError as outer:
        info = barrier.crash_info(outer)
    assert info is not None
    assert info.classification == Classification.GPU
    assert "unspecified launch failure" in info.reason


def test_crash_info_of_retry_exhausted_over_a_cuda_error(barrier: CrashBarrier) -> None:
    exc = RetryExhaustedError(3, RuntimeError("CUDA error: misaligned address"))
    info = barrier.crash_info(exc)
    assert info is not None
    assert info.classification == Classification.GPU


def test_cuda_out_of_memory_is_not_a_crash(barrier: CrashBarrier) -> None:
    exc = RuntimeError(
        "CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 7.79 GiB total capacity; "
        "6.93 GiB already allocated; 11.31 MiB free; 7.01 GiB reserved in total by PyTorch)"
    )
    assert barrier.describe(exc) is None
    assert barrier.crash_info(exc) is None


def test_an_ordinary_exception_is_not_a_crash(barrier: CrashBarrier) -> None:
    assert barrier.crash_info(ValueError("bad input")) is None
    assert barrier.crash_info(KeyError("x")) is None


class VendorFaultError(RuntimeError):
    """Stands for a vendor library's exception that leaves the process unusable."""


def test_crash_info_for_a_listed_error_type(store: Store) -> None:
    barrier = CrashBarrier(
        CrashBarrierConfig(taint_on_error_types=("VendorFaultError",)), store=store
    )
    info = barrier.crash_info(VendorFaultError("driver wedged"))
    assert info is not None
    assert info.reason == "driver wedged"
    assert info.classification == Classification.UNKNOWN


def test_listed_error_type_taints_even_when_its_class_is_not_marked(store: Store) -> None:
    config = CrashBarrierConfig(mark_on=(), taint_on_error_types=(VendorFaultError,))
    barrier = CrashBarrier(config, store=store)
    assert barrier.crash_info(VendorFaultError("x")) is not None
    assert barrier.crash_info(139) is None


# -- retry gating and device decisions ---------------------------------------------------


def test_retry_allowed_follows_the_config(store: Store) -> None:
    barrier = CrashBarrier(CrashBarrierConfig(enabled=True, max_restarts=2), store=store)
    assert barrier.retry_allowed(True, 0)
    assert barrier.retry_allowed(True, 1)
    assert not barrier.retry_allowed(True, 2)
    assert not barrier.retry_allowed(False, 0)


def test_retry_is_never_allowed_when_disabled(store: Store) -> None:
    barrier = CrashBarrier(CrashBarrierConfig(retry="always"), store=store)
    assert not barrier.retry_allowed(True, 0)


def test_backoff_for_uses_the_config(barrier: CrashBarrier) -> None:
    assert [barrier.backoff_for(n) for n in range(5)] == [0.05, 0.1, 0.2, 0.2, 0.2]


def test_backoff_is_zero_in_testing_mode(barrier: CrashBarrier) -> None:
    with testing.disabled():
        assert barrier.backoff_for(1) == 0.0


@pytest.mark.parametrize(
    ("info", "taint"),
    [
        (gpu_info(ILLEGAL_ACCESS), True),
        (gpu_info("CUDA error: uncorrectable ECC error encountered"), True),
        (gpu_info("NVRM: Xid (PCI:0000:3b:00): 79, pid=1, GPU has fallen off the bus."), True),
        (gpu_info("CUDA error: device-side assert triggered"), False),
        (gpu_info("CUDA error: misaligned address"), False),
        (gpu_info("worker crashed (gpu)"), True),
        (segfault_info("cuda:0"), False),
    ],
)
def test_should_taint_device(barrier: CrashBarrier, info: CrashInfo, taint: bool) -> None:
    assert barrier.should_taint_device(info) is taint


def test_should_not_taint_device_when_switched_off(store: Store) -> None:
    barrier = CrashBarrier(CrashBarrierConfig(taint_device_on_cuda_fatal=False), store=store)
    assert not barrier.should_taint_device(gpu_info())


# -- worker taints ---------------------------------------------------------------------------


def test_taint_worker_marks_it_tainted(barrier: CrashBarrier) -> None:
    assert barrier.taint_worker("celery@a:101", segfault_info())
    assert barrier.worker_tainted("celery@a:101")
    assert not barrier.worker_tainted("celery@a:102")


def test_taint_worker_without_info(barrier: CrashBarrier) -> None:
    assert barrier.taint_worker("w1")
    assert barrier.worker_tainted("w1")


def test_taint_is_shared_through_redis(
    barrier: CrashBarrier, redis_url: str, key_prefix: str
) -> None:
    barrier.taint_worker("w1", segfault_info())
    other_process_view = CrashBarrier(
        barrier.config, pool="gpu-pool", store=RedisStore(redis_url, key_prefix=key_prefix)
    )
    assert other_process_view.worker_tainted("w1")


def test_taints_belong_to_their_pool(barrier: CrashBarrier, store: Store) -> None:
    barrier.taint_worker("w1", segfault_info())
    other_pool = CrashBarrier(barrier.config, pool="cpu-pool", store=store)
    assert not other_pool.worker_tainted("w1")
    assert other_pool.taints() == []


def test_worker_taint_expires_after_taint_duration(short_barrier: CrashBarrier) -> None:
    short_barrier.taint_worker("w1", segfault_info())
    assert short_barrier.worker_tainted("w1")
    assert wait_until(lambda: not short_barrier.worker_tainted("w1"))
    assert short_barrier.taints() == []


def test_worker_tainted_signal_is_sent_once(
    barrier: CrashBarrier, received: dict[str, list[dict[str, Any]]]
) -> None:
    info = segfault_info()
    assert barrier.taint_worker("w1", info)
    assert not barrier.taint_worker("w1", info)
    assert received["worker_tainted"] == [{"pool": "gpu-pool", "worker_id": "w1", "info": info}]


def test_worker_tainted_signal_is_sent_again_after_expiry(
    short_barrier: CrashBarrier, received: dict[str, list[dict[str, Any]]]
) -> None:
    short_barrier.taint_worker("w1", segfault_info())
    assert wait_until(lambda: not short_barrier.worker_tainted("w1"))
    assert short_barrier.taint_worker("w1", segfault_info())
    assert len(received["worker_tainted"]) == 2


def test_taints_lists_a_worker_taint(barrier: CrashBarrier) -> None:
    barrier.taint_worker("w1", segfault_info(device="cuda:2"))
    [taint] = barrier.taints()
    assert taint.kind == TaintKind.WORKER
    assert taint.worker_id == "w1"
    assert taint.node is None
    assert taint.device == "cuda:2"
    assert taint.classification == Classification.SEGFAULT
    assert taint.reason == SEGV_LOST
    assert 0 < taint.remaining <= 30.0
    assert taint.expires_at == pytest.approx(time.time() + taint.remaining, abs=5.0)


def test_taint_as_dict_is_json_safe(barrier: CrashBarrier) -> None:
    barrier.taint_worker("w1", segfault_info())
    [taint] = barrier.taints()
    data = taint.as_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["kind"] == "worker"
    assert data["classification"] == "segfault"


def test_long_reasons_are_truncated_in_the_store(barrier: CrashBarrier) -> None:
    reason = "Worker exited prematurely: signal 11 (SIGSEGV) " + "x" * 10_000
    barrier.taint_worker("w1", CrashInfo(reason, -11, 11, Classification.SEGFAULT))
    [taint] = barrier.taints()
    assert taint.reason is not None
    assert 0 < len(taint.reason) < len(reason)


# -- device taints ------------------------------------------------------------------------------


def test_device_taint_by_string(barrier: CrashBarrier) -> None:
    assert barrier.taint_device("gpu0@host", "cuda:0", gpu_info())
    assert barrier.device_tainted("gpu0@host", "cuda:0")
    assert not barrier.device_tainted("gpu0@host", "cuda:1")
    assert not barrier.device_tainted("gpu1@host", "cuda:0")


def test_device_string_and_uuid_less_device_share_a_key(barrier: CrashBarrier) -> None:
    barrier.taint_device("n1", cuda(1), gpu_info())
    assert barrier.device_tainted("n1", "cuda:1")


def test_device_is_keyed_by_gpu_uuid(barrier: CrashBarrier) -> None:
    """Indices differ between processes (CUDA_VISIBLE_DEVICES); the UUID names the GPU."""
    uuid = "GPU-5c1f3d3e-8f6a-4b9e-a0c2-0123456789ab"
    assert device_key(cuda(0, uuid)) == uuid
    barrier.taint_device("n1", cuda(0, uuid), gpu_info())
    assert barrier.device_tainted("n1", cuda(3, uuid))
    assert barrier.device_tainted("n1", uuid)
    assert not barrier.device_tainted("n1", cuda(0, "GPU-another"))


def test_taints_lists_a_device_taint_with_its_uuid(barrier: CrashBarrier) -> None:
    uuid = "GPU-5c1f3d3e-8f6a-4b9e-a0c2-0123456789ab"
    barrier.taint_device("gpu0@host", cuda(0, uuid), gpu_info())
    [taint] = barrier.taints()
    assert taint == Taint(
        kind=TaintKind.DEVICE,
        worker_id=None,
        node="gpu0@host",
        device="cuda:0",
        expires_at=taint.expires_at,
        remaining=taint.remaining,
        classification=Classification.GPU,
        reason=ILLEGAL_ACCESS,
        uuid=uuid,
    )


def test_device_tainted_signal_is_sent_once(
    barrier: CrashBarrier, received: dict[str, list[dict[str, Any]]]
) -> None:
    info = gpu_info()
    assert barrier.taint_device("n1", cuda(0), info)
    assert not barrier.taint_device("n1", cuda(0), info)
    assert received["device_tainted"] == [
        {"pool": "gpu-pool", "node": "n1", "device": "cuda:0", "info": info}
    ]
    assert received["worker_tainted"] == []


def test_device_taint_expires_after_taint_duration(short_barrier: CrashBarrier) -> None:
    short_barrier.taint_device("n1", "cuda:0", gpu_info())
    assert short_barrier.device_tainted("n1", "cuda:0")
    assert wait_until(lambda: not short_barrier.device_tainted("n1", "cuda:0"))


# -- clear_taint ----------------------------------------------------------------------------------


@pytest.fixture
def tainted(barrier: CrashBarrier) -> CrashBarrier:
    barrier.taint_worker("w1", segfault_info())
    barrier.taint_worker("w2", segfault_info())
    barrier.taint_device("n1", "cuda:0", gpu_info())
    barrier.taint_device("n1", cuda(1, "GPU-1"), gpu_info())
    barrier.taint_device("n2", "cuda:0", gpu_info())
    return barrier


def test_clear_taint_of_one_worker(tainted: CrashBarrier) -> None:
    assert tainted.clear_taint("w1") == 1
    assert not tainted.worker_tainted("w1")
    assert tainted.worker_tainted("w2")
    assert tainted.clear_taint("w1") == 0


def test_clear_taint_of_one_device(tainted: CrashBarrier) -> None:
    assert tainted.clear_taint(node="n1", device="cuda:0") == 1
    assert not tainted.device_tainted("n1", "cuda:0")
    assert tainted.device_tainted("n2", "cuda:0")


def test_clear_taint_of_a_device_by_uuid(tainted: CrashBarrier) -> None:
    assert tainted.clear_taint(node="n1", device=cuda(1, "GPU-1")) == 1
    assert not tainted.device_tainted("n1", cuda(1, "GPU-1"))


def test_clear_taint_of_every_device_of_a_node(tainted: CrashBarrier) -> None:
    assert tainted.clear_taint(node="n1") == 2
    remaining = {(t.kind, t.worker_id, t.node) for t in tainted.taints()}
    assert remaining == {
        (TaintKind.WORKER, "w1", None),
        (TaintKind.WORKER, "w2", None),
        (TaintKind.DEVICE, None, "n2"),
    }


def test_clear_taint_without_arguments_clears_the_pool(tainted: CrashBarrier) -> None:
    assert tainted.clear_taint() == 5
    assert tainted.taints() == []


def test_clear_taint_of_a_device_needs_its_node(tainted: CrashBarrier) -> None:
    with pytest.raises(TypeError):
        tainted.clear_taint(device="cuda:0")


def test_taint_again_after_clear_sends_the_signal_again(
    barrier: CrashBarrier, received: dict[str, list[dict[str, Any]]]
) -> None:
    barrier.taint_worker("w1", segfault_info())
    barrier.clear_taint("w1")
    assert barrier.taint_worker("w1", segfault_info())
    assert len(received["worker_tainted"]) == 2


# -- testing mode --------------------------------------------------------------------------------


def test_testing_mode_taints_nothing(
    barrier: CrashBarrier, received: dict[str, list[dict[str, Any]]]
) -> None:
    with testing.disabled():
        assert not barrier.taint_worker("w1", segfault_info())
        assert not barrier.taint_device("n1", "cuda:0", gpu_info())
        assert not barrier.worker_tainted("w1")
        assert barrier.taints() == []
    assert not barrier.worker_tainted("w1")
    assert not barrier.device_tainted("n1", "cuda:0")
    assert received == {"worker_tainted": [], "device_tainted": []}


def test_testing_mode_hides_existing_taints(barrier: CrashBarrier) -> None:
    barrier.taint_worker("w1", segfault_info())
    with testing.disabled():
        assert not barrier.worker_tainted("w1")
        assert barrier.clear_taint() == 0
    assert barrier.worker_tainted("w1")


# -- store unavailable ----------------------------------------------------------------------------


@pytest.fixture
def dead_barrier(key_prefix: str) -> CrashBarrier:
    """A barrier whose Redis refuses connections (nothing listens on port 1)."""
    store = RedisStore("redis://127.0.0.1:1/0", key_prefix=key_prefix)
    return CrashBarrier(CrashBarrierConfig(enabled=True), store=store)


def test_unreachable_store_fails_open(dead_barrier: CrashBarrier) -> None:
    assert not dead_barrier.taint_worker("w1", segfault_info())
    assert not dead_barrier.worker_tainted("w1")
    assert not dead_barrier.device_tainted("n1", "cuda:0")
    assert dead_barrier.taints() == []
    assert dead_barrier.clear_taint() == 0
    entry = dead_barrier.ledger_start("t1", "w1", lease=30.0)
    assert (entry.starts, entry.crashes, entry.running_on) == (0, 0, None)
    assert dead_barrier.ledger_get("t1") is None


@pytest.mark.usefixtures("fail_closed")
def test_unreachable_store_raises_when_fail_open_is_off(dead_barrier: CrashBarrier) -> None:
    with pytest.raises(StoreUnavailableError):
        dead_barrier.taint_worker("w1", segfault_info())
    with pytest.raises(StoreUnavailableError):
        dead_barrier.worker_tainted("w1")
    with pytest.raises(StoreUnavailableError):
        dead_barrier.ledger_start("t1", "w1", lease=30.0)


# -- crash ledger ------------------------------------------------------------


def test_ledger_ttl_is_at_least_a_day(barrier: CrashBarrier, store: Store) -> None:
    assert barrier.ledger_ttl == 86400.0
    many = CrashBarrier(CrashBarrierConfig(max_restarts=47), store=store)
    assert many.ledger_ttl == 48 * 3600.0


def test_ledger_counts_a_finished_run(barrier: CrashBarrier) -> None:
    before = barrier.ledger_start("t1", "w1", lease=30.0)
    assert (before.starts, before.finishes, before.crashes) == (0, 0, 0)
    barrier.ledger_finish("t1")
    entry = barrier.ledger_get("t1")
    assert entry is not None
    assert (entry.starts, entry.finishes, entry.crashes, entry.running_on) == (1, 1, 0, None)


def test_ledger_counts_a_crash(barrier: CrashBarrier) -> None:
    barrier.ledger_start("t1", "w1", lease=30.0)
    after = barrier.ledger_crash("t1")
    assert (after.starts, after.crashes) == (1, 1)


def test_ledger_refuses_a_duplicate_while_the_lease_lives(barrier: CrashBarrier) -> None:
    barrier.ledger_start("t1", "w1", lease=30.0)
    entry = barrier.ledger_start("t1", "w2", lease=30.0)
    assert entry.running_on == "w1"


def test_ledger_counts_an_expired_lease_as_a_crash(barrier: CrashBarrier) -> None:
    barrier.ledger_start("t1", "w1", lease=0.2)
    time.sleep(0.3)
    entry = barrier.ledger_start("t1", "w2", lease=30.0)
    assert entry.crashes == 1
    assert entry.running_on is None


def test_ledger_hold_extends_the_holders_lease(barrier: CrashBarrier) -> None:
    barrier.ledger_start("t1", "w1", lease=30.0)
    assert barrier.ledger_hold({"t1": "w1"}, lease=30.0) == {"t1": True}
    assert barrier.ledger_hold({"t1": "w2"}, lease=30.0) == {"t1": False}


def test_ledger_entry_carries_the_ledger_ttl(
    barrier: CrashBarrier, redis_client: redis.Redis, key_prefix: str
) -> None:
    barrier.ledger_start("t-ttl", "w1", lease=30.0)
    keys = [k for k in redis_client.scan_iter(match=f"{key_prefix}*") if b"t-ttl" in k]
    assert keys
    ttls = [redis_client.pttl(k) for k in keys]
    assert all(86000 * 1000 < ttl <= 86400 * 1000 for ttl in ttls)
