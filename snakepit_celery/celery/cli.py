"""``celery -A proj snakepit ...``: look at the fleet and operate it from a shell.

Registered as a Celery sub-command through the ``celery.commands`` entry
point, like Flower's ``celery flower``; Celery's own group loads the app
(``-A``) and hands it over in ``ctx.obj.app``. Every command prints a table
for people, or JSON with ``--json``. Exit codes: 0 ok, 1 unhealthy /
mismatch / store unreachable, 2 usage error.
"""

from __future__ import annotations

import contextlib
import functools
import json
import signal
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Protocol, TypeVar, cast, runtime_checkable

import click

from snakepit_celery import hardware, lockfile
from snakepit_celery.barrier import CrashBarrier
from snakepit_celery.breaker import CircuitBreaker
from snakepit_celery.celery.app_context import app_store, settings_for, taint_pools
from snakepit_celery.celery.task import SnakepitTask
from snakepit_celery.config import SnakepitSettings, load_settings
from snakepit_celery.errors import ConfigError, LockMismatchError, SnakepitError
from snakepit_celery.fleet import FleetStatus, TaintStatus, fleet_status, read_taints
from snakepit_celery.hardware.report import hardware_json, hardware_table
from snakepit_celery.health import HealthMonitor
from snakepit_celery.store import fail_open, set_fail_open
from snakepit_celery.store.base import Store

__all__ = ["Fleet", "snakepit"]

F = TypeVar("F", bound=Callable[..., Any])

#: Exit codes of every command.
EXIT_OK, EXIT_UNHEALTHY, EXIT_USAGE = 0, 1, 2
#: Pool every fleet has (the default of ``HealthMonitor`` and ``CrashBarrier``).
DEFAULT_POOL = "default"


@runtime_checkable
class _ListsBreakers(Protocol):
    def breaker_names(self) -> list[str]: ...


@runtime_checkable
class _ListsPools(Protocol):
    def pool_names(self) -> list[str]: ...


@dataclass
class Fleet:
    """What the commands need from the app: its settings, its store, and which
    breakers and pools exist.

    Breakers are found in the app's tasks (their ``breaker`` option), in the
    store when it can list them, and in ``--breaker`` options; pools in the
    ``snakepit_health`` setting, the tasks' ``pool`` option, the store and
    ``--pool`` options (``default`` always).
    """

    app: Any
    settings: SnakepitSettings
    store: Store
    extra_breakers: tuple[str, ...] = ()
    extra_pools: tuple[str, ...] = ()
    _tasks_loaded: bool = field(default=False, repr=False)

    @classmethod
    def from_app(
        cls, app: Any, *, breakers: Sequence[str] = (), pools: Sequence[str] = ()
    ) -> Fleet:
        """Read the app's snakepit settings and open its store."""
        return cls(app, settings_for(app), app_store(app), tuple(breakers), tuple(pools))

    def _tasks(self) -> list[SnakepitTask]:
        if not self._tasks_loaded:
            with contextlib.suppress(Exception):
                self.app.loader.import_default_modules()
            self._tasks_loaded = True
        return [t for t in self.app.tasks.values() if isinstance(t, SnakepitTask)]

    def breaker_defaults(self) -> dict[str, Any]:
        """The ``snakepit_breaker`` setting: defaults of breakers no task configures."""
        return dict(self.settings.breaker)

    def breaker(self, name: str) -> CircuitBreaker:
        """The breaker called ``name``: a task's own if one uses it, else one from settings."""
        for found in self._task_breakers():
            if found.name == name:
                return found
        return CircuitBreaker(name, store=self.store, **self.breaker_defaults())

    def _task_breakers(self) -> list[CircuitBreaker]:
        runtimes = [task.snakepit_runtime for task in self._tasks()]
        return [r.breaker for r in runtimes if r.breaker is not None]

    def breakers(self) -> list[CircuitBreaker]:
        """Every known breaker, one per name."""
        by_name = {b.name: b for b in self._task_breakers()}
        names = set(self.extra_breakers)
        if isinstance(self.store, _ListsBreakers):
            names.update(self.store.breaker_names())
        for name in names - by_name.keys():
            by_name[name] = CircuitBreaker(name, store=self.store, **self.breaker_defaults())
        return [by_name[name] for name in sorted(by_name)]

    def pools(self) -> list[str]:
        """Every known pool name."""
        names = {DEFAULT_POOL, *self.extra_pools, *taint_pools(self.app)}
        names.update(task.snakepit_runtime.health.pool for task in self._tasks())
        if isinstance(self.store, _ListsPools):
            names.update(self.store.pool_names())
        return sorted(names)

    def monitors(self) -> list[HealthMonitor]:
        """A ``HealthMonitor`` per pool, with the ``snakepit_health`` limits."""
        limits = dict(self.settings.health)
        limits.pop("pool", None)
        return [HealthMonitor(pool, store=self.store, **limits) for pool in self.pools()]

    def barriers(self) -> list[CrashBarrier]:
        """A ``CrashBarrier`` per pool, with the app's ``snakepit_crash_barrier`` config."""
        config = self.settings.crash_barrier
        return [CrashBarrier(config, pool=pool, store=self.store) for pool in self.pools()]

    def status(self) -> FleetStatus:
        """The whole fleet, read from the store now."""
        return fleet_status(
            self.store,
            breakers=self.breakers(),
            monitors=self.monitors(),
            barriers=self.barriers(),
        )


