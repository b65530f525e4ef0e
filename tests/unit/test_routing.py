"""Queue names and the routing decision: pure functions, no Redis, no workers."""

from __future__ import annotations

from typing import Any

import pytest

from snakepit_celery.celery.router import SnakepitRouter
from snakepit_celery.errors import ConfigError, DeviceNotAvailableError, StoreUnavailableError
from snakepit_celery.hardware import Device, HardwareInfo
from snakepit_celery.policy.queues import desired_queues
from snakepit_celery.policy.routing import (
    Pref,
    RouteDecision,
    decide_route,
    node_devices,
    parse_prefs,
    queue_device,
    queues_for,
)
from snakepit_celery.policy.snapshot import (
    FleetSnapshot,
    NodeRecord,
    device_taint_members,
    worker_taint_member,
)

CPU_ONLY: dict[str, Any] = {
    "accelerator": "cpu",
    "cpu": {"cores": 4, "threads": 8, "model": "x", "features": ["avx"], "memory_total_mb": 1},
    "cuda": None,
    "mps": None,
    "rocm": None,
    "platform": "linux-x86_64",
}


def _gpu(index: int, uuid: str | None = None) -> dict[str, Any]:
    return {"id": index, "name": "NVIDIA A100", "uuid": uuid or f"GPU-{index:04d}"}


def cuda_hw(*indices: int) -> dict[str, Any]:
    gpus = [_gpu(i) for i in indices]
    return {
        **CPU_ONLY,
        "accelerator": "cuda",
        "cuda": {"version": "12.4", "driver_version": "550", "devices": gpus},
    }


def record(node: str, hw: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"node": node, "devices": node_devices(hw), "state": "running", **extra}


def fleet(*records: dict[str, Any], taints: set[str] | None = None) -> FleetSnapshot:
    return FleetSnapshot(tuple(records), frozenset(taints or ()))


GPU_NODE = record("gpu0@h", cuda_hw(0))
TWO_GPU_NODE = record("big@h", cuda_hw(0, 1))
CPU_NODE = record("cpu@h", CPU_ONLY)


# -- queue names -----------------------------------------------------------------------


def test_cpu_node_consumes_cpu_and_its_node_queue() -> None:
    assert queues_for("cpu@h", CPU_ONLY) == ["snakepit.cpu", "snakepit.node.cpu@h"]


def test_cuda_node_consumes_kind_and_per_device_queues() -> None:
    assert queues_for("n@h", cuda_hw(0, 1)) == [
        "snakepit.cpu",
        "snakepit.cuda",
        "snakepit.node.n@h",
        "snakepit.node.n@h.cuda.0",
        "snakepit.node.n@h.cuda.1",
    ]


def test_queues_for_accepts_a_hardware_info_object() -> None:
    info = HardwareInfo.from_dict(cuda_hw(0))
    assert queues_for("n@h", info) == queues_for("n@h", cuda_hw(0))


def test_mps_node_has_an_mps_device_queue() -> None:
    hw = {**CPU_ONLY, "mps": {"available": True, "device_name": "Apple M2", "memory_total_mb": 8}}
    assert queues_for("mac@h", hw) == [
        "snakepit.cpu",
        "snakepit.mps",
        "snakepit.node.mac@h",
        "snakepit.node.mac@h.mps.0",
    ]


def test_node_devices_keep_uuids() -> None:
    assert node_devices(cuda_hw(1)) == [
        {"kind": "cuda", "index": 1, "uuid": "GPU-0001", "name": "NVIDIA A100"}
    ]


# -- preferences -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        ("cuda", (Pref("cuda"),)),
        ("CUDA:1", (Pref("cuda", 1),)),
        (("cuda", 1), (Pref("cuda", 1),)),
        (Device("cuda", 0), (Pref("cuda", 0),)),
        ("auto", (Pref("auto"),)),
        ("mps", (Pref("mps"),)),
        (["cuda", "cpu"], (Pref("cuda"), Pref("cpu"))),
        ([("rocm", 0), "cpu"], (Pref("rocm", 0), Pref("cpu"))),
        (None, ()),
        ([], ()),
    ],
)
def test_parse_prefs_understands_select_spellings(spelling: Any, expected: tuple[Pref]) -> None:
    assert parse_prefs(spelling) == expected


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", ["cuda", "tpu"], 3])
def test_parse_prefs_rejects_unknown_spellings_with_config_error(bad: Any) -> None:
    with pytest.raises(ConfigError) as info:
        parse_prefs(bad)
    assert info.value.setting == "device"


