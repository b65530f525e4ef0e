"""The ``celery -A proj snakepit`` group and its fleet commands.

Celery's own group loads the app (``-A``) and hands it over in
``ctx.obj.app``; ``hardware`` and ``lock`` come from ``host`` (shared with
``python -m snakepit_celery``).
"""

from __future__ import annotations

import contextlib
import signal
import socket
from collections.abc import Sequence
from types import FrameType
from typing import Any

import click

from snakepit_celery import hardware
from snakepit_celery.barrier import CrashBarrier
from snakepit_celery.celery.app_context import app_group
from snakepit_celery.celery.cli.fleet import Fleet
from snakepit_celery.celery.cli.host import configure_hardware, hardware_command, lock
from snakepit_celery.celery.cli.output import (
    EXIT_OK,
    EXIT_UNHEALTHY,
    context_app,
    dump,
    fail,
    guarded,
    json_option,
    suggestion,
)
from snakepit_celery.celery.cli.quarantine import quarantine
from snakepit_celery.celery.cli.tables import breakers_table, status_text, taints_table
from snakepit_celery.celery.cli.task import task_command
from snakepit_celery.fleet import FleetStatus, fleet_status, read_nodes, read_taints
from snakepit_celery.metrics.multiprocess import configured_port, ensure_multiprocess_dir

__all__ = ["snakepit"]

_breaker_option = click.option(
    "--breaker", "breakers", multiple=True, metavar="NAME", help="Also show this breaker."
)
_pool_option = click.option(
    "--pool", "pools", multiple=True, metavar="POOL", help="Also show this pool."
)


def _app(ctx: click.Context) -> Any:
    app = context_app(ctx)
    if app is None:
        from celery import current_app  # noqa: PLC0415

        app = current_app
    return app


def _fleet(ctx: click.Context, breakers: Sequence[str] = (), pools: Sequence[str] = ()) -> Fleet:
    return Fleet.from_app(_app(ctx), breakers=breakers, pools=pools)


@click.group(name="snakepit")
@click.pass_context
def snakepit(ctx: click.Context) -> None:
    """snakepit_celery: fleet status, breakers, taints, hardware, lock files, metrics."""


snakepit.add_command(hardware_command)
snakepit.add_command(task_command)
snakepit.add_command(lock)
snakepit.add_command(quarantine)


@snakepit.command()
@json_option
@_breaker_option
@_pool_option
@click.pass_context
@guarded
def status(
    ctx: click.Context, as_json: bool, breakers: tuple[str, ...], pools: tuple[str, ...]
) -> None:
    """Nodes, breakers, pool health and taints; exit 1 when the fleet is unhealthy."""
    report = _fleet(ctx, breakers, pools).status()
    click.echo(dump(report.as_dict()) if as_json else status_text(report))
    ctx.exit(EXIT_OK if report.healthy else EXIT_UNHEALTHY)


@snakepit.command()
@json_option
@_breaker_option
@click.pass_context
@guarded
def breakers(ctx: click.Context, as_json: bool, breakers: tuple[str, ...]) -> None:
    """Every known breaker with its state and counts; exit 1 when one is open."""
    fleet = _fleet(ctx, breakers)
    report = FleetStatus(breakers=fleet_status(fleet.store, breakers=fleet.breakers()).breakers)
    if as_json:
        click.echo(dump([b.as_dict() for b in report.breakers]))
    else:
        click.echo(breakers_table(report))
    ctx.exit(EXIT_UNHEALTHY if report.open_breakers else EXIT_OK)


@snakepit.command()
@json_option
@_pool_option
@click.pass_context
@guarded
def taints(ctx: click.Context, as_json: bool, pools: tuple[str, ...]) -> None:
    """Active taints (workers and devices kept out of rotation) with the time they have left."""
    found = read_taints(_fleet(ctx, pools=pools).barriers())
    if as_json:
        click.echo(dump([t.as_dict() for t in found]))
    else:
        click.echo(taints_table(found))


def _lift(
    barriers: Sequence[CrashBarrier], worker: str | None, node: str | None, device: str | None
) -> int:
    """Clear the chosen taints in every pool (nothing chosen: every taint); how many went."""
    cleared = 0
    for barrier in barriers:
        if worker is not None:
            cleared += barrier.clear_taint(worker)
        elif node is not None:
            cleared += barrier.clear_taint(node=node, device=device)
        else:
            cleared += barrier.clear_taint()
    return cleared


