"""``dcostack devcloud up|down|status|env``."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from devcloud.cloud import Devcloud
from devcloud.procs import StepFailed
from devcloud.settings import DevcloudSettings

app = typer.Typer(no_args_is_help=True)
console = Console(stderr=True)


def _cloud(**overrides: object) -> Devcloud:
    try:
        settings = DevcloudSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        for err in exc.errors():
            name = "DCOSTACK_DEVCLOUD_" + "_".join(str(p) for p in err["loc"]).upper()
            console.print(f"[red]{name}[/]: {err['msg']}")
        raise typer.Exit(2) from None
    started = time.monotonic()

    def report(what: str, message: str) -> None:
        console.print(f"[dim]{time.monotonic() - started:6.1f}s[/] [bold]{what:<14}[/] {message}")

    return Devcloud(settings, report)


@app.command()
def up(
    heat: Annotated[bool, typer.Option("--heat", help="Also run Heat (the peer bench/plans.py compares with)")] = False,
) -> None:
    """Install (first time), configure and start every OpenStack service; idempotent."""
    cloud = _cloud(heat=True) if heat else _cloud()
    try:
        result = cloud.up()
    except StepFailed as exc:
        console.print(f"[red]devcloud up failed:[/] {exc}")
        raise typer.Exit(1) from None
    console.print(
        f"[green]devcloud is up[/] in {result.seconds:.1f}s ({len(result.started)} processes started, "
        f"{len(result.already_running)} already running). Use it with: "
        f"[bold]export OS_CLOUD={cloud.s.cloud_name}[/] (admin: {cloud.s.cloud_name}-admin); logs in {cloud.s.logs}"
    )


@app.command()
def down(
    wipe: Annotated[bool, typer.Option(help="Also drop the databases and delete all state")] = False,
) -> None:
    """Stop exactly the processes devcloud started (PID files); keep state unless --wipe."""
    cloud = _cloud()
    stopped = cloud.down(wipe=wipe)
    console.print(f"stopped {len(stopped)} processes" + (" and wiped all state" if wipe else ""))


@app.command()
def status() -> None:
    """Each process: running or not, and whether its API answers."""
    cloud = _cloud()
    rows = cloud.status()
    if not rows:
        console.print("devcloud is not installed or configured here; run: dcostack devcloud up")
        raise typer.Exit(1)
    table = Table("service", "process", "pid", "health", "detail")
    for row in rows:
        health = {True: "[green]ok[/]", False: "[red]down[/]", None: "[green]running[/]"}[row.healthy]
        table.add_row(row.group, row.name, str(row.pid or "-"), health, row.detail)
    Console().print(table)
    console.print(f"RSS of all OpenStack processes: {cloud.rss_bytes() / 2**20:.0f} MiB; logs in {cloud.s.logs}")
    raise typer.Exit(0 if all(r.healthy is not False for r in rows) else 1)


@app.command()
def env() -> None:
    """Print the shell exports that point openstack clients at devcloud."""
    for key, value in _cloud().env().items():
        typer.echo(f"export {key}={value}")
