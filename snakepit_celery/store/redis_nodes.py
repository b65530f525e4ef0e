"""The node registry of ``RedisStore`` (a mixin).

``RedisNodes`` runs the node-registry scripts: live records, their
incarnations' copies kept ``NODE_RETENTION`` for ``node_reap``, and the fences
of reaped incarnations.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from snakepit_celery.store.base import (
    DEFAULT_GROUP,
    NODE_RETENTION,
    REAP_RECLAIM,
    STORE_SILENCE,
    node_incarnation,
)
from snakepit_celery.store.redis_connect import RedisConnection
from snakepit_celery.store.redis_schema import node_record, seconds_arg, text

__all__ = ["RedisNodes"]


class RedisNodes(RedisConnection):
    """Node-registry operations of ``RedisStore``."""

    # -- node registry --------------------------------------------------------
    def _node_keys(self, group: str) -> list[str]:
        return [
            self.key("nodes", group),
            self.key("nodes", group, part="records"),
            self.key("nodes", group, part="incarnations"),
            self.key("nodes", group, part="incarnation_records"),
            self.key("nodes", group, part="reaped"),
            self.key("nodes", group, part="pulse"),
        ]

    def node_register(
        self, node: str, data: Mapping[str, Any], *, ttl: float, group: str = DEFAULT_GROUP
    ) -> bool:
        """Write (or refresh) a node's record, and its incarnation's for ``node_reap``.

        False (nothing written) when this incarnation was reaped: it is fenced.
        """
        payload = json.dumps(dict(data), default=str, sort_keys=True)
        return bool(
            self._run(
                "node_register",
                self._node_keys(group),
                [
                    node,
                    seconds_arg("ttl", ttl),
                    payload,
                    node_incarnation(data),
                    NODE_RETENTION,
                    STORE_SILENCE,
                ],
            )
        )

    def node_list(self, *, group: str = DEFAULT_GROUP) -> list[dict[str, Any]]:
        """Records of live nodes (each with ``node`` and ``heartbeat_age`` added), by name."""
        reply = self._run("node_list", self._node_keys(group)[:2], [])
        now = float(reply[0])
        nodes = [node_record(text(reply[i]), reply[i + 1], now) for i in range(1, len(reply), 2)]
        return sorted(nodes, key=lambda r: str(r["node"]))

    def node_remove(self, node: str, *, group: str = DEFAULT_GROUP) -> None:
        """Drop a node's record and its current incarnation's (clean shutdown)."""
        self._run("node_remove", self._node_keys(group)[:4], [node])

    def node_reap(
        self,
        *,
        grace: float,
        group: str = DEFAULT_GROUP,
        done: Iterable[tuple[str, str]] = (),
    ) -> list[dict[str, Any]]:
        """Claim (atomically, once fleet-wide) records of incarnations dead > ``grace`` s."""
        finished = [f"{node}|{incarnation}" for node, incarnation in done]
        keys = self._node_keys(group)
        reply = self._run(
            "node_reap",
            [*keys[2:], keys[0]],
            [
                seconds_arg("grace", max(0.0, grace)),
                NODE_RETENTION,
                REAP_RECLAIM,
                STORE_SILENCE,
                *finished,
            ],
        )
        now = float(reply[0])
        records = []
        for i in range(1, len(reply), 2):
            node, _, incarnation = text(reply[i]).rpartition("|")
            records.append({**node_record(node, reply[i + 1], now), "incarnation": incarnation})
        return sorted(records, key=lambda r: (str(r["node"]), -float(r["heartbeat_age"])))