# -- output helpers ---------------------------------------------------------------


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns, two spaces apart; ``-`` for None."""
    cells = [[str(h) for h in headers]]
    cells += [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def _seconds(value: float) -> str:
    if value < 60:
        return f"{value:.1f}s"
    if value < 3600:
        return f"{value / 60:.1f}m"
    return f"{value / 3600:.1f}h"


def _dump(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, default=str)


def _device_label(device: Any) -> str:
    if not isinstance(device, dict):
        return str(device)
    kind, index = device.get("kind"), device.get("index")
    label = str(kind) if index is None else f"{kind}:{index}"
    return f"{label} ({device['name']})" if device.get("name") else label


def _nodes_table(status: FleetStatus) -> str:
    rows = [
        (
            n.node,
            _seconds(n.heartbeat_age),
            n.identity.get("accelerator", "-"),
            n.identity.get("platform", "-"),
            ", ".join(_device_label(d) for d in n.devices) or "cpu",
            len(n.queues),
        )
        for n in status.nodes
    ]
    return _table(["NODE", "HEARTBEAT", "ACCELERATOR", "PLATFORM", "DEVICES", "QUEUES"], rows)


def _breakers_table(status: FleetStatus) -> str:
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
    return _table(["BREAKER", "STATE", "FAILURES", "SUCCESSES", "PROBES"], rows)


def _health_table(status: FleetStatus) -> str:
    rows = [
        (
            h.pool,
            "yes" if h.is_healthy else "NO",
            f"{h.crashes_in_window}/{h.max_crashes}",
            _seconds(h.crash_window),
            h.workers_with_crashes,
            h.total_crashes,
        )
        for h in status.health
    ]
    return _table(["POOL", "HEALTHY", "CRASHES", "WINDOW", "WORKERS", "TOTAL"], rows)


def _taints_table(taints: Sequence[TaintStatus]) -> str:
    rows = [
        (
            t.pool,
            t.kind,
            t.target,
            _seconds(t.remaining),
            t.taint.classification or t.taint.reason,
        )
        for t in taints
    ]
    return _table(["POOL", "KIND", "TARGET", "LEFT", "CLASSIFICATION"], rows)


def _verdict(status: FleetStatus) -> str:
    if status.healthy:
        return "fleet: healthy"
    problems = [f"pool {p} has too many crashes" for p in status.unhealthy_pools]
    problems += [f"breaker {b} is open" for b in status.open_breakers]
    return "fleet: UNHEALTHY (" + "; ".join(problems) + ")"


# -- plumbing ----------------------------------------------------------------------


def _app(ctx: click.Context) -> Any:
    obj = ctx.find_root().obj
    app = getattr(obj, "app", None)
    if app is None:
        from celery import current_app  # noqa: PLC0415

        app = current_app
    return app


def _fleet(ctx: click.Context, breakers: Sequence[str] = (), pools: Sequence[str] = ()) -> Fleet:
    return Fleet.from_app(_app(ctx), breakers=breakers, pools=pools)


@contextlib.contextmanager
def _strict_store() -> Iterator[None]:
    """Report an unreachable store instead of showing an empty fleet (fail-open off)."""
    previous = fail_open()
    set_fail_open(False)
    try:
        yield
    finally:
        set_fail_open(previous)


def _guarded(fn: F) -> F:
    """Turn package errors into the documented exit codes (config: 2, anything else: 1)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with _strict_store():
                return fn(*args, **kwargs)
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from exc
        except SnakepitError as exc:
            click.echo(f"error: {exc}", err=True)
            raise click.exceptions.Exit(EXIT_UNHEALTHY) from exc

    return cast(F, wrapper)


_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
_breaker_option = click.option(
    "--breaker", "breakers", multiple=True, metavar="NAME", help="Also show this breaker."
)
_pool_option = click.option(
    "--pool", "pools", multiple=True, metavar="POOL", help="Also show this pool."
)


