"""The human tables of the fleet commands (``status``, ``breakers``, ``taints``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from snakepit_celery.celery.cli.output import seconds, table
from snakepit_celery.fleet import FleetStatus, TaintStatus

__all__ = [
    "breakers_table",
    "health_table",
    "nodes_table",
    "status_text",
    "taints_table",
    "verdict",
]


def _device_label(device: Any) -> str:
    if not isinstance(device, dict):
        return str(device)
    kind, index = device.get("kind"), device.get("index")
    label = str(kind) if index is None else f"{kind}:{index}"
    label = f"{label} ({device['name']})" if device.get("name") else label
    return label + _gpu_health_label(device)


def _gpu_health_label(device: dict[str, Any]) -> str:
    """`` 30000/81920 MB free, health hardware`` for a GPU the node's health watch reports."""
    parts = []
    if device.get("memory_free_mb") is not None:
        parts.append(f"{device['memory_free_mb']}/{device.get('memory_total_mb', '?')} MB free")
    if device.get("health") is not None:
        parts.append(f"health {device['health']}")
    return f" [{', '.join(parts)}]" if parts else ""


def nodes_table(status: FleetStatus) -> str:
    """One row per live node: heartbeat age, identity, devices, queue count."""
    rows = [
        (
            n.node,
            seconds(n.heartbeat_age),
            n.identity.get("accelerator", "-"),
            n.identity.get("platform", "-"),
            ", ".join(_device_label(d) for d in n.devices) or "cpu",
            len(n.queues),
        )
        for n in status.nodes
    ]
    return table(["NODE", "HEARTBEAT", "ACCELERATOR", "PLATFORM", "DEVICES", "QUEUES"], rows)


def breakers_table(status: FleetStatus) -> str:
    """One row per breaker: state, failures against the threshold, successes, probes."""
    rows = [
        (
            b.name,
            b.stats.state,
            f"{b.stats.failure_count}/{b.stats.failure_threshold}",
            b.stats.success_count,
            b.stats.half_open_calls,
        )
        for b in status.breakers
    ]
    return table(["BREAKER", "STATE", "FAILURES", "SUCCESSES", "PROBES"], rows)


def health_table(status: FleetStatus) -> str:
    """One row per pool: healthy or not, crashes in the window against the limit."""
    rows = [
        (
            h.pool,
            "yes" if h.is_healthy else "NO",
            f"{h.crashes_in_window}/{h.max_crashes}",
            seconds(h.crash_window),
            h.workers_with_crashes,
            h.total_crashes,
        )
        for h in status.health
    ]
    return table(["POOL", "HEALTHY", "CRASHES", "WINDOW", "WORKERS", "TOTAL"], rows)


def taints_table(taints: Sequence[TaintStatus]) -> str:
    """One row per active taint with the time it has left."""
    rows = [
        (
            t.pool,
            t.kind,
            t.target,
            seconds(t.remaining),
            t.taint.classification or t.taint.reason,
        )
        for t in taints
    ]
    return table(["POOL", "KIND", "TARGET", "LEFT", "CLASSIFICATION"], rows)


def verdict(status: FleetStatus) -> str:
    """``fleet: healthy``, or ``fleet: UNHEALTHY (...)`` naming every problem."""
    if status.healthy:
        return "fleet: healthy"
    problems = [f"pool {p} has too many crashes" for p in status.unhealthy_pools]
    problems += [f"breaker {b} is open" for b in status.open_breakers]
    return "fleet: UNHEALTHY (" + "; ".join(problems) + ")"


def status_text(report: FleetStatus) -> str:
    """The whole ``status`` report: a section per part of the fleet, then the verdict."""
    sections = [
        f"Nodes ({len(report.nodes)})",
        nodes_table(report),
        "",
        f"Breakers ({len(report.breakers)})",
        breakers_table(report),
        "",
        "Health",
        health_table(report),
        "",
        f"Taints ({len(report.taints)})",
        taints_table(report.taints),
        "",
        verdict(report),
    ]
    return "\n".join(sections)
