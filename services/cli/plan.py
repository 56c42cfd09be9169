"""``dcostack plan``: check plan documents offline, and store and read plans through the planner API.

Every failure is one line per problem on stderr and a non-zero exit, never a traceback: an invalid
plan prints each error with its JSON path, an unreachable planner says how to start one.
"""

from __future__ import annotations

import json
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn
from uuid import UUID

import httpx
import typer
import yaml
from rich.console import Console
from rich.table import Table

from services.planner.plans.documents import Format, parse_document
from services.planner.plans.domain import PlanInvalid, check_plan
from services.planner.plans.schemas import PlanCheckView
from services.planner.plans.spec import PlanError
from shared.errors import DcostackError
from shared.identity import DEFAULT_PROJECT

app = typer.Typer(
    help="Plans: validate offline, create, update, list, show; apply and destroy in the cloud.", no_args_is_help=True
)

#: markup off: plan names and messages are printed as written, never read as rich markup.
console = Console(markup=False, highlight=False)
TIMEOUT_SECONDS = 30.0


class Output(StrEnum):
    table = "table"
    json = "json"


PlannerUrl = Annotated[
    str, typer.Option(envvar="DCOSTACK_PLANNER_URL", help="Base URL of the planner API", show_envvar=True)
]
Project = Annotated[
    str,
    typer.Option(
        help="Under noauth only: the project to act in (X-Project-Id). With Keystone, the project is that of "
        "the clouds.yaml entry (--os-cloud / OS_CLOUD)"
    ),
]
OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="table for people, json for scripts")]
FileArg = Annotated[Path, typer.Argument(help="Plan document: .json is read as JSON, anything else as YAML")]
PlanArg = Annotated[str, typer.Argument(help="Plan name or id")]
VersionOpt = Annotated[int | None, typer.Option(min=1, help="A version other than the latest")]
DEFAULT_URL = "http://127.0.0.1:8081"


def fail(*lines: str) -> NoReturn:
    for line in lines:
        typer.echo(f"error: {line}", err=True)
    raise typer.Exit(1)


def _format(path: Path) -> Format:
    return "json" if path.suffix.lower() == ".json" else "yaml"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        fail(f"cannot read {path}: {e.strerror or e}")


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=False))


def _error_lines(errors: list[dict[str, Any]]) -> list[str]:
    return [f"{e.get('path', '$')}: {e.get('message', e)}" for e in errors]


@app.command("validate")
def validate_command(file: FileArg, output: OutputOpt = Output.table) -> None:
    """Check a plan document on this machine (no planner needed): every error with its JSON path, or
    the steps it compiles to. Exits 1 if the plan is invalid."""
    try:
        checked = check_plan(parse_document(_read(file), _format(file)))
    except DcostackError as e:
        # A plan error has a path; a document that cannot even be read is one error about the whole of it.
        errors = e.errors if isinstance(e, PlanInvalid) else [PlanError("$", e.detail)]
        if output is Output.json:
            body = {"valid": False, "error": type(e).__name__, "detail": e.detail}
            _print_json({**body, "errors": [x.to_dict() for x in errors]})
            raise typer.Exit(1) from None
        fail(*(f"{x.path}: {x.message}" for x in errors), f"{file} is not a valid plan: {e.detail}")
    view = PlanCheckView.of(checked)
    if output is Output.json:
        _print_json(view.model_dump(mode="json"))
        return
    typer.echo(f"plan {view.name!r} is valid: {view.summary.total} steps")
    table = Table()
    table.add_column("kind")
    table.add_column("steps", justify="right")
    for kind, n in view.summary.by_kind.items():
        table.add_row(kind, str(n))
    console.print(table)


#: The clouds.yaml entry the CLI logs in with (``dcostack --os-cloud NAME``, else ``OS_CLOUD``).
credentials: dict[str, str | None] = {"cloud": None}