def _nothing_lifted(
    barriers: Sequence[CrashBarrier], worker: str | None, node: str | None, device: str | None
) -> str:
    """Why ``untaint`` lifted nothing, naming the tainted targets close to the one asked for."""
    active = read_taints(barriers)
    devices = [t for t in active if t.kind == "device"]
    if worker is not None:
        known = [t.target for t in active if t.kind == "worker"]
        hint = suggestion(worker, known, "tainted workers")
        return f"no taint of worker {worker!r}; {hint}"
    if node is not None and device is not None:
        target = f"{node}:{device}"
        hint = suggestion(target, [t.target for t in devices], "tainted devices")
        return f"no taint of device {target!r}; {hint}"
    if node is not None:
        hint = suggestion(node, [str(t.taint.node) for t in devices], "nodes with tainted devices")
        return f"no device taint on node {node!r}; {hint}"
    return "no taint to lift"


@snakepit.command()
@click.option("--worker", metavar="WORKER", help="Lift the taint of this worker (node name).")
@click.option("--node", metavar="NODE", help="Lift the taints of this node's devices.")
@click.option("--device", metavar="DEVICE", help="With --node: only this device (cuda:0, a UUID).")
@click.option("--all", "clear_all", is_flag=True, help="Lift every taint.")
@_pool_option
@json_option
@click.pass_context
@guarded
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
    """Put a tainted worker or device back in rotation before its taint expires.

    Exits 1 when no taint matched, naming the tainted targets close to the one given.
    """
    chosen = sum([worker is not None, node is not None, clear_all])
    if chosen != 1:
        raise click.UsageError("give exactly one of --worker, --node [--device], or --all")
    if device is not None and node is None:
        raise click.UsageError("--device needs --node")
    barriers = _fleet(ctx, pools=pools).barriers()
    cleared = _lift(barriers, worker, node, device)
    if as_json:
        click.echo(dump({"cleared": cleared}))
    else:
        click.echo(f"cleared {cleared} taint(s)")
    if not cleared:
        fail(_nothing_lifted(barriers, worker, node, device))


@snakepit.command()
@click.argument("breaker")
@json_option
@click.pass_context
@guarded
def reset(ctx: click.Context, breaker: str, as_json: bool) -> None:
    """Close BREAKER and forget its counts, for every worker at once.

    Exits 1 for a breaker no task, store or ``--breaker`` knows, naming the close ones.
    """
    fleet = _fleet(ctx)
    known = [b.name for b in fleet.breakers()]
    if breaker not in known:
        fail(f"unknown breaker {breaker!r}; {suggestion(breaker, known, 'known breakers')}")
    found = fleet.breaker(breaker)
    found.reset()
    stats = found.stats()
    if as_json:
        click.echo(dump({"name": breaker, **stats.as_dict()}))
    else:
        click.echo(f"breaker {breaker} reset: {stats.state}")


@snakepit.command()
@click.option("--port", type=click.IntRange(0, 65535), default=9808, show_default=True)
@click.option("--address", default="0.0.0.0", show_default=True, help="Address to bind.")
@click.option("--once", is_flag=True, help="Print the exposition text once and exit.")
@_breaker_option
@_pool_option
@click.pass_context
@guarded
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
@json_option
@click.pass_context
@guarded
def ping(ctx: click.Context, host: str | None, as_json: bool) -> None:
    """Exit 0 when a node of this host has a live heartbeat (a container health check)."""
    host = host or socket.gethostname()
    nodes = [
        n.as_dict()
        for n in read_nodes(_fleet(ctx).store, app_group(_app(ctx)))
        if n.node.partition("@")[2] == host
    ]
    if as_json:
        click.echo(dump({"host": host, "nodes": nodes}))
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
@guarded
def worker(
    ctx: click.Context, per_device: bool, no_cpu_node: bool, worker_args: tuple[str, ...]
) -> None:
    """Start a Celery worker; ``--per-device`` starts one node per GPU of this host.

    Other arguments go to ``celery worker`` unchanged. With
    ``snakepit_metrics_port``, the nodes of one host share one metrics
    directory: the first to bind the port serves the sum of all of them.
    """
    app_name = _app_name(ctx)
    if not per_device:
        _app(ctx).worker_main(["worker", *worker_args])
        return
    from snakepit_celery.celery.perdevice import run_per_device  # noqa: PLC0415

    configure_hardware(ctx)
    if configured_port(_app(ctx)) is not None:
        # One sample directory for the host: the node that binds the port serves them all.
        ensure_multiprocess_dir()
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
