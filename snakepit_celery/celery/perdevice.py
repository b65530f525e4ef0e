"""``celery -A proj snakepit worker --per-device``: one Celery node per GPU, plus a CPU node.

GPU users run one worker process per GPU: each sees a single device
(``CUDA_VISIBLE_DEVICES=i``), so a crash or a poisoned CUDA context takes one
GPU's node down, not the host's. ``build_commands()`` says what to start (pure,
tested); ``run_per_device()`` starts the nodes, forwards SIGTERM/SIGINT/SIGQUIT
to them, stops the rest when one exits, and returns the worst exit code.

With a hardware override (``SNAKEPIT_HARDWARE`` / ``snakepit_hardware``), which
``CUDA_VISIBLE_DEVICES`` cannot narrow, each node gets its own override file
restricted to its device (``hardware.restrict``), named by ``SNAKEPIT_HARDWARE``
in its environment together with ``SNAKEPIT_PER_DEVICE_NODE``; that marker
makes the node's file win over an app-wide ``snakepit_hardware`` setting.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from snakepit_celery.errors import ConfigError
from snakepit_celery.hardware import HardwareInfo, restrict

__all__ = [
    "FORWARDED_SIGNALS",
    "NODE_MARKER_ENV",
    "NodeCommand",
    "build_commands",
    "node_overrides",
    "run_per_device",
    "worst_exit_code",
]

logger = logging.getLogger(__name__)

#: Signals the launcher passes on to every node (Celery: TERM/INT warm, QUIT cold shutdown).
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)

#: Environment variable that limits the devices a node sees, per accelerator kind.
_VISIBLE_ENV = {"cuda": "CUDA_VISIBLE_DEVICES", "rocm": "HIP_VISIBLE_DEVICES"}

#: Set in each node's environment (to its node name) when it has its own hardware override.
NODE_MARKER_ENV = "SNAKEPIT_PER_DEVICE_NODE"
_OVERRIDE_ENV = "SNAKEPIT_HARDWARE"

_NAME_OPTIONS = ("-n", "--hostname")
_CONCURRENCY_OPTIONS = ("-c", "--concurrency")


@dataclass(frozen=True)
class NodeCommand:
    """One node to start: its Celery node ``name``, ``argv`` and the env variables it overrides."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe plain dict."""
        return {"name": self.name, "argv": list(self.argv), "env": dict(self.env)}


def _has_option(args: Sequence[str], names: Iterable[str]) -> bool:
    for arg in args:
        for name in names:
            if (
                arg == name
                or arg.startswith(f"{name}=")
                or (len(name) == 2 and arg.startswith(name) and len(arg) > 2)
            ):
                return True
    return False


def _device_fields(device: Any) -> tuple[str, int]:
    kind = getattr(device, "kind", None)
    index = getattr(device, "index", None)
    if isinstance(device, Mapping):
        kind, index = device.get("kind"), device.get("index")
    if kind is None or index is None:
        raise ConfigError("device", device, "a GPU device with a kind and an index")
    return str(getattr(kind, "value", kind)), int(index)


def _visible_value(kind: str, index: int, environ: Mapping[str, str] | None) -> str:
    current = (os.environ if environ is None else environ).get(_VISIBLE_ENV[kind], "")
    entries = [entry.strip() for entry in current.split(",") if entry.strip()]
    return entries[index] if index < len(entries) else str(index)


def build_commands(
    app_name: str,
    extra_args: Sequence[str],
    devices: Iterable[Any],
    *,
    hostname: str | None = None,
    python: str | None = None,
    cpu_node: bool = True,
    environ: Mapping[str, str] | None = None,
) -> list[NodeCommand]:
    """The nodes to start: ``gpu<i>@<host>`` per CUDA device (``rocm<i>@`` per ROCm), then ``cpu@``.

    Each GPU node sees only its device (``CUDA_VISIBLE_DEVICES=i``, with
    ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so ``i`` is ``nvidia-smi``'s index) and
    defaults to ``--concurrency=1`` (one CUDA context per GPU) unless
    ``extra_args`` sets it; the CPU node sees no GPU. When this process is
    itself limited (``CUDA_VISIBLE_DEVICES=2,3``), device ``i`` maps to the
    ``i``-th entry of that list. ``extra_args`` go to every
    ``celery worker``; naming the node there (``-n``) is an error, since each
    node gets its own name.
    """
    if _has_option(extra_args, _NAME_OPTIONS):
        raise ConfigError(
            "--hostname", list(extra_args), "no -n/--hostname with --per-device (names are set)"
        )
    host = hostname or socket.gethostname()
    base = (python or sys.executable, "-m", "celery", "-A", app_name, "worker")
    blind = {env: "" for env in _VISIBLE_ENV.values()}
    commands: list[NodeCommand] = []
    for device in devices:
        kind, index = _device_fields(device)
        if kind not in _VISIBLE_ENV:
            continue
        name = f"{'gpu' if kind == 'cuda' else kind}{index}@{host}"
        args = list(extra_args)
        if not _has_option(args, _CONCURRENCY_OPTIONS):
            args.append("--concurrency=1")
        env = {**blind, _VISIBLE_ENV[kind]: _visible_value(kind, index, environ)}
        if kind == "cuda":
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        commands.append(NodeCommand(name, (*base, "-n", name, *args), env))
    if cpu_node or not commands:
        name = f"cpu@{host}"
        commands.append(NodeCommand(name, (*base, "-n", name, *extra_args), blind))
    return commands


