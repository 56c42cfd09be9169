"""``dcostack up``: broker and PostgreSQL if none is configured, then every service under one
supervisor that restarts crashed services, shows their status, and stops everything on Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table

from services.cli.infra import TansuBroker, ensure_database, port_open, resolve_admin_dsn
from services.cli.processes import DEFAULT_PORTS, SERVICES, ServiceProcess

console = Console(stderr=True)


@dataclass
class UpOptions:
    state_dir: Path
    kafka_port: int = 9092
    base_port: int = 8081
    check: bool = False
    probe_count: int = 1
    ready_timeout: float = 90.0
    plan: Path | None = None  # applied after the self-check, in devcloud unless DCOSTACK_CLOUD names a cloud


class Stop(Exception):
    pass


def _status_table(procs: dict[str, ServiceProcess], status: dict[str, str]) -> Table:
    table = Table(title="DCOSTACK services", expand=False)
    for col in ("service", "url", "pid", "status", "restarts"):
        table.add_column(col)
    for name, p in procs.items():
        table.add_row(name, p.base_url, str(p.pid or "-"), status.get(name, "starting"), str(p.restarts))
    return table


def run_self_check(
    planner_url: str, count: int = 1, deadline_seconds: float = 60, cloud: str | None = None
) -> tuple[bool, str]:
    """Send a probe through Kafka to every domain service and wait for every answer (logged in with the
    clouds.yaml entry ``cloud``, ``--os-cloud`` or ``OS_CLOUD`` when one is given)."""
    from services.cli.plan import credentials, keystone_token

    headers: dict[str, str] = {}
    cloud = cloud or credentials["cloud"] or os.environ.get("OS_CLOUD") or None
    if cloud:
        headers["X-Auth-Token"] = keystone_token(cloud)[0]
    try:
        return _self_check(planner_url, count, deadline_seconds, headers)
    except httpx.HTTPError as e:
        return False, f"planner not reachable at {planner_url} ({e}); start the platform with `dcostack up`"


def _self_check(planner_url: str, count: int, deadline_seconds: float, headers: dict[str, str]) -> tuple[bool, str]:
    started = time.monotonic()
    with httpx.Client(base_url=planner_url, timeout=10, headers=headers) as client:
        r = client.post("/v1/probes", json={"count": count})
        if r.status_code != 202:
            return False, f"planner refused the probe: {r.status_code} {r.text}"
        probe_id = r.json()["probe_id"]
        body = r.json()
        while time.monotonic() - started < deadline_seconds:
            body = client.get(f"/v1/probes/{probe_id}").json()
            if body["complete"]:
                ms = (time.monotonic() - started) * 1000
                return True, f"{len(body['targets'])}/{len(body['targets'])} services answered in {ms:.0f} ms"
            time.sleep(0.1)
    return False, f"no answer from {', '.join(body['missing'])} within {deadline_seconds:.0f}s"


def up(opts: UpOptions) -> int:
    state = opts.state_dir
    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    broker: TansuBroker | None = None
    procs: dict[str, ServiceProcess] = {}

    def _signal(signum: int, _: FrameType | None) -> None:
        raise Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, _signal)
    try:
        # 1. Kafka
        bootstrap = os.environ.get("DCOSTACK_KAFKA_BOOTSTRAP_SERVERS")
        if bootstrap:
            console.print(f"[bold]kafka[/]      configured: {bootstrap}")
        else:
            port = opts.kafka_port
            if port_open("127.0.0.1", port):
                raise SystemExit(
                    f"port {port} is taken: set DCOSTACK_KAFKA_BOOTSTRAP_SERVERS to use that broker, "
                    "or pass --kafka-port to start ours elsewhere"
                )
            broker = TansuBroker(port=port, log_path=logs / "kafka.log").start()
            bootstrap = broker.bootstrap
            console.print(
                f"[bold]kafka[/]      started Tansu on {bootstrap} (memory storage; log {logs / 'kafka.log'})"
            )
        # 2. PostgreSQL
        dsn, origin = resolve_admin_dsn(state)
        if not os.environ.get("DCOSTACK_DATABASE_URL"):
            dsn = asyncio.run(ensure_database(dsn, "dcostack"))
        console.print(f"[bold]postgres[/]   {origin}")
        # 3. The cloud plans act in: DCOSTACK_CLOUD (a clouds.yaml entry), else devcloud when a plan is given
        cloud = os.environ.get("DCOSTACK_CLOUD")
        if cloud:
            console.print(f"[bold]cloud[/]      configured: {cloud} (clouds.yaml)")
        capacity_cloud = os.environ.get("DCOSTACK_CAPACITY_CLOUD")
        identity: dict[str, str] = {}
        if not cloud and opts.plan is not None:
            cloud, auth_url = _devcloud_up()
            # devcloud's admin entry lets previews read Placement (host capacity), which members cannot.
            capacity_cloud = capacity_cloud or f"{cloud}-admin"
            # Keystone identity as in production: the CLI logs in as devcloud's demo user, runs act through
            # trusts to devcloud's `dcostack` service user.
            identity = {
                "DCOSTACK_AUTH_STRATEGY": os.environ.get("DCOSTACK_AUTH_STRATEGY", "keystone"),
                "DCOSTACK_KEYSTONE_URL": os.environ.get("DCOSTACK_KEYSTONE_URL", auth_url),
                "DCOSTACK_SERVICE_CLOUD": os.environ.get("DCOSTACK_SERVICE_CLOUD", f"{cloud}-dcostack"),
            }
        elif not os.environ.get("DCOSTACK_AUTH_STRATEGY") and not os.environ.get("DCOSTACK_KEYSTONE_URL"):
            identity = {"DCOSTACK_AUTH_STRATEGY": "noauth"}
        strategy = identity.get("DCOSTACK_AUTH_STRATEGY") or os.environ.get("DCOSTACK_AUTH_STRATEGY", "keystone")
        if strategy == "noauth":
            console.print(
                "[bold]identity[/]   [yellow]noauth[/]: no access control (set DCOSTACK_KEYSTONE_URL for Keystone)"
            )
        else:
            where = identity.get("DCOSTACK_KEYSTONE_URL") or os.environ.get("DCOSTACK_KEYSTONE_URL")
            console.print(f"[bold]identity[/]   Keystone at {where}")
        login = (os.environ.get("OS_CLOUD") or cloud) if strategy != "noauth" else None
        # 4. Services
        env = {
            "DCOSTACK_DATABASE_URL": dsn,
            "DCOSTACK_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "DCOSTACK_LOG_FORMAT": os.environ.get("DCOSTACK_LOG_FORMAT", "json"),
            **({"DCOSTACK_CLOUD": cloud} if cloud else {}),
            **({"DCOSTACK_CAPACITY_CLOUD": capacity_cloud} if capacity_cloud else {}),
            **identity,
        }
        ports = {name: opts.base_port + i if opts.base_port else DEFAULT_PORTS[name] for i, name in enumerate(SERVICES)}
        # The planner asks the domain services for live cloud state (previews, flavor and image checks).
        domain_urls = {
            f"DCOSTACK_{n.upper()}_URL": f"http://127.0.0.1:{ports[n]}" for n in ("compute", "network", "storage")
        }
        for name, port in ports.items():
            own = {**env, **domain_urls} if name == "planner" else env
            procs[name] = ServiceProcess(name, port, own, logs / f"{name}.log")
            if port_open("127.0.0.1", port):
                raise SystemExit(f"port {port} for {name} is taken; stop what uses it or pass --base-port")
        for p in procs.values():
            p.start()
        status: dict[str, str] = {}
        deadline = time.monotonic() + opts.ready_timeout
        with Live(_status_table(procs, status), console=console, refresh_per_second=4) as live:
            while len([s for s in status.values() if s == "ready"]) < len(procs):
                for name, p in procs.items():
                    if status.get(name) == "ready":
                        continue
                    if not p.running():
                        status[name] = "[red]exited[/]"
                        live.update(_status_table(procs, status))
                        raise SystemExit(f"{name} exited while starting; its log ({p.log_path}) ends:\n{p.tail()}")
                    status[name] = "ready" if p.ready() else "starting"
                live.update(_status_table(procs, status))
                if time.monotonic() > deadline:
                    raise SystemExit(f"services not ready after {opts.ready_timeout:.0f}s; logs in {logs}")
                time.sleep(0.25)
        ok, message = run_self_check(procs["planner"].base_url, opts.probe_count, cloud=login)
        console.print(("[green]self-check passed[/]: " if ok else "[red]self-check failed[/]: ") + message)
        if ok and opts.plan is not None:
            ok = _apply_plan(procs["planner"].base_url, opts.plan, destroy_after=opts.check, cloud=login)
        if opts.check:
            return 0 if ok else 1
        console.print(
            f"planner API: {procs['planner'].base_url}/docs   logs: {logs}   press Ctrl-C to stop",
        )
        with Live(_status_table(procs, status), console=console, refresh_per_second=1) as live:
            backoff = {name: 1.0 for name in procs}
            while True:
                for name, p in procs.items():
                    if not p.running():
                        code = p.proc.returncode if p.proc else "?"
                        status[name] = f"[yellow]restarting (exit {code})[/]"
                        live.update(_status_table(procs, status))
                        time.sleep(backoff[name])
                        backoff[name] = min(backoff[name] * 2, 30)
                        p.restarts += 1
                        p.start()
                    elif status.get(name) != "ready" and p.ready():
                        status[name] = "ready"
                        backoff[name] = 1.0
                live.update(_status_table(procs, status))
                time.sleep(1)
    except (KeyboardInterrupt, Stop):
        console.print("stopping…")
        return 0
    finally:
        # Ctrl-C reaches us twice (directly and forwarded by `uv run`): a second one must not cut the
        # cleanup short and leave services or the broker running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for name, p in procs.items():
            p.stop()
            console.print(f"  stopped {name}")
        if broker is not None:
            broker.stop()
            console.print("  stopped kafka")


def _devcloud_up() -> tuple[str, str]:
    """Bring devcloud up (installing it the first time), printing its progress; the cloud's name and
    Keystone's URL."""
    from devcloud.cloud import Devcloud
    from devcloud.procs import StepFailed
    from devcloud.settings import DevcloudSettings

    started = time.monotonic()

    def report(what: str, message: str) -> None:
        console.print(f"[bold]devcloud[/]   [dim]{time.monotonic() - started:5.1f}s[/] {what}: {message}")

    cloud = Devcloud(DevcloudSettings(), report)
    try:
        result = cloud.up()
    except StepFailed as e:
        raise SystemExit(f"devcloud could not start: {e}") from None
    console.print(f"[bold]devcloud[/]   up in {result.seconds:.0f}s; stop it with `dcostack devcloud down`")
    return cloud.s.cloud_name, cloud.s.auth_url


