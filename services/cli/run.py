"""``dcostack plan apply|destroy`` and ``dcostack run show|watch``: runs with live per-step progress."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from services.cli.plan import (
    DEFAULT_URL,
    Output,
    OutputOpt,
    PlanArg,
    Planner,
    PlannerUrl,
    Project,
    _print_json,
    console,
)
from services.planner.domain import DEFAULT_PROJECT

app = typer.Typer(help="Plan runs: show one, or watch it live until it ends.", no_args_is_help=True)
RunArg = Annotated[str, typer.Argument(help="Run id")]
WaitOpt = Annotated[bool, typer.Option("--wait/--no-wait", help="Watch the run live until it ends")]
STATE_STYLE = {
    "succeeded": "green",
    "failed": "red",
    "running": "yellow",
    "dispatched": "yellow",
    "pending": "dim",
    "skipped": "dim",
}


def render(run: dict[str, Any], all_steps: bool = True) -> Group:
    counts = ", ".join(f"{n} {state}" for state, n in sorted(run["counts"].items()))
    head = Text.assemble(
        (f"{run['action']} run {run['id']} ", "bold"),
        (run["state"], STATE_STYLE.get(run["state"], "")),
        f"  plan version {run['plan_version']}  [{counts}]",
    )
    table = Table(show_edge=False, pad_edge=False)
    for column in ("step", "state", "what the cloud says"):
        table.add_column(column, overflow="fold")
    steps = run["steps"]
    if not all_steps:  # live view: what moves, what failed, and the last few finished
        moving = [s for s in steps if s["state"] in ("dispatched", "running", "failed")]
        done = [s for s in steps if s["state"] == "succeeded"][-5:]
        steps = done + moving
    for s in steps:
        said = s["message"]
        if s["error"]:
            err = s["error"]
            said = f"{err.get('message', '')}" + (f" — {err['hint']}" if err.get("hint") else "") + f" ({s['path']})"
        table.add_row(s["key"], Text(s["state"], STATE_STYLE.get(s["state"], "")), said)
    parts: list[Any] = [head, table]
    if run["message"]:
        parts.append(Text(run["message"], STATE_STYLE.get(run["state"], "")))
    return Group(*parts)


def watch(api: Planner, run_id: str, output: Output) -> dict[str, Any]:
    """Poll the run until it ends, redrawing the live table; the final state on exit."""
    run: dict[str, Any] = api.call("GET", f"/v1/runs/{run_id}")
    if output is Output.json:
        while run["state"] == "running":
            time.sleep(1.0)
            run = api.call("GET", f"/v1/runs/{run_id}")
        return run
    with Live(render(run, all_steps=False), console=console, refresh_per_second=4, transient=True) as live:
        while run["state"] == "running":
            time.sleep(1.0)
            run = api.call("GET", f"/v1/runs/{run_id}")
            live.update(render(run, all_steps=False))
    return run


def _finish(run: dict[str, Any], output: Output) -> None:
    if output is Output.json:
        _print_json(run)
    else:
        console.print(render(run))
    raise typer.Exit(0 if run["state"] in ("succeeded", "running") else 1)


def start(action: str, plan: str, version: int | None, wait: bool, url: str, project: str, output: Output) -> None:
    with Planner(url, project) as api:
        plan_id = api.resolve(plan)
        run = api.call("POST", f"/v1/plans/{plan_id}/runs", json={"action": action, "version": version})
        if output is Output.table:
            console.print(f"{action} run {run['id']} started ({len(run['steps'])} steps)")
        if wait:
            run = watch(api, run["id"], output)
    _finish(run, output)


@app.command("show")
def show_command(
    run_id: RunArg, planner_url: PlannerUrl = DEFAULT_URL, project: Project = DEFAULT_PROJECT,
    output: OutputOpt = Output.table,
) -> None:  # fmt: skip
    """A run and every step, with the cloud's own error and a hint for failed ones."""
    with Planner(planner_url, project) as api:
        _finish(api.call("GET", f"/v1/runs/{run_id}"), output)


@app.command("watch")
def watch_command(
    run_id: RunArg, planner_url: PlannerUrl = DEFAULT_URL, project: Project = DEFAULT_PROJECT,
    output: OutputOpt = Output.table,
) -> None:  # fmt: skip
    """Follow a run live until it ends; exit 0 if it succeeded, 1 if it failed."""
    with Planner(planner_url, project) as api:
        _finish(watch(api, run_id, output), output)


def register_plan_commands(plan_app: typer.Typer) -> None:
    @plan_app.command("apply")
    def apply_command(
        plan: PlanArg,
        version: Annotated[int | None, typer.Option(min=1, help="A version other than the latest")] = None,
        wait: WaitOpt = True,
        planner_url: PlannerUrl = DEFAULT_URL,
        project: Project = DEFAULT_PROJECT,
        output: OutputOpt = Output.table,
    ) -> None:
        """Build the plan in the cloud, step by step in dependency order, with live progress."""
        start("apply", plan, version, wait, planner_url, project, output)

    @plan_app.command("destroy")
    def destroy_command(
        plan: PlanArg,
        wait: WaitOpt = True,
        planner_url: PlannerUrl = DEFAULT_URL,
        project: Project = DEFAULT_PROJECT,
        output: OutputOpt = Output.table,
    ) -> None:
        """Delete everything the plan built, in reverse dependency order, waiting for each delete."""
        start("destroy", plan, None, wait, planner_url, project, output)
