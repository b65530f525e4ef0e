"""Real Celery worker nodes as subprocesses, for the demo, tests and benchmarks.

Each node runs ``python -m celery -A <app> worker`` (prefork pool) in its own
process group, so stopping it (or killing it for a crash test) takes the pool
children with it. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["QUIET_FLAGS", "WorkerNode", "stop_all"]

log = logging.getLogger(__name__)

#: Worker flags that keep test and demo nodes quiet and quick to start.
QUIET_FLAGS = ("--without-gossip", "--without-mingle", "--without-heartbeat")


@dataclass
class WorkerNode:
    """One Celery worker node run as a subprocess.

    ``name`` is the node name (``-n``); ``queues`` the queues it consumes
    (``-Q``, empty = the app's defaults); ``env`` is added to the environment.
    """

    app: str
    name: str
    queues: Sequence[str] = ()
    concurrency: int = 2
    env: Mapping[str, str] = field(default_factory=dict)
    extra_args: Sequence[str] = ()
    cwd: str | None = None
    pool: str = "prefork"
    flags: Sequence[str] = QUIET_FLAGS
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(default_factory=lambda: Path(tempfile.mkstemp(suffix=".log")[1]))

    def command(self) -> list[str]:
        """The command line that starts this node."""
        cmd = [sys.executable, "-m", "celery", "-A", self.app, "worker", "-P", self.pool]
        cmd += ["-c", str(self.concurrency), "-n", self.name, "-l", "INFO", *self.flags]
        if self.queues:
            cmd += ["-Q", ",".join(self.queues)]
        return cmd + list(self.extra_args)

    def start(self) -> WorkerNode:
        """Start the node (returns at once; see ``wait_ready``)."""
        env = {**os.environ, **self.env}
        with self.log_path.open("wb") as out:
            self.process = subprocess.Popen(
                self.command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.cwd,
                start_new_session=True,
            )
        return self

    def wait_ready(self, timeout: float = 30.0) -> WorkerNode:
        """Wait until the node logs that it is ready (bounded by ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited early:\n{self.logs()[-4000:]}")
            if " ready." in self.logs():
                return self
            time.sleep(0.1)
        raise TimeoutError(f"worker {self.name} not ready in {timeout}s:\n{self.logs()[-4000:]}")

    def alive(self) -> bool:
        """True while the node's main process runs."""
        return self.process is not None and self.process.poll() is None

    def wait_exit(self, timeout: float = 30.0) -> int:
        """Wait (at most ``timeout`` s) for the node to exit by itself; its exit code."""
        if self.process is None:
            raise RuntimeError(f"worker {self.name} was never started")
        return self.process.wait(timeout)

    def logs(self) -> str:
        """Everything the node printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def pid(self) -> int:
        """PID of the node's main process."""
        if self.process is None:
            raise RuntimeError(f"worker {self.name} is not running")
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL the whole node (parent and pool children), as a machine failure would."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Send ``sig`` (default: warm shutdown) to the main process and wait for it.

        Whatever is left of the group after ``timeout`` s is SIGKILLed. Returns
        the node's exit code (None when it was never started).
        """
        self._signal(sig)
        return self._reap(timeout)

    def _signal(self, sig: int) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)

    def _reap(self, timeout: float) -> int | None:
        process = self.process
        if process is None:
            return None
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("worker did not stop in time; killing", extra={"node": self.name})
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
        return process.returncode

    def __enter__(self) -> WorkerNode:
        return self.start().wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_all(nodes: Sequence[WorkerNode], sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    """``stop`` every node, all at once: each warm shutdown takes a second or two."""
    for node in nodes:
        node._signal(sig)
    for node in nodes:
        node._reap(timeout)