# -- the decision ------------------------------------------------------------------------


def test_cuda_goes_to_the_cuda_queue_when_a_gpu_node_is_live() -> None:
    decision = decide_route([Pref("cuda")], fleet(GPU_NODE, CPU_NODE))
    assert decision == RouteDecision("snakepit.cuda", "cuda")


def test_cpu_goes_to_the_cpu_queue() -> None:
    assert decide_route([Pref("cpu")], fleet(CPU_NODE)).queue == "snakepit.cpu"


def test_fallback_to_the_next_preference_when_no_node_has_the_first() -> None:
    decision = decide_route(parse_prefs(["cuda", "cpu"]), fleet(CPU_NODE))
    assert (decision.queue, decision.pref) == ("snakepit.cpu", "cpu")


def test_tainted_device_is_skipped() -> None:
    taints = set(device_taint_members("gpu0@h", GPU_NODE["devices"][0])[1:])
    decision = decide_route(parse_prefs(["cuda", "cpu"]), fleet(GPU_NODE, CPU_NODE, taints=taints))
    assert decision.queue == "snakepit.cpu"


def test_device_taint_by_kind_and_index_is_understood_too() -> None:
    taints = {"device:gpu0@h:cuda:0"}
    decision = decide_route(parse_prefs(["cuda", "cpu"]), fleet(GPU_NODE, taints=taints))
    assert decision.queue == "snakepit.cpu"


def test_one_tainted_gpu_of_two_keeps_the_cuda_route() -> None:
    taints = {"device:big@h:GPU-0000"}
    decision = decide_route([Pref("cuda")], fleet(TWO_GPU_NODE, taints=taints))
    assert decision.queue == "snakepit.cuda"


def test_explicit_index_goes_to_that_device_queue() -> None:
    decision = decide_route([Pref("cuda", 1)], fleet(TWO_GPU_NODE, GPU_NODE))
    assert decision == RouteDecision("snakepit.node.big@h.cuda.1", "cuda:1", node="big@h")


def test_explicit_index_skips_its_tainted_device() -> None:
    taints = {"device:big@h:GPU-0001"}
    with pytest.raises(DeviceNotAvailableError):
        decide_route([Pref("cuda", 1)], fleet(TWO_GPU_NODE, taints=taints))


def test_explicit_index_spreads_over_the_nodes_that_have_it() -> None:
    other = record("gpu1@h", cuda_hw(0))
    queues = {
        decide_route([Pref("cuda", 0)], fleet(GPU_NODE, other), pick=pick).queue
        for pick in range(4)
    }
    assert queues == {"snakepit.node.gpu0@h.cuda.0", "snakepit.node.gpu1@h.cuda.0"}


def test_auto_picks_the_best_kind_the_fleet_offers() -> None:
    assert decide_route([Pref("auto")], fleet(CPU_NODE, GPU_NODE)).queue == "snakepit.cuda"
    assert decide_route([Pref("auto")], fleet(CPU_NODE)).queue == "snakepit.cpu"


def test_tainted_node_is_skipped_when_another_can_take_the_task() -> None:
    other = record("gpu1@h", cuda_hw(0))
    decision = decide_route(
        [Pref("cuda", 0)],
        fleet(GPU_NODE, other, taints={worker_taint_member("gpu0@h")}),
    )
    assert decision.node == "gpu1@h"


def test_tainted_node_is_used_as_a_last_resort() -> None:
    decision = decide_route([Pref("cuda")], fleet(GPU_NODE, taints={worker_taint_member("gpu0@h")}))
    assert decision.queue == "snakepit.cuda"