def keystone_token(cloud: str) -> tuple[str, str]:
    """Log in with a clouds.yaml entry: its token and project id. Fails with one clear line."""
    import openstack.config
    from keystoneauth1 import exceptions as ks
    from openstack import exceptions as sdk

    try:
        session = openstack.config.OpenStackConfig().get_one(cloud=cloud).get_session()
        token, project = session.get_token(), session.get_project_id()
        if not token or not project:
            fail(f"clouds.yaml entry {cloud!r} gives no project-scoped token; give it a project_name")
        return token, project
    except sdk.ConfigException as e:
        fail(f"no cloud named {cloud!r} in clouds.yaml ({e}); pass --os-cloud NAME or set OS_CLOUD")
    except ks.Unauthorized as e:
        fail(f"Keystone refused the credentials of clouds.yaml entry {cloud!r}: {e}")
    except ks.ClientException as e:
        fail(f"cannot log in with clouds.yaml entry {cloud!r}: {e}")


class Planner:
    """The planner API over HTTP; each failure ends the command with one clear line per problem.

    With a clouds.yaml entry (``cloud``, ``dcostack --os-cloud`` or ``OS_CLOUD``) it logs in to Keystone and
    sends the token; the planner then scopes everything to that entry's project. Without one it names
    ``project`` (X-Project-Id), which only a noauth planner accepts."""

    def __init__(self, url: str, project: str, cloud: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.cloud = cloud or credentials["cloud"] or os.environ.get("OS_CLOUD") or None
        headers = {"X-Project-Id": project}
        self.project = project
        if self.cloud:
            token, project_id = keystone_token(self.cloud)
            headers["X-Auth-Token"] = token
            self.project = project_id
        self.client = httpx.Client(base_url=self.url, timeout=TIMEOUT_SECONDS, headers=headers)

    def __enter__(self) -> Planner:
        return self

    def __exit__(self, *_: object) -> None:
        self.client.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            r = self.client.request(method, path, **kwargs)
        except httpx.ConnectError:
            fail(
                f"planner not reachable at {self.url}; start the platform with `dcostack up` "
                "or point --planner-url (DCOSTACK_PLANNER_URL) at a running planner"
            )
        except httpx.TimeoutException:
            fail(f"planner at {self.url} did not answer within {TIMEOUT_SECONDS:.0f}s")
        except httpx.HTTPError as e:
            fail(f"request to the planner at {self.url} failed: {e}")
        try:
            body = r.json()
        except ValueError:
            body = None
        if r.is_success:
            return body
        if r.status_code == 401 and not self.cloud:
            fail(
                f"the planner at {self.url} needs a Keystone token: pass --os-cloud NAME or set OS_CLOUD "
                "(an entry of clouds.yaml; devcloud writes `devcloud`)"
            )
        if isinstance(body, dict) and isinstance(body.get("errors"), list):
            fail(*_error_lines(body["errors"]), f"{body.get('detail', 'the planner refused the plan')}")
        if isinstance(body, dict) and "detail" in body:
            fail(f"{body['detail']} (HTTP {r.status_code})")
        fail(f"the planner answered HTTP {r.status_code}: {r.text[:200]}")

    def send(self, method: str, path: str, file: Path) -> Any:
        content_type = "application/json" if _format(file) == "json" else "application/yaml"
        return self.call(method, path, content=_read(file), headers={"Content-Type": content_type})

    def resolve(self, plan: str) -> str:
        """A plan's id from its id or its name."""
        try:
            return str(UUID(plan))
        except ValueError:
            pass
        found = self.call("GET", "/v1/plans", params={"name": plan})["plans"]
        if not found:
            fail(f"no plan named {plan!r} in project {self.project!r}; list plans with `dcostack plan list`")
        return str(found[0]["id"])


def _show_stored(body: dict[str, Any], verb: str) -> None:
    v = body["version"]
    typer.echo(f"{verb} plan {body['name']!r} version {v['version']} (id {body['id']}, project {body['project_id']})")


@app.command("create")
def create_command(
    file: FileArg,
    planner_url: PlannerUrl = DEFAULT_URL,
    project: Project = DEFAULT_PROJECT,
    output: OutputOpt = Output.table,
) -> None:
    """Store a new plan from a document; its name is the document's ``name``."""
    with Planner(planner_url, project) as api:
        body = api.send("POST", "/v1/plans", file)
    if output is Output.json:
        _print_json(body)
    else:
        _show_stored(body, "created")


@app.command("update")
def update_command(
    plan: PlanArg,
    file: FileArg,
    planner_url: PlannerUrl = DEFAULT_URL,
    project: Project = DEFAULT_PROJECT,
    output: OutputOpt = Output.table,
) -> None:
    """Store a document as the plan's next version (the same document as the latest adds none)."""
    with Planner(planner_url, project) as api:
        body = api.send("PUT", f"/v1/plans/{api.resolve(plan)}", file)
    if output is Output.json:
        _print_json(body)
    else:
        _show_stored(body, "updated")


@app.command("list")
def list_command(
    planner_url: PlannerUrl = DEFAULT_URL,
    project: Project = DEFAULT_PROJECT,
    output: OutputOpt = Output.table,
) -> None:
    """The project's plans, newest first."""
    with Planner(planner_url, project) as api:
        body = api.call("GET", "/v1/plans")
    if output is Output.json:
        _print_json(body)
        return
    table = Table(title=f"plans in project {api.project!r}")
    for column in ("name", "id", "version", "created", "updated"):
        table.add_column(column, justify="right" if column == "version" else "left")
    for p in body["plans"]:
        table.add_row(p["name"], p["id"], str(p["latest_version"]), p["created_at"], p["updated_at"])
    console.print(table)


@app.command("show")
def show_command(
    plan: PlanArg,
    version: VersionOpt = None,
    planner_url: PlannerUrl = DEFAULT_URL,
    project: Project = DEFAULT_PROJECT,
    output: OutputOpt = Output.table,
) -> None:
    """A plan and the document of its latest version (or of ``--version N``)."""
    with Planner(planner_url, project) as api:
        plan_id = api.resolve(plan)
        body = api.call("GET", f"/v1/plans/{plan_id}" + (f"/versions/{version}" if version else ""))
    if output is Output.json:
        _print_json(body)
        return
    v = body["version"]
    table = Table(title=f"plan {body['name']!r}", show_header=False)
    table.add_column("field")
    table.add_column("value")
    for field, value in (
        ("id", body["id"]),
        ("project", body["project_id"]),
        ("version", f"{v['version']} of {body['latest_version']}"),
        ("version created", v["created_at"]),
        ("created by", v["created_by"] or "-"),
        ("plan created", body["created_at"]),
    ):
        table.add_row(field, str(value))
    console.print(table)
    typer.echo(yaml.safe_dump(v["document"], sort_keys=False, allow_unicode=True), nl=False)


@app.command("preview")
def preview_command(
    plan: PlanArg,
    version: VersionOpt = None,
    planner_url: PlannerUrl = DEFAULT_URL,
    project: Project = DEFAULT_PROJECT,
    output: OutputOpt = Output.table,
) -> None:
    """What applying the plan would create, change and delete in the cloud, and whether the cloud can take it
    (quota, flavors, images, external networks, subnet room, host capacity). Failing checks come first, each
    with the plan field to change. Exits 1 if a check failed; start a run from it with its preview id."""
    with Planner(planner_url, project) as api:
        body = api.call("POST", f"/v1/plans/{api.resolve(plan)}/preview", json={"version": version})
    if output is Output.json:
        _print_json(body)
    else:
        show_preview(body)
    if not body["ok"]:
        raise typer.Exit(1)


def show_preview(body: dict[str, Any]) -> None:
    s = body["summary"]
    verdict = "ok" if body["ok"] else "NOT feasible"
    typer.echo(
        f"preview {body['preview_id']} of plan {body['plan_name']!r} version {body['version']}: {verdict} — "
        f"{s['create']} to create, {s['change']} to change, {s['delete']} to delete, {s['unchanged']} unchanged"
        f" ({body['took_ms']:.0f} ms)"
    )
    checks = Table(title="checks")
    for column in ("check", "result", "detail", "fix"):
        checks.add_column(column, overflow="fold")
    marks = {"failed": "FAILED", "not_run": "not run", "passed": "ok"}
    for c in body["checks"]:
        checks.add_row(c["name"], marks[c["status"]], c["message"], c.get("fix") or "")
    console.print(checks)
    changes = [e for e in body["diff"] if e["action"] != "unchanged"]
    if not changes:
        typer.echo("no resource changes")
        return
    diff = Table(title="changes")
    for column in ("action", "resource", "kind", "detail"):
        diff.add_column(column, overflow="fold")
    for e in changes:
        detail = ", ".join(f"{k}: {v['old']} → {v['new']}" for k, v in e["changes"].items()) or (e["path"] or "")
        diff.add_row(e["action"], e["key"], e["kind"], detail)
    console.print(diff)