def node_overrides(
    commands: Sequence[NodeCommand], info: HardwareInfo
) -> dict[str, dict[str, Any]]:
    """Each node's view of an overridden host (``as_dict()`` shape), by node name.

    A GPU node sees only its device (renumbered from 0); the CPU node sees none.
    """
    views: dict[str, dict[str, Any]] = {}
    for command in commands:
        visible = command.env.get("CUDA_VISIBLE_DEVICES") or command.env.get(
            "HIP_VISIBLE_DEVICES", ""
        )
        views[command.name] = restrict(info, visible).as_dict()
    return views


def _with_overrides(
    commands: Sequence[NodeCommand], info: HardwareInfo, directory: Path
) -> list[NodeCommand]:
    views = node_overrides(commands, info)
    result: list[NodeCommand] = []
    for command in commands:
        path = directory / f"{command.name.replace('@', '_')}.json"
        path.write_text(json.dumps(views[command.name]))
        env = {**command.env, _OVERRIDE_ENV: str(path), NODE_MARKER_ENV: command.name}
        result.append(NodeCommand(command.name, command.argv, env))
    return result


def worst_exit_code(codes: Iterable[int | None]) -> int:
    """The exit code a launcher reports for its children: the worst one.

    Death by signal N (``-N`` from ``subprocess``) counts as ``128 + N``, like
    a shell; a child still running (None) counts as 1.
    """
    worst = 0
    for code in codes:
        value = 1 if code is None else (128 - code if code < 0 else code)
        worst = max(worst, value)
    return worst


class _Launcher:
    """Runs the nodes of ``build_commands`` and forwards signals to them."""

    def __init__(self, commands: Sequence[NodeCommand], poll_interval: float) -> None:
        self.commands = commands
        self.poll_interval = poll_interval
        self.children: list[subprocess.Popen[bytes]] = []
        self.stopping = threading.Event()
        self.wake = threading.Event()

    def start(self) -> None:
        for command in self.commands:
            env = {**os.environ, **command.env}
            child = subprocess.Popen(list(command.argv), env=env, start_new_session=True)
            logger.info(
                "started node %s (pid %d)",
                command.name,
                child.pid,
                extra={"node": command.name, "pid": child.pid},
            )
            self.children.append(child)

    def forward(self, signum: int) -> None:
        for child in self.children:
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signum)

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        logger.info("forwarding %s to %d node(s)", signal.Signals(signum).name, len(self.children))
        self.stopping.set()
        self.forward(signum)
        self.wake.set()

    def wait(self, stop_timeout: float | None) -> list[int | None]:
        while True:
            codes = [child.poll() for child in self.children]
            if all(code is not None for code in codes):
                return codes
            if not self.stopping.is_set() and any(code is not None for code in codes):
                for command, code in zip(self.commands, codes, strict=True):
                    if code is not None:
                        logger.error(
                            "node %s exited with code %s; stopping the other nodes",
                            command.name,
                            code,
                            extra={"node": command.name, "exit_code": code},
                        )
                self.stopping.set()
                self.forward(signal.SIGTERM)
                break
            self.wake.wait(self.poll_interval)
            self.wake.clear()
        return self._reap(stop_timeout)

    def _reap(self, stop_timeout: float | None) -> list[int | None]:
        codes: list[int | None] = []
        for command, child in zip(self.commands, self.children, strict=False):
            try:
                codes.append(child.wait(stop_timeout))
            except subprocess.TimeoutExpired:
                logger.error("node %s did not stop in time; killing it", command.name)
                child.kill()
                codes.append(child.wait())
        return codes


def run_per_device(
    app_name: str,
    extra_args: Sequence[str],
    devices: Iterable[Any],
    *,
    hostname: str | None = None,
    cpu_node: bool = True,
    stop_timeout: float | None = None,
    poll_interval: float = 0.5,
    hardware_override: HardwareInfo | None = None,
) -> int:
    """Start one ``celery worker`` per GPU in ``devices`` plus a CPU node; return the worst code.

    SIGTERM/SIGINT/SIGQUIT received by this process are forwarded to every
    node (which each then shut down the Celery way). When one node exits on
    its own, the others are sent SIGTERM, so a supervisor sees the whole unit
    fail and restarts it. ``stop_timeout`` bounds how long a stopping node may
    take before it is killed (None: wait). ``hardware_override``: the overridden
    host (``hardware.detect()`` when an override is in effect), split into one
    override file per node. Must run in the main thread.
    """
    commands = build_commands(app_name, extra_args, devices, hostname=hostname, cpu_node=cpu_node)
    with tempfile.TemporaryDirectory(prefix="snakepit-per-device-") as directory:
        if hardware_override is not None:
            commands = _with_overrides(commands, hardware_override, Path(directory))
        return _run(commands, poll_interval, stop_timeout)


def _run(commands: Sequence[NodeCommand], poll_interval: float, stop_timeout: float | None) -> int:
    launcher = _Launcher(commands, poll_interval)
    previous = {signum: signal.getsignal(signum) for signum in FORWARDED_SIGNALS}
    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, launcher.on_signal)
    try:
        launcher.start()
        codes = launcher.wait(stop_timeout)
    except BaseException:
        launcher.stopping.set()
        launcher.forward(signal.SIGTERM)
        launcher._reap(stop_timeout)
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    code = worst_exit_code(codes)
    logger.info("all nodes stopped; exit code %d", code, extra={"exit_code": code})
    return code
