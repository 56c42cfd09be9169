"""The ``dcostack`` command: run the platform locally, migrate, self-check, and the dev cloud."""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path
from typing import Annotated

import typer

from services.cli.infra import MEMORY_STORAGE
from services.cli.plan import app as plan_app
from services.cli.plan import credentials
from services.cli.run import app as run_app
from services.cli.run import register_plan_commands
from services.cli.supervisor import UpOptions, default_state_dir, run_self_check, up

app = typer.Typer(help="DCOSTACK: orchestration for OpenStack clouds.", no_args_is_help=True)
register_plan_commands(plan_app)


@app.callback()
def _root(
    os_cloud: Annotated[
        str | None,
        typer.Option(
            "--os-cloud",
            envvar="OS_CLOUD",
            show_envvar=True,
            help="The clouds.yaml entry plan and run commands log in to Keystone with",
        ),
    ] = None,
) -> None:
    """DCOSTACK: orchestration for OpenStack clouds."""
    credentials["cloud"] = os_cloud


app.add_typer(plan_app, name="plan")
app.add_typer(run_app, name="run")


@app.command("up")
def up_command(
    check: Annotated[bool, typer.Option(help="Exit after the self-check (non-zero if it fails)")] = False,
    state_dir: Annotated[
        Path | None, typer.Option(help="Logs and embedded PostgreSQL data [default: ~/.local/state/dcostack]")
    ] = None,
    kafka_port: Annotated[int, typer.Option(help="Port of the embedded broker")] = 9092,
    kafka_storage: Annotated[
        str,
        typer.Option(
            help="Storage of the embedded broker: memory://tansu/ (lost when it stops) or s3://BUCKET/ "
            "(kept; the S3 endpoint and keys come from AWS_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
            "AWS_DEFAULT_REGION, and AWS_ALLOW_HTTP=true for plain http)"
        ),
    ] = MEMORY_STORAGE,
    base_port: Annotated[int, typer.Option(help="HTTP port of the planner; the others follow")] = 8081,
    plan: Annotated[
        Path | None,
        typer.Option(help="A plan to apply after the self-check (in devcloud unless DCOSTACK_CLOUD is set)"),
    ] = None,
) -> None:
    """Start a broker and PostgreSQL if none is configured, then every service; Ctrl-C stops all."""
    opts = UpOptions(
        state_dir=state_dir or default_state_dir(),
        kafka_port=kafka_port,
        kafka_storage=kafka_storage,
        base_port=base_port,
        check=check,
        plan=plan,
    )
    raise typer.Exit(up(opts))


@app.command("migrate")
def migrate_command() -> None:
    """Apply every service's database migrations (the one-shot ``migrate`` job of compose and Helm)."""
    from services.cli.migrate import migrate_all

    for schema, applied in asyncio.run(migrate_all()).items():
        typer.echo(f"{schema}: {', '.join(applied) if applied else 'up to date'}")


@app.command("check")
def check_command(
    planner_url: Annotated[str, typer.Option(help="Base URL of the planner")] = "http://127.0.0.1:8081",
    count: Annotated[int, typer.Option(min=1, max=10000)] = 1,
) -> None:
    """Self-check a running platform: a probe through Kafka to every service and back."""
    ok, message = run_self_check(planner_url, count)
    typer.echo(("self-check passed: " if ok else "self-check failed: ") + message)
    raise typer.Exit(0 if ok else 1)


def _mount_devcloud() -> None:
    try:
        devcloud_app = importlib.import_module("devcloud.cli").app
    except ImportError:  # devcloud is optional for the platform's own commands
        return
    app.add_typer(devcloud_app, name="devcloud", help="A real OpenStack on this machine (fake hypervisor).")


_mount_devcloud()


def main() -> None:
    app()
