"""A real ``app.events.Receiver`` in a thread, collecting the events a test causes."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

from celery import Celery

from snakepit_celery.testing import wait_until


def snakepit_event(event: dict[str, Any]) -> bool:
    """The events ``Capture`` keeps by default: snakepit's own."""
    return "snakepit" in event.get("type", "")


class Capture:
    """An ``app.events.Receiver`` collecting the events ``keep`` accepts, in a background thread."""

    def __init__(
        self, app: Celery, keep: Callable[[dict[str, Any]], bool] = snakepit_event
    ) -> None:
        self.keep = keep
        self.events: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self.connection = app.connection_for_read()
        self.receiver = app.events.Receiver(self.connection, handlers={"*": self._on_event})
        self.receiver.on_consume_ready = self._on_ready
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _on_event(self, event: dict[str, Any]) -> None:
        if self.keep(event):
            self.events.append(event)

    def _on_ready(self, *_: Any, **__: Any) -> None:
        self.ready.set()

    def _run(self) -> None:
        with contextlib.suppress(Exception):  # the connection is closed under it at teardown
            self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def __enter__(self) -> Capture:
        self.thread.start()
        assert self.ready.wait(10), "the receiver did not start"
        return self

    def __exit__(self, *_: Any) -> None:
        self.receiver.should_stop = True
        self.thread.join(5)
        self.connection.close()

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        """The events of ``type_`` collected so far."""
        return [e for e in self.events if e["type"] == type_]

    def wait_for(self, type_: str) -> dict[str, Any]:
        return wait_until(
            lambda: next((e for e in self.events if e["type"] == type_), None),
            20,
            what=f"event {type_}",
        )
