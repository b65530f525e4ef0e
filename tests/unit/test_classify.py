"""Crash classification, GPU error actions and the crash barrier's config (pure, no Redis)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snakepit_celery.errors import ConfigError
from snakepit_celery.policy.barrier_config import CrashBarrierConfig
from snakepit_celery.policy.crash import (
    Classification,
    CrashInfo,
    RetryMode,
    classify,
    describe_crash,
    parse_crash,
)
from snakepit_celery.policy.gpu_errors import GpuErrorKind, gpu_error_action

# -- exit codes and signals -------------------------------------------------------


@pytest.mark.parametrize(
    ("exit_code", "expected"),
    [
        (139, Classification.SEGFAULT),
        (-11, Classification.SEGFAULT),
        (135, Classification.SEGFAULT),  # SIGBUS: also an invalid memory access
        (-7, Classification.SEGFAULT),
        (134, Classification.ABORT),
        (-6, Classification.ABORT),
        (137, Classification.OOM),
        (-9, Classification.OOM),
        (0, Classification.UNKNOWN),
        (1, Classification.UNKNOWN),
        (2, Classification.UNKNOWN),
        (143, Classification.UNKNOWN),  # SIGTERM: a shutdown, not a crash class
        (-15, Classification.UNKNOWN),
        (11, Classification.UNKNOWN),  # a plain exit status 11 is not a signal
        (255, Classification.UNKNOWN),
    ],
)
def test_classify_exit_code(exit_code: int, expected: Classification) -> None:
    assert classify(exit_code) == expected


@pytest.mark.parametrize(
    ("signal", "expected"),
    [
        (11, Classification.SEGFAULT),
        (6, Classification.ABORT),
        (9, Classification.OOM),
        (15, Classification.UNKNOWN),
    ],
)
def test_classify_signal_number(signal: int, expected: Classification) -> None:
    assert classify(signal=signal) == expected


def test_classify_without_anything_is_unknown() -> None:
    assert classify() == Classification.UNKNOWN
    assert classify(None, "") == Classification.UNKNOWN


def test_classification_compares_equal_to_its_string() -> None:
    assert classify(139) == "segfault"
    assert str(Classification.GPU) == "gpu"


# -- Celery / billiard / shell / kernel messages -------------------------------------------

CRASH_MESSAGES = [
    # billiard.pool: WorkerLostError for a child killed by a signal (negative exitcode)
    ("Worker exited prematurely: signal 11 (SIGSEGV) Job: 3.", Classification.SEGFAULT),
    ("Worker exited prematurely: signal 9 (SIGKILL) Job: 0.", Classification.OOM),
    ("Worker exited prematurely: signal 6 (SIGABRT) Job: 12.", Classification.ABORT),
    ("Worker exited prematurely: signal 7 (SIGBUS) Job: 1.", Classification.SEGFAULT),
    ("Worker exited prematurely: signal 15 (SIGTERM) Job: 4.", Classification.UNKNOWN),
    # billiard.pool: WorkerLostError for a positive exit status
    ("Worker exited prematurely: exitcode 137 Job: 3.", Classification.OOM),
    ("Worker exited prematurely: exitcode 139 Job: 5.", Classification.SEGFAULT),
    ("Worker exited prematurely: exitcode 134 Job: 5.", Classification.ABORT),
    ("Worker exited prematurely: exitcode 1 Job: 2.", Classification.UNKNOWN),
    ("Worker exited prematurely: exitcode 155 Job: 2.", Classification.UNKNOWN),
    # Celery's worker log when the pool replaces a dead child
    (
        "Process 'ForkPoolWorker-2' pid:4242 exited with 'signal 11 (SIGSEGV)'",
        Classification.SEGFAULT,
    ),
    ("Process 'ForkPoolWorker-1' pid:17 exited with 'signal 9 (SIGKILL)'", Classification.OOM),
    # shells, containers, faulthandler, glibc, kernel log
    ("bash: line 1:  4242 Segmentation fault      (core dumped) python run.py", "segfault"),
    ("Fatal Python error: Segmentation fault", Classification.SEGFAULT),
    ("Fatal Python error: Aborted", Classification.ABORT),
    ("free(): double free detected in tcache 2\nAborted (core dumped)", Classification.ABORT),
    ("Out of memory: Killed process 4242 (python) total-vm:92345678kB", Classification.OOM),
    ("container exited with exit code 137 (OOMKilled)", Classification.OOM),
    ("subprocess exited with exit status 139", Classification.SEGFAULT),
    ("task failed: ValueError('bad input')", Classification.UNKNOWN),
]


@pytest.mark.parametrize(("message", "expected"), CRASH_MESSAGES)
def test_classify_crash_message(message: str, expected: str) -> None:
    assert classify(message=message) == expected


# -- GPU errors ---------------------------------------------------------------------

GPU_FATAL_MESSAGES = [
    # (message, kind, taint_device, retry_same_input)
    (
        "RuntimeError: CUDA error: an illegal memory access was encountered\n"
        "CUDA kernel errors might be asynchronously reported at some other API call, so the "
        "stacktrace below might be incorrect.\nFor debugging consider passing "
        "CUDA_LAUNCH_BLOCKING=1.",
        GpuErrorKind.ILLEGAL_ADDRESS,
        True,
        True,
    ),
    (
        "RuntimeError: CUDA error: unspecified launch failure",
        GpuErrorKind.LAUNCH_FAILURE,
        True,
        True,
    ),
    (
        "RuntimeError: CUDA error: device-side assert triggered\nCompile with "
        "`TORCH_USE_CUDA_DSA` to enable device-side assertions.",
        GpuErrorKind.DEVICE_ASSERT,
        False,
        False,
    ),
    ("RuntimeError: CUDA error: misaligned address", GpuErrorKind.KERNEL_FAULT, False, True),
    (
        "RuntimeError: CUDA error: an illegal instruction was encountered",
        GpuErrorKind.KERNEL_FAULT,
        False,
        True,
    ),
    ("CUDA error: invalid program counter", GpuErrorKind.KERNEL_FAULT, False, True),
    ("CUDA error: hardware stack error", GpuErrorKind.KERNEL_FAULT, False, True),
    (
        "RuntimeError: CUDA error: the launch timed out and was terminated",
        GpuErrorKind.LAUNCH_TIMEOUT,
        False,
        True,
    ),
    (
        "RuntimeError: CUDA error: uncorrectable ECC error encountered",
        GpuErrorKind.ECC,
        True,
        True,
    ),
    (
        "RuntimeError: CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling "
        "`cublasSgemm( handle, opa, opb, m, n, k, &alpha, a, lda, b, ldb, &beta, c, ldc)`",
        GpuErrorKind.LIBRARY,
        False,
        True,
    ),
    ("RuntimeError: cuDNN error: CUDNN_STATUS_EXECUTION_FAILED", GpuErrorKind.LIBRARY, False, True),
    (
        "torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/c10d/"
        "ProcessGroupNCCL.cpp:1691, unhandled cuda error (run with NCCL_DEBUG=INFO for details), "
        "NCCL version 2.18.1",
        GpuErrorKind.LIBRARY,
        False,
        True,
    ),
    (
        "RuntimeError: Found no NVIDIA driver on your system... CUDA error: "
        "no CUDA-capable device is detected",
        GpuErrorKind.DEVICE_LOST,
        True,
        True,
    ),
    (
        "NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, GPU has fallen off the bus.\n"
        "RuntimeError: CUDA error: unknown error",
        GpuErrorKind.DEVICE_LOST,
        True,
        True,
    ),
    (
        "Memory access fault by GPU node-2 (Agent handle: 0x55d1c2a3b4c0) on address "
        "0x7f2a1c000000. Reason: Page not present or supervisor privilege.",
        GpuErrorKind.MEMORY_FAULT,
        True,
        True,
    ),
    (
        "RuntimeError: HIP error: an illegal memory access was encountered\nHIP kernel errors "
        "might be asynchronously reported at some other API call",
        GpuErrorKind.ILLEGAL_ADDRESS,
        False,
        True,
    ),
    ("RuntimeError: HIP error: hipErrorLaunchFailure", GpuErrorKind.CUDA_ERROR, False, True),
    ("RuntimeError: CUDA error: unknown error", GpuErrorKind.CUDA_ERROR, False, True),
    ("cudaErrorIllegalAddress: an illegal memory access", GpuErrorKind.ILLEGAL_ADDRESS, True, True),
]


@pytest.mark.parametrize(("message", "kind", "taint", "retry_same"), GPU_FATAL_MESSAGES)
def test_gpu_fatal_message_classifies_as_gpu(
    message: str, kind: GpuErrorKind, taint: bool, retry_same: bool
) -> None:
    assert classify(message=message) == Classification.GPU


@pytest.mark.parametrize(("message", "kind", "taint", "retry_same"), GPU_FATAL_MESSAGES)
def test_gpu_fatal_message_action(
    message: str, kind: GpuErrorKind, taint: bool, retry_same: bool
) -> None:
    action = gpu_error_action(message)
    assert action is not None
    assert action.kind == kind
    assert action.fatal
    assert action.recycle
    assert action.taint_device is taint
    assert action.retry_same_input is retry_same


def test_sticky_cuda_errors_are_marked_sticky() -> None:
    action = gpu_error_action("CUDA error: an illegal memory access was encountered")
    assert action is not None
    assert action.sticky
    assert action.code == 700


GPU_OOM_MESSAGES = [
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 7.79 GiB "
    "total capacity; 6.93 GiB already allocated; 11.31 MiB free; 7.01 GiB reserved in total by "
    "PyTorch) If reserved memory is >> allocated memory try setting max_split_size_mb to avoid "
    "fragmentation.",
    "torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a "
    "total capacity of 79.15 GiB of which 1.12 GiB is free.",
    "RuntimeError: CUDA error: out of memory",
    "RuntimeError: CUDA driver error: out of memory",
    "torch.OutOfMemoryError: HIP out of memory. Tried to allocate 1.50 GiB. GPU 0 has a total "
    "capacity of 63.98 GiB of which 512.00 MiB is free.",
    "RuntimeError: MPS backend out of memory (MPS allocated: 17.80 GB, other allocations: "
    "40.00 KB, max allowed: 18.13 GB).",
    "RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
    "cudaErrorMemoryAllocation: out of memory",
    "hipErrorOutOfMemory",
]


@pytest.mark.parametrize("message", GPU_OOM_MESSAGES)
def test_gpu_out_of_memory_is_not_a_gpu_crash(message: str) -> None:
    assert classify(message=message) == Classification.UNKNOWN


@pytest.mark.parametrize("message", GPU_OOM_MESSAGES)
def test_gpu_out_of_memory_is_the_retriable_gpu_oom_kind(message: str) -> None:
    action = gpu_error_action(message)
    assert action is not None
    assert action.kind == GpuErrorKind.GPU_OOM
    assert str(action.kind) == "gpu_oom"
    assert not action.fatal
    assert not action.sticky
    assert not action.recycle
    assert not action.taint_device
    assert action.retry_same_input


def test_gpu_out_of_memory_then_oom_kill_is_oom() -> None:
    assert classify(137, "CUDA out of memory. Tried to allocate 20.00 MiB") == Classification.OOM


def test_gpu_text_names_the_cause_of_an_abort() -> None:
    message = (
        "Memory access fault by GPU node-1 (Agent handle: 0x1) on address 0x7f. Reason: Page "
        "not present or supervisor privilege."
    )
    assert classify(134, message) == Classification.GPU


def test_ordinary_text_is_not_a_gpu_error() -> None:
    assert gpu_error_action("ValueError: could not convert string to float: 'abc'") is None
    assert gpu_error_action(None) is None
    assert gpu_error_action("") is None


def test_java_style_out_of_memory_is_not_gpu_oom() -> None:
    assert gpu_error_action("java.lang.OutOfMemoryError: Java heap space") is None


@pytest.mark.parametrize(
    ("message", "xid", "taint"),
    [
        ("NVRM: Xid (PCI:0000:3b:00): 13, pid=4242, Graphics Exception", 13, False),
        ("NVRM: Xid (PCI:0000:3b:00): 31, pid=4242, Ch 00000010, MMU Fault", 31, False),
        ("NVRM: Xid (PCI:0000:3b:00): 43, pid=4242, Ch 00000008", 43, False),
        ("NVRM: Xid (PCI:0000:3b:00): 45, pid=4242, Ch 00000008", 45, False),
        ("NVRM: Xid (PCI:0000:3b:00): 68, pid=4242, NVDEC0 Exception", 68, False),
        ("NVRM: Xid (PCI:0000:3b:00): 94, pid=4242, Contained: SM (0x1)", 94, False),
        ("NVRM: Xid (PCI:0000:3b:00): 46, pid=4242, GPU stopped processing", 46, True),
        ("NVRM: Xid (PCI:0000:3b:00): 48, pid=4242, An uncorrectable double bit error", 48, True),
        ("NVRM: Xid (PCI:0000:3b:00): 63, pid=4242, Row Remapper: New row marked", 63, True),
        ("NVRM: Xid (PCI:0000:3b:00): 64, pid=4242, Row Remapper: failure", 64, True),
        ("NVRM: Xid (PCI:0000:3b:00): 79, pid=4242, GPU has fallen off the bus.", 79, True),
        ("NVRM: Xid (PCI:0000:3b:00): 95, pid=4242, Uncontained: FBHUB", 95, True),
        ("nvml event: Xid 48 on GPU-5c1f3d3e", 48, True),
        ("Xid 999 reported", 999, False),
    ],
)
def test_xid_table(message: str, xid: int, taint: bool) -> None:
    action = gpu_error_action(message)
    assert action is not None
    assert action.xid == xid
    assert action.taint_device is taint
    assert action.recycle
    assert classify(message=message) == Classification.GPU


def test_tainting_xid_wins_over_an_application_error_text() -> None:
    message = "CUDA error: misaligned address\nNVRM: Xid (PCI:0000:3b:00): 48, pid=1, DBE"
    action = gpu_error_action(message)
    assert action is not None
    assert action.xid == 48
    assert action.taint_device


def test_specific_cuda_error_wins_over_an_application_xid() -> None:
    message = "NVRM: Xid (PCI:0000:3b:00): 31, pid=1\nCUDA error: unspecified launch failure"
    action = gpu_error_action(message)
    assert action is not None
    assert action.kind == GpuErrorKind.LAUNCH_FAILURE


def test_gpu_error_action_as_dict_is_json_safe() -> None:
    action = gpu_error_action("CUDA error: device-side assert triggered")
    assert action is not None
    data = action.as_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["kind"] == "device_assert"
    assert data["retry_same_input"] is False


# -- parse_crash / describe_crash ---------------------------------------------------


@pytest.mark.parametrize(
    ("exit_code", "message", "expected"),
    [
        (139, None, (139, 11)),
        (-9, None, (-9, 9)),
        (1, None, (1, None)),
        (None, "Worker exited prematurely: signal 11 (SIGSEGV) Job: 3.", (None, 11)),
        (None, "Worker exited prematurely: exitcode 137 Job: 3.", (137, 9)),
        (None, "killed by SIGKILL", (None, 9)),
        (None, "nothing to see", (None, None)),
    ],
)
def test_parse_crash(
    exit_code: int | None, message: str | None, expected: tuple[int | None, int | None]
) -> None:
    assert parse_crash(exit_code, message) == expected


def test_describe_crash_from_exit_code() -> None:
    info = describe_crash(-11)
    assert info == CrashInfo("signal 11 (SIGSEGV)", -11, 11, Classification.SEGFAULT, None)


def test_describe_crash_keeps_the_message_as_reason() -> None:
    message = "Worker exited prematurely: signal 9 (SIGKILL) Job: 0."
    info = describe_crash(message=message, device="cuda:1")
    assert info.reason == message
    assert info.signal == 9
    assert info.classification == Classification.OOM
    assert info.device == "cuda:1"


def test_crash_info_as_dict_is_json_safe() -> None:
    info = describe_crash(message="CUDA error: an illegal memory access was encountered")
    data = info.as_dict()
    assert json.loads(json.dumps(data)) == data
    assert data == {
        "reason": "CUDA error: an illegal memory access was encountered",
        "exit_code": None,
        "signal": None,
        "classification": "gpu",
        "device": None,
    }


# -- CrashBarrierConfig -----------------------------------------------------------------


def test_config_defaults_match_the_api() -> None:
    config = CrashBarrierConfig()
    assert config.enabled is False
    assert config.retry == "idempotent"
    assert config.max_restarts == 1
    assert config.taint_duration == 60.0
    assert config.backoff == (0.05, 0.1, 0.2)
    assert config.mark_on == ("segfault", "oom", "gpu")
    assert config.taint_on_exit_codes == ()
    assert config.taint_on_error_types == ()
    assert config.taint_device_on_cuda_fatal is True


def test_config_normalises_sequences_to_tuples_and_enums() -> None:
    config = CrashBarrierConfig(
        retry="always", backoff=[1, 2], mark_on=["abort"], taint_on_exit_codes=[3]
    )
    assert config.retry is RetryMode.ALWAYS
    assert config.backoff == (1.0, 2.0)
    assert config.mark_on == (Classification.ABORT,)
    assert config.taint_on_exit_codes == (3,)
    same = CrashBarrierConfig(
        retry="always", backoff=(1.0, 2.0), mark_on=("abort",), taint_on_exit_codes=(3,)
    )
    assert config == same
    assert hash(config) == hash(same)


@pytest.mark.parametrize(("value", "mode"), [(True, RetryMode.ALWAYS), (False, RetryMode.NEVER)])
def test_config_reads_boolean_retry_like_upstream(value: bool, mode: RetryMode) -> None:
    assert CrashBarrierConfig(retry=value).retry is mode  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"retry": "sometimes"}, "retry"),
        ({"retry": None}, "retry"),
        ({"enabled": "yes"}, "enabled"),
        ({"max_restarts": -1}, "max_restarts"),
        ({"max_restarts": 1.5}, "max_restarts"),
        ({"max_restarts": True}, "max_restarts"),
        ({"taint_duration": -1.0}, "taint_duration"),
        ({"taint_duration": 0}, "taint_duration"),
        ({"taint_duration": math.inf}, "taint_duration"),
        ({"taint_duration": math.nan}, "taint_duration"),
        ({"taint_duration": "60"}, "taint_duration"),
        ({"backoff": (0.1, -0.2)}, "backoff"),
        ({"backoff": ("fast",)}, "backoff"),
        ({"mark_on": ("segfault", "explosion")}, "mark_on"),
        ({"mark_on": "meltdown"}, "mark_on"),
        ({"taint_on_exit_codes": ("137",)}, "taint_on_exit_codes"),
        ({"taint_on_error_types": (42,)}, "taint_on_error_types"),
        ({"taint_on_error_types": (int,)}, "taint_on_error_types"),
        ({"taint_device_on_cuda_fatal": 1}, "taint_device_on_cuda_fatal"),
    ],
)
def test_config_rejects_invalid_values(kwargs: dict[str, object], setting: str) -> None:
    with pytest.raises(ConfigError) as caught:
        CrashBarrierConfig(**kwargs)  # type: ignore[arg-type]
    assert caught.value.setting == setting
    assert setting in str(caught.value)


def test_config_error_names_the_allowed_retry_modes() -> None:
    with pytest.raises(ConfigError, match="always, idempotent, never"):
        CrashBarrierConfig(retry="sometimes")


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        CrashBarrierConfig(max_restarts=-5)


def test_from_dict_reads_settings() -> None:
    config = CrashBarrierConfig.from_dict(
        {"enabled": True, "retry": "never", "taint_duration": 5, "mark_on": ["gpu"]}
    )
    assert config == CrashBarrierConfig(
        enabled=True, retry="never", taint_duration=5.0, mark_on=("gpu",)
    )


def test_from_dict_of_nothing_is_the_default() -> None:
    assert CrashBarrierConfig.from_dict({}) == CrashBarrierConfig()
    assert CrashBarrierConfig.from_dict(None) == CrashBarrierConfig()


def test_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(ConfigError) as caught:
        CrashBarrierConfig.from_dict({"enabled": True, "max_retries": 3})
    assert caught.value.setting == "max_retries"
    assert "max_restarts" in str(caught.value)


def test_from_dict_hints_that_durations_are_seconds() -> None:
    with pytest.raises(ConfigError, match="seconds"):
        CrashBarrierConfig.from_dict({"taint_duration_ms": 60000})


def test_from_dict_rejects_a_non_mapping() -> None:
    with pytest.raises(ConfigError):
        CrashBarrierConfig.from_dict(["enabled"])  # type: ignore[arg-type]


def test_as_dict_round_trips_through_json() -> None:
    config = CrashBarrierConfig(
        enabled=True,
        retry="always",
        max_restarts=3,
        taint_duration=1.5,
        backoff=(0.5,),
        mark_on=("gpu", "abort"),
        taint_on_exit_codes=(1, 70),
        taint_on_error_types=("RuntimeError", KeyError),
        taint_device_on_cuda_fatal=False,
    )
    data = json.loads(json.dumps(config.as_dict()))
    assert data["taint_on_error_types"] == ["RuntimeError", "builtins.KeyError"]
    again = CrashBarrierConfig.from_dict(data)
    assert again.as_dict() == config.as_dict()


def test_merged_overrides_only_named_settings() -> None:
    app = CrashBarrierConfig(enabled=True, max_restarts=2)
    task = app.merged({"retry": "always"})
    assert (task.enabled, task.max_restarts, task.retry) == (True, 2, "always")
    assert app.merged(None) is app


# -- retry_allowed / backoff_for --------------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "idempotent", "attempt", "allowed"),
    [
        ((True, "idempotent", 1), True, 0, True),
        ((True, "idempotent", 1), True, 1, False),
        ((True, "idempotent", 1), False, 0, False),
        ((True, "idempotent", 3), True, 2, True),
        ((True, "idempotent", 3), True, 3, False),
        ((True, "always", 1), False, 0, True),
        ((True, "always", 1), True, 0, True),
        ((True, "always", 1), False, 1, False),
        ((True, "always", 0), True, 0, False),
        ((True, "never", 5), True, 0, False),
        ((True, "never", 5), False, 0, False),
        ((False, "always", 5), True, 0, False),
        ((False, "idempotent", 5), True, 0, False),
    ],
)
def test_retry_allowed_truth_table(
    setup: tuple[bool, str, int], idempotent: bool, attempt: int, allowed: bool
) -> None:
    enabled, retry, max_restarts = setup
    config = CrashBarrierConfig(enabled=enabled, retry=retry, max_restarts=max_restarts)
    assert config.retry_allowed(idempotent, attempt) is allowed


@pytest.mark.parametrize(
    ("backoff", "attempt", "delay"),
    [
        ((0.05, 0.1, 0.2), 0, 0.05),
        ((0.05, 0.1, 0.2), 1, 0.1),
        ((0.05, 0.1, 0.2), 2, 0.2),
        ((0.05, 0.1, 0.2), 3, 0.2),
        ((0.05, 0.1, 0.2), 50, 0.2),
        ((0.05, 0.1, 0.2), -1, 0.05),
        ((1.0,), 4, 1.0),
        ((), 0, 0.0),
    ],
)
def test_backoff_for_repeats_the_last_value(
    backoff: tuple[float, ...], attempt: int, delay: float
) -> None:
    assert CrashBarrierConfig(backoff=backoff).backoff_for(attempt) == delay


# -- taintable / error types ----------------------------------------------------------


def test_taintable_by_classification() -> None:
    config = CrashBarrierConfig()
    assert config.taintable(describe_crash(139))
    assert not config.taintable(describe_crash(134))  # abort is not in the default mark_on


def test_taintable_by_exit_code() -> None:
    config = CrashBarrierConfig(taint_on_exit_codes=(3,))
    assert config.taintable(describe_crash(3))
    assert not config.taintable(describe_crash(4))


class _VendorError(RuntimeError):
    pass


@pytest.mark.parametrize(
    ("wanted", "matches"),
    [
        ("_VendorError", True),
        ("RuntimeError", True),  # a base class matches too
        (f"{__name__}._VendorError", True),
        (RuntimeError, True),
        ("KeyError", False),
        (KeyError, False),
    ],
)
def test_matches_error_type(wanted: str | type[BaseException], matches: bool) -> None:
    config = CrashBarrierConfig(taint_on_error_types=(wanted,))
    assert config.matches_error_type(_VendorError("boom")) is matches


# -- robustness ----------------------------------------------------------------------------


@given(st.one_of(st.none(), st.integers(-(2**40), 2**40)), st.one_of(st.none(), st.text()))
def test_classify_never_raises(exit_code: int | None, message: str | None) -> None:
    assert classify(exit_code, message) in set(Classification)
    describe_crash(exit_code, message)
    gpu_error_action(message)


def test_classify_handles_a_huge_traceback_quickly_enough_to_finish() -> None:
    message = "Traceback (most recent call last):\n" + "  File 'x.py', line 1\n" * 50_000
    message += "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert classify(message=message) == Classification.GPU