# -- commands ------------------------------------------------------------------------


@click.group(name="snakepit")
@click.pass_context
def snakepit(ctx: click.Context) -> None:
    """snakepit_celery: fleet status, breakers, taints, hardware, lock files, metrics."""


@snakepit.command()
@_json_option
@_breaker_option
@_pool_option
@click.pass_context
@_guarded
def status(
    ctx: click.Context, as_json: bool, breakers: tuple[str, ...], pools: tuple[str, ...]
) -> None:
    """Nodes, breakers, pool health and taints; exit 1 when the fleet is unhealthy."""
    fleet = _fleet(ctx, breakers, pools)
    report = fleet.status()
    if as_json:
        click.echo(_dump(report.as_dict()))
    else:
        sections = [
            f"Nodes ({len(report.nodes)})",
            _nodes_table(report),
            "",
            f"Breakers ({len(report.breakers)})",
            _breakers_table(report),
            "",
            "Health",
            _health_table(report),
            "",
            f"Taints ({len(report.taints)})",
            _taints_table(report.taints),
            "",
            _verdict(report),
        ]
        click.echo("\n".join(sections))
    ctx.exit(EXIT_OK if report.healthy else EXIT_UNHEALTHY)


@snakepit.command(name="hardware")
@_json_option
@click.pass_context
@_guarded
def hardware_command(ctx: click.Context, as_json: bool) -> None:
    """This host's hardware, as the workers detect it (honours ``snakepit_hardware``)."""
    configured = load_settings(_app(ctx).conf).hardware
    if configured:
        hardware.configure(configured)
    info = hardware.detect()
    click.echo(hardware_json(info) if as_json else hardware_table(info))


@snakepit.command()
@_json_option
@_breaker_option
@click.pass_context
@_guarded
def breakers(ctx: click.Context, as_json: bool, breakers: tuple[str, ...]) -> None:
    """Every known breaker with its state and counts; exit 1 when one is open."""
    fleet = _fleet(ctx, breakers)
    report = FleetStatus(breakers=fleet_status(fleet.store, breakers=fleet.breakers()).breakers)
    if as_json:
        click.echo(_dump([b.as_dict() for b in report.breakers]))
    else:
        click.echo(_breakers_table(report))
    ctx.exit(EXIT_UNHEALTHY if report.open_breakers else EXIT_OK)


@snakepit.command()
@_json_option
@_pool_option
@click.pass_context
@_guarded
def taints(ctx: click.Context, as_json: bool, pools: tuple[str, ...]) -> None:
    """Active taints (workers and devices kept out of rotation) with the time they have left."""
    fleet = _fleet(ctx, pools=pools)
    found = read_taints(fleet.barriers())
    if as_json:
        click.echo(_dump([t.as_dict() for t in found]))
    else:
        click.echo(_taints_table(found))


@snakepit.command()
@click.option("--worker", metavar="WORKER", help="Lift the taint of this worker (node name).")
@click.option("--node", metavar="NODE", help="Lift the taints of this node's devices.")
@click.option("--device", metavar="DEVICE", help="With --node: only this device (cuda:0, a UUID).")
@click.option("--all", "clear_all", is_flag=True, help="Lift every taint.")
@_pool_option
@_json_option
@click.pass_context
@_guarded
def untaint(
    ctx: click.Context,
    *,
    worker: str | None,
    node: str | None,
    device: str | None,
    clear_all: bool,
    pools: tuple[str, ...],
    as_json: bool,
) -> None:
    """Put a tainted worker or device back in rotation before its taint expires."""
    chosen = sum([worker is not None, node is not None, clear_all])
    if chosen != 1:
        raise click.UsageError("give exactly one of --worker, --node [--device], or --all")
    if device is not None and node is None:
        raise click.UsageError("--device needs --node")
    cleared = 0
    for barrier in _fleet(ctx, pools=pools).barriers():
        if clear_all:
            cleared += barrier.clear_taint()
        elif worker is not None:
            cleared += barrier.clear_taint(worker)
        else:
            cleared += barrier.clear_taint(node=node, device=device)
    if as_json:
        click.echo(_dump({"cleared": cleared}))
    else:
        click.echo(f"cleared {cleared} taint(s)")


@snakepit.command()
@click.argument("breaker")
@_json_option
@click.pass_context
@_guarded
def reset(ctx: click.Context, breaker: str, as_json: bool) -> None:
    """Close BREAKER and forget its counts, for every worker at once."""
    found = _fleet(ctx).breaker(breaker)
    found.reset()
    stats = found.stats()
    if as_json:
        click.echo(_dump({"name": breaker, **stats.as_dict()}))
    else:
        click.echo(f"breaker {breaker} reset: {stats.state}")