def test_stopping_node_offers_nothing() -> None:
    stopping = {**GPU_NODE, "state": "stopping"}
    decision = decide_route(parse_prefs(["cuda", "cpu"]), fleet(stopping, CPU_NODE))
    assert decision.queue == "snakepit.cpu"


def test_no_node_raises_device_not_available_naming_task_and_prefs() -> None:
    with pytest.raises(DeviceNotAvailableError) as info:
        decide_route(parse_prefs(["cuda", "mps"]), fleet(CPU_NODE), task_name="proj.infer")
    assert info.value.requested == ["cuda", "mps"]
    assert "proj.infer" in str(info.value)
    assert "cuda or mps" in str(info.value)


def test_empty_fleet_raises_even_for_cpu() -> None:
    with pytest.raises(DeviceNotAvailableError):
        decide_route([Pref("cpu")], fleet())


def test_allow_waiting_queues_on_the_generic_queue_of_the_first_preference() -> None:
    decision = decide_route(parse_prefs(["cuda:1", "mps"]), fleet(CPU_NODE), allow_waiting=True)
    assert decision == RouteDecision("snakepit.cuda", "cuda:1", waiting=True)


def test_node_record_types_the_registry_entry_and_keeps_the_rest() -> None:
    entry = {**record("n@h", cuda_hw(0)), "heartbeat_age": 1.25, "pid": 7, "queues": ["q"]}
    node = NodeRecord.from_dict(entry)
    assert (node.node, node.state, node.heartbeat_age) == ("n@h", "running", 1.25)
    assert node.queues == ("q",)
    assert node.devices[0]["uuid"] == "GPU-0000"
    assert node.extra == {"pid": 7}
    assert node.as_dict() == {**entry, "identity": {}}
    assert NodeRecord.from_dict(node.as_dict()) == node


def test_fleet_snapshot_reads_plain_records_as_node_records() -> None:
    snapshot = fleet(record("n@h", CPU_ONLY, state="stopping"))
    assert isinstance(snapshot.nodes[0], NodeRecord)
    assert snapshot.nodes[0].stopping


def test_route_decision_as_dict_is_plain() -> None:
    assert RouteDecision("snakepit.cpu", "cpu").as_dict() == {
        "queue": "snakepit.cpu",
        "pref": "cpu",
        "node": None,
        "waiting": False,
    }


# -- the router object (fed a snapshot function instead of a store) ----------------------


class FakeTask:
    """Stands in for a Celery task: the router only reads ``name`` and ``device``."""

    def __init__(self, device: Any) -> None:
        self.name = "proj.t"
        self.device = device


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_router_leaves_tasks_without_device_alone() -> None:
    router = SnakepitRouter(lambda: fleet(CPU_NODE))
    assert router("proj.t", (), {}, {}, task=FakeTask(None)) is None
    assert router("proj.t", (), {}, {}, task=None) is None


def test_router_routes_by_task_device_attribute() -> None:
    router = SnakepitRouter(lambda: fleet(GPU_NODE, CPU_NODE))
    assert router("proj.t", (), {}, {}, task=FakeTask(["cuda", "cpu"])) == {
        "queue": "snakepit.cuda"
    }


def test_router_send_option_overrides_task_device() -> None:
    router = SnakepitRouter(lambda: fleet(GPU_NODE, CPU_NODE))
    route = router("proj.t", (), {}, {"device": "cpu"}, task=FakeTask("cuda"))
    assert route == {"queue": "snakepit.cpu"}


def test_router_caches_the_snapshot_for_its_ttl() -> None:
    calls: list[int] = []
    clock = Clock()

    def fetch() -> FleetSnapshot:
        calls.append(1)
        return fleet(CPU_NODE)

    router = SnakepitRouter(fetch, snapshot_ttl=1.0, clock=clock)
    for _ in range(5):
        router("proj.t", (), {}, {}, task=FakeTask("cpu"))
    clock.now = 0.5
    router("proj.t", (), {}, {}, task=FakeTask("cpu"))
    assert len(calls) == 1
    clock.now = 1.5
    router("proj.t", (), {}, {}, task=FakeTask("cpu"))
    assert len(calls) == 2


