"""``dcostack plan apply|destroy|scale`` and ``dcostack run show|watch|cancel|resume``: runs with live
per-step progress."""

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
    VersionOpt,
    _print_json,
    console,
    fail,
)
from shared.identity import DEFAULT_PROJECT

app = typer.Typer(help="Plan runs: show one, watch it live until it ends, cancel it, resume it.", no_args_is_help=True)
RunArg = Annotated[str, typer.Argument(help="Run id")]
WaitOpt = Annotated[bool, typer.Option("--wait/--no-wait", help="Watch the run live until it ends")]
ResumeVersionOpt = Annotated[int | None, typer.Option(min=1, help="A plan version other than the run's own")]
#: Run states while a run is in progress (the planner's runs.ACTIVE).
ACTIVE = ("running", "cancelling", "rolling_back")
STATE_STYLE = {
    "succeeded": "green",
    "failed": "red",
    "error": "red",
    "running": "yellow",
    "dispatched": "yellow",
    "cancelling": "yellow",
    "rolling_back": "magenta",
    "rolled_back": "magenta",
    "cancelled": "dim",
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
    for column in ("step", "state", "resource", "took", "what the cloud says"):
        table.add_column(column, overflow="fold", justify="right" if column == "took" else "left")
    steps = run["steps"]
    if not all_steps:  # live view: what moves, what failed, and the last few finished
        moving = [s for s in steps if s["state"] in ("dispatched", "running", "failed", "error")]
        done = [s for s in steps if s["state"] in ("succeeded", "rolled_back")][-5:]
        steps = done + moving
    for s in steps:
        said = s["message"]
        if s["error"]:
            err = s["error"]
            said = f"{err.get('message', '')}" + (f" — {err['hint']}" if err.get("hint") else "") + f" ({s['path']})"
        key = s["key"]
        if s.get("rollback"):
            key += " (rollback)"
        elif s.get("action") == "destroy" and run["action"] == "apply":
            key += " (remove)"  # scale-in: the version no longer has it
        table.add_row(
            key,
            Text(s["state"], STATE_STYLE.get(s["state"], "")),
            s.get("resource_id") or "",
            _took(s.get("took_seconds")),
            said,
        )
    parts: list[Any] = [head, table]
    if run["message"]:
        parts.append(Text(run["message"], STATE_STYLE.get(run["state"], "")))
    return Group(*parts)


def _took(seconds: float | None) -> str:
    """How long a step took, as a person reads it: 0.4s, 12s, 3m05s."""
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s"


def watch(api: Planner, run_id: str, output: Output) -> dict[str, Any]:
    """Poll the run until it ends, redrawing the live table; the final state on exit."""
    run: dict[str, Any] = api.call("GET", f"/v1/runs/{run_id}")
    if output is Output.json:
        while run["state"] in ACTIVE:
            time.sleep(1.0)
            run = api.call("GET", f"/v1/runs/{run_id}")
        return run
    with Live(render(run, all_steps=False), console=console, refresh_per_second=4, transient=True) as live:
        while run["state"] in ACTIVE:
            time.sleep(1.0)
            run = api.call("GET", f"/v1/runs/{run_id}")
            live.update(render(run, all_steps=False))
    return run


def _finish(run: dict[str, Any], output: Output, ok: tuple[str, ...] = ("succeeded", *ACTIVE)) -> None:
    if output is Output.json:
        _print_json(run)
    else:
        console.print(render(run))
    raise typer.Exit(0 if run["state"] in ok else 1)


def start(
    action: str,
    plan: str,
    version: int | None,
    wait: bool,
    url: str,
    project: str,
    output: Output,
    preview_id: str | None = None,
    force: bool = False,
) -> None:
    with Planner(url, project) as api:
        plan_id = api.resolve(plan)
        body: dict[str, Any] = {"action": action, "version": version}
        if preview_id:
            body |= {"preview_id": preview_id, "force": force}
        run = api.call("POST", f"/v1/plans/{plan_id}/runs", json=body)
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


@app.command("cancel")
def cancel_command(
    run_id: RunArg, wait: WaitOpt = True, planner_url: PlannerUrl = DEFAULT_URL, project: Project = DEFAULT_PROJECT,
    output: OutputOpt = Output.table,
) -> None:  # fmt: skip
    """Stop a run: nothing more is dispatched, steps in flight finish, then it ends cancelled (resume it later)."""
    with Planner(planner_url, project) as api:
        run = api.call("POST", f"/v1/runs/{run_id}/cancel")
        if output is Output.table:
            console.print(f"run {run_id} {run['state']}")
        if wait:
            run = watch(api, run_id, output)
    _finish(run, output, ok=("cancelled", *ACTIVE))


@app.command("resume")
def resume_command(
    run_id: RunArg, version: ResumeVersionOpt = None, wait: WaitOpt = True, planner_url: PlannerUrl = DEFAULT_URL,
    project: Project = DEFAULT_PROJECT, output: OutputOpt = Output.table,
) -> None:  # fmt: skip
    """Continue a failed (held) or cancelled run, e.g. with the fixed plan's ``--version``; completed steps
    whose parameters did not change are not redone."""
    with Planner(planner_url, project) as api:
        run = api.call("POST", f"/v1/runs/{run_id}/resume", json={"version": version})
        if output is Output.table:
            console.print(f"run {run_id} resumed with plan version {run['plan_version']}: {run['message']}")
        if wait:
            run = watch(api, run_id, output)
    _finish(run, output)


def scale(plan: str, group: str, count: int, watch_run: bool, url: str, project: str, output: Output) -> None:
    """Store a plan version with ``group``'s count changed, then apply it (which adds or removes by diff)."""
    with Planner(url, project) as api:
        plan_id = api.resolve(plan)
        document = api.call("GET", f"/v1/plans/{plan_id}")["version"]["document"]
        groups = document.get("instance_groups") or []
        chosen = [g for g in groups if isinstance(g, dict) and g.get("name") == group]
        if not chosen:
            names = ", ".join(str(g.get("name")) for g in groups if isinstance(g, dict)) or "none"
            fail(f"plan {plan!r} has no instance group {group!r}; its groups: {names}")
        before = chosen[0].get("count")
        chosen[0]["count"] = count
        stored = api.call("PUT", f"/v1/plans/{plan_id}", json=document)
        version = stored["version"]["version"]
        run = api.call("POST", f"/v1/plans/{plan_id}/runs", json={"action": "apply", "version": version})
        if output is Output.table:
            console.print(
                f"plan {stored['name']!r} version {version}: {group} count {before} → {count}; "
                f"apply run {run['id']} started ({run['message']})"
            )
        if watch_run:
            run = watch(api, run["id"], output)
    _finish(run, output)


def register_plan_commands(plan_app: typer.Typer) -> None:
    @plan_app.command("apply")
    def apply_command(
        plan: PlanArg,
        version: VersionOpt = None,
        preview_id: Annotated[
            str | None,
            typer.Option(
                "--preview",
                help="Apply what this preview showed (dcostack plan preview): refused if "
                "the plan or the cloud changed since, or if one of its checks fails",
            ),
        ] = None,
        force: Annotated[bool, typer.Option(help="With --preview: run even though its checks fail")] = False,
        wait: WaitOpt = True,
        planner_url: PlannerUrl = DEFAULT_URL,
        project: Project = DEFAULT_PROJECT,
        output: OutputOpt = Output.table,
    ) -> None:
        """Build the plan in the cloud, step by step in dependency order, with live progress."""
        start("apply", plan, version, wait, planner_url, project, output, preview_id, force)

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

    @plan_app.command("scale")
    def scale_command(
        plan: PlanArg,
        group: Annotated[str, typer.Argument(help="Instance group name")],
        count: Annotated[int, typer.Argument(min=0, max=1000, help="The group's new count")],
        watch_run: Annotated[bool, typer.Option("--watch", help="Watch the apply run live until it ends")] = False,
        planner_url: PlannerUrl = DEFAULT_URL,
        project: Project = DEFAULT_PROJECT,
        output: OutputOpt = Output.table,
    ) -> None:
        """Change a group's count as a new plan version and apply it: new instances are added, surplus ones
        removed newest first with their members, floating IPs and volumes."""
        scale(plan, group, count, watch_run, planner_url, project, output)