def _apply_plan(planner_url: str, path: Path, destroy_after: bool, cloud: str | None = None) -> bool:
    """Store the plan (a new version if it exists), apply it with live progress; True if it succeeded.
    With ``destroy_after`` (``up --check``) the plan is destroyed again, so a check leaves nothing behind."""
    import yaml

    from services.cli.plan import Output, Planner, show_preview
    from services.cli.run import render, watch

    document = yaml.safe_load(path.read_text())
    with Planner(planner_url, "default", cloud) as api:
        found = api.call("GET", "/v1/plans", params={"name": document["name"]})["plans"]
        if found:
            plan_id = found[0]["id"]
            api.send("PUT", f"/v1/plans/{plan_id}", path)
        else:
            plan_id = api.send("POST", "/v1/plans", path)["id"]
        # Preview first: what will change, and whether quota, names, subnets and hosts allow it.
        preview = api.call("POST", f"/v1/plans/{plan_id}/preview", json={})
        show_preview(preview)
        if not preview["ok"]:
            console.print("[red]the preview says this apply would fail[/]: change the plan or the cloud as shown above")
            return False
        start = {"action": "apply", "preview_id": preview["preview_id"]}
        run = api.call("POST", f"/v1/plans/{plan_id}/runs", json=start)
        console.print(f"applying plan {document['name']!r} ({len(run['steps'])} steps), run {run['id']}")
        run = watch(api, run["id"], Output.table)
        console.print(render(run))
        applied = run["state"] == "succeeded"
        if not destroy_after:
            if applied:
                console.print(
                    f"[green]plan {document['name']!r} applied[/]; remove it with "
                    f"`dcostack plan destroy {document['name']}`"
                )
            return bool(applied)
        run = api.call("POST", f"/v1/plans/{plan_id}/runs", json={"action": "destroy"})
        console.print(f"destroying plan {document['name']!r} ({len(run['steps'])} steps), run {run['id']}")
        run = watch(api, run["id"], Output.table)
        console.print(render(run))
        return bool(applied and run["state"] == "succeeded")


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "dcostack"