def test_router_allow_waiting_can_be_a_callable() -> None:
    router = SnakepitRouter(fleet, allow_waiting=lambda: True)
    assert router("proj.t", (), {}, {}, task=FakeTask("cuda")) == {"queue": "snakepit.cuda"}


def test_router_raises_at_send_time_when_no_node_offers_the_device() -> None:
    router = SnakepitRouter(lambda: fleet(CPU_NODE))
    with pytest.raises(DeviceNotAvailableError):
        router("proj.t", (), {}, {}, task=FakeTask("cuda"))


def test_router_fails_open_to_the_generic_queue_when_the_store_is_down() -> None:
    def fetch() -> FleetSnapshot:
        raise StoreUnavailableError("down")

    router = SnakepitRouter(fetch)
    assert router("proj.t", (), {}, {}, task=FakeTask(["cuda", "cpu"])) == {
        "queue": "snakepit.cuda"
    }


def test_router_leaves_sends_with_an_explicit_queue_alone() -> None:
    router = SnakepitRouter(fleet)
    assert router("proj.t", (), {}, {"queue": "mine"}, task=FakeTask("cuda")) is None


@pytest.mark.parametrize(
    ("queue", "expected"),
    [
        ("snakepit.cpu", "cpu"),
        ("snakepit.cuda", "cuda"),
        ("snakepit.rocm", "rocm"),
        ("snakepit.node.gpu0@host.example.com.cuda.1", "cuda:1"),
        ("snakepit.node.gpu0@host", None),
        ("snakepit.node.cpu@host.cpu.0", None),
        ("celery", None),
        ("snakepit.tpu", None),
        ("", None),
    ],
)
def test_queue_device_names_the_device_a_queue_stands_for(queue: str, expected: str | None) -> None:
    routed = queue_device(queue)
    assert (None if routed is None else str(routed)) == expected


# -- namespaces ------------------------------------------------------------------------


def test_a_namespace_starts_every_queue_name_of_its_nodes() -> None:
    assert queues_for("n@h", cuda_hw(1), prefix="teamb") == [
        "teamb.cpu",
        "teamb.cuda",
        "teamb.node.n@h",
        "teamb.node.n@h.cuda.1",
    ]


@pytest.mark.parametrize(
    ("queue", "expected"),
    [
        ("team.b.cuda", "cuda"),
        ("team.b.node.gpu0@host.cuda.1", "cuda:1"),
        ("snakepit.cuda", None),  # the default namespace's queue is not this app's
        ("snakepit.node.gpu0@host.cuda.1", None),
        ("team.b.node.gpu0@host", None),
    ],
)
def test_queue_device_reads_only_queues_of_its_namespace(queue: str, expected: str | None) -> None:
    routed = queue_device(queue, prefix="team.b")
    assert (None if routed is None else str(routed)) == expected


def test_routes_and_placements_use_the_namespace_queue_names() -> None:
    snapshot = fleet(TWO_GPU_NODE, CPU_NODE)
    assert decide_route(parse_prefs("cuda"), snapshot, prefix="ns").queue == "ns.cuda"
    assert (
        decide_route(parse_prefs("cuda:1"), snapshot, prefix="ns").queue == "ns.node.big@h.cuda.1"
    )
    waiting = decide_route(parse_prefs("rocm"), snapshot, allow_waiting=True, prefix="ns")
    assert waiting.queue == "ns.rocm"
    router = SnakepitRouter(lambda: snapshot, queue_prefix=lambda: "ns")
    assert router("proj.t", (), {}, {}, task=FakeTask(["cuda"])) == {"queue": "ns.cuda"}


def test_a_tainted_device_releases_the_queues_of_its_namespace() -> None:
    devices = node_devices(cuda_hw(0))
    taints = device_taint_members("gpu0@h", devices[0])
    queues = queues_for("gpu0@h", cuda_hw(0), prefix="ns")
    wanted, alone = desired_queues(
        "gpu0@h", queues, devices, fleet(GPU_NODE, taints=set(taints)), prefix="ns"
    )
    assert (wanted, alone) == (["ns.cpu", "ns.node.gpu0@h"], False)
