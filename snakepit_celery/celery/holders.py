"""Whether the worker process that holds a task's crash-ledger lease still lives.

A ledger lease names its holder ``<node>/<pid>``: the process running the
task (a pool child, or the main process of a solo or threads pool). A copy of
the task's message delivered while that lease is live must not run while the
holder lives, and must not wait for the lease to run out when it died: RabbitMQ
redelivers a dead node's messages as soon as its connection drops, long before
any lease would lapse. The node registry answers it: every node's record
(written every heartbeat, gone ``HEARTBEAT_TTL`` after the last one) lists
its main process and pool children (``worker_pids``). The holder is dead when

- no live record of its node exists (the node died, or stopped), or
- the record does not list the pid and was written after the holder last took
  or renewed its lease, by more than one heartbeat interval: a child that
  died, or a process of an earlier incarnation of a node restarted under the
  same name. A child started since the last beat is not listed yet, but its
  lease is younger than the record, so it counts as alive.

A node paused (GC, a slow disk, a stopped VM) past its record's TTL reads as
dead here: its run is counted as a crash and the copy runs. A reaper claims
its incarnation meanwhile, so its first heartbeat after waking finds it fenced
(``fence_node``: its pool is killed, it exits); what a run of it does between
waking and that beat is the price of moving a dead node's tasks on within
seconds (README, Known limits).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["holder_alive", "split_holder"]


def split_holder(holder: str) -> tuple[str, int | None]:
    """``<node>/<pid>`` as (node, pid); pid None when the part after the last ``/`` is not one."""
    node, sep, pid = holder.rpartition("/")
    if not sep or not pid.isdigit():
        return holder, None
    return node, int(pid)


def holder_alive(records: Iterable[Mapping[str, Any]], holder: str, held_for: float | None) -> bool:
    """True unless the live node ``records`` show that ``holder`` died (see the module).

    ``held_for``: seconds since the holder last took or renewed its lease
    (``LedgerEntry.held_for``; None reads as just now).
    """
    node, pid = split_holder(holder)
    record = next((r for r in records if r.get("node") == node), None)
    if record is None:
        return False
    pids = record.get("worker_pids")
    if pid is None or not isinstance(pids, list) or pid in pids:
        return True
    beat_age = float(record.get("heartbeat_age") or 0.0)
    interval = float(record.get("heartbeat_interval") or 0.0)
    return held_for is None or beat_age + interval >= held_for