@snakepit.group()
def lock() -> None:
    """Hardware lock files: pin the hardware a deployment was validated on."""


@lock.command(name="generate")
@click.argument("dependencies", nargs=-1, metavar="[NAME=VERSION]...")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="Write here.")
@_guarded
def lock_generate(dependencies: tuple[str, ...], output: str | None) -> None:
    """Print (or write) a lock file describing this host."""
    text = lockfile.generate(lockfile.parse_dependency_args(dependencies))
    if output:
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
        click.echo(f"wrote {output}")
    else:
        click.echo(text)


@lock.command(name="validate")
@click.argument("file", type=click.Path(dir_okay=False))
@_json_option
@click.pass_context
@_guarded
def lock_validate(ctx: click.Context, file: str, as_json: bool) -> None:
    """Check this host against FILE; exit 1 on a mismatch, saying why."""
    try:
        lockfile.validate(file)
    except LockMismatchError as exc:
        if as_json:
            click.echo(_dump({"ok": False, "reason": exc.reason, "message": str(exc)}))
        else:
            click.echo(f"mismatch: {exc}")
        ctx.exit(EXIT_UNHEALTHY)
    if as_json:
        click.echo(_dump({"ok": True, "reason": None, "message": "ok"}))
    else:
        click.echo("ok: this host satisfies the lock file")


@snakepit.command()
@click.option("--port", type=click.IntRange(0, 65535), default=9808, show_default=True)
@click.option("--address", default="0.0.0.0", show_default=True, help="Address to bind.")
@click.option("--once", is_flag=True, help="Print the exposition text once and exit.")
@_breaker_option
@_pool_option
@click.pass_context
@_guarded
def metrics(
    ctx: click.Context,
    *,
    port: int,
    address: str,
    once: bool,
    breakers: tuple[str, ...],
    pools: tuple[str, ...],
) -> None:
    """Serve fleet metrics for Prometheus until interrupted (``--once``: print them)."""
    from snakepit_celery import metrics as prom  # noqa: PLC0415

    fleet = _fleet(ctx, breakers, pools)
    registry = prom.build_registry(prom.FleetCollector(fleet.status))
    if once:
        click.echo(prom.exposition(registry), nl=False)
        return
    server = prom.start_metrics_server(port, address, registry=registry)
    click.echo(f"serving snakepit metrics on http://{address}:{server.port}/metrics", err=True)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            prom.wait_forever(server)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM stops ``metrics`` the way Ctrl-C does (exit 0, port released)."""
    raise KeyboardInterrupt


@snakepit.command()
@click.option("--host", default=None, help="Host name to look for (default: this host).")
@_json_option
@click.pass_context
@_guarded
def ping(ctx: click.Context, host: str | None, as_json: bool) -> None:
    """Exit 0 when a node of this host has a live heartbeat (a container health check)."""
    host = host or socket.gethostname()
    nodes = [
        n.as_dict()
        for n in fleet_status(_fleet(ctx).store).nodes
        if n.node.partition("@")[2] == host
    ]
    if as_json:
        click.echo(_dump({"host": host, "nodes": nodes}))
    else:
        click.echo(f"{host}: {len(nodes)} live node(s)")
    ctx.exit(EXIT_OK if nodes else EXIT_UNHEALTHY)


@snakepit.command(
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@click.option("--per-device", is_flag=True, help="One Celery node per GPU (gpu<i>@host) plus cpu@.")
@click.option("--no-cpu-node", is_flag=True, help="With --per-device: no cpu@ node.")
@click.argument("worker_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
@_guarded
def worker(
    ctx: click.Context, per_device: bool, no_cpu_node: bool, worker_args: tuple[str, ...]
) -> None:
    """Start a Celery worker; ``--per-device`` starts one node per GPU of this host.

    Other arguments go to ``celery worker`` unchanged.
    """
    app_name = _app_name(ctx)
    if not per_device:
        _app(ctx).worker_main(["worker", *worker_args])
        return
    from snakepit_celery.celery.perdevice import run_per_device  # noqa: PLC0415

    configured = load_settings(_app(ctx).conf).hardware
    if configured:
        hardware.configure(configured)
    code = run_per_device(app_name, worker_args, hardware.devices(), cpu_node=not no_cpu_node)
    ctx.exit(code)


def _app_name(ctx: click.Context) -> str:
    """The ``-A`` value the user gave, so child nodes load the same app."""
    given = ctx.find_root().params.get("app")
    if isinstance(given, str) and given:
        return given
    app = _app(ctx)
    main = getattr(app, "main", None)
    if not main or main == "__main__":
        raise click.UsageError("worker --per-device needs the app as -A module[:attribute]")
    return str(main)
