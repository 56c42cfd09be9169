"""``dcostack up``: broker and PostgreSQL if none is configured, then every service under one
supervisor that restarts crashed services, shows their status, and stops everything on Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType

import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table

from services.cli.infra import (
    MEMORY_STORAGE,
    TansuBroker,
    describe_exit,
    ensure_database,
    port_open,
    resolve_admin_dsn,
)
from services.cli.processes import DEFAULT_PORTS, SERVICES, ServiceProcess

console = Console(stderr=True)


@dataclass
class UpOptions:
    state_dir: Path
    kafka_port: int = 9092
    kafka_storage: str = MEMORY_STORAGE
    base_port: int = 8081
    check: bool = False
    probe_count: int = 1
    ready_timeout: float = 90.0
    plan: Path | None = None  # applied after the self-check, in devcloud unless DCOSTACK_CLOUD names a cloud


class Stop(Exception):
    pass


BROKER = "kafka"
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
# A child that stayed up this long is healthy again: its next crash is restarted after BACKOFF_FIRST.
STABLE_SECONDS = 30.0


@dataclass
class Supervisor:
    """Keeps the embedded broker and the services running: whatever dies is started again on the same
    port after a capped, doubling backoff, and ``say`` gets one line saying what died, how and when it
    comes back. It runs in a thread, so it also heals while ``up`` self-checks or applies a plan.

    Services are watched only after ``watch_services()``: while they start, ``up`` reports a crash as
    a startup failure instead. A broker restarted with memory storage comes back empty; services
    recreate their topics and consumers read them from the beginning, and a step whose progress the old
    broker lost is asked again by the planner."""

    broker: TansuBroker | None
    procs: dict[str, ServiceProcess]
    say: Callable[[str], None]
    interval: float = 1.0
    status: dict[str, str] = field(default_factory=dict)
    _watch_services: bool = field(default=False, init=False)
    _due: dict[str, float] = field(default_factory=dict, init=False)
    _backoff: dict[str, float] = field(default_factory=dict, init=False)
    _since: dict[str, float] = field(default_factory=dict, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    def start(self) -> Supervisor:
        now = time.monotonic()
        if self.broker is not None:
            self.status[BROKER] = "ready"
            self._since[BROKER] = now
        self._thread = threading.Thread(target=self._loop, name="dcostack-supervisor", daemon=True)
        self._thread.start()
        return self

    def watch_services(self) -> None:
        now = time.monotonic()
        for name in self.procs:
            self._since.setdefault(name, now)
        self._watch_services = True

    def stop(self) -> None:
        """Stop supervising (before stopping the children, so none is restarted on the way out)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        """One round: schedule or perform the restart of what died, and refresh service readiness."""
        if self.broker is not None:
            self._heal(BROKER, self.broker, self._restart_broker)
        if not self._watch_services:
            return
        for name, p in self.procs.items():
            if self._stop.is_set():
                return
            self._heal(name, p, partial(self._restart_service, p))
            if p.running() and name not in self._due:
                # Refreshed every round: a service whose broker died shows "not ready" until it reconnects.
                was = self.status.get(name)
                if p.ready():
                    self.status[name] = "ready"
                elif was in ("ready", "[yellow]not ready[/]"):
                    self.status[name] = "[yellow]not ready[/]"
                else:
                    self.status[name] = "starting"

    def _heal(self, name: str, child: TansuBroker | ServiceProcess, restart: Callable[[], None]) -> None:
        now = time.monotonic()
        if child.running():
            if now - self._since.get(name, now) >= STABLE_SECONDS:
                self._backoff[name] = BACKOFF_FIRST
            return
        if name not in self._due:
            delay = self._backoff.get(name, BACKOFF_FIRST)
            self._backoff[name] = min(delay * 2, BACKOFF_MAX)
            self._due[name] = now + delay
            how = describe_exit(child.proc.returncode if child.proc else None)
            self.status[name] = f"[yellow]restarting ({how})[/]"
            self.say(f"[yellow]{name} died[/] ({how}); restarting it in {delay:.0f}s")
            return
        if now < self._due[name] or self._stop.is_set():
            return
        del self._due[name]
        try:
            restart()
        except (OSError, RuntimeError, TimeoutError) as e:
            self.status[name] = f"[red]restart failed[/]: {e}"
            self.say(f"[red]{name} could not be restarted[/]: {e}")
            return
        self._since[name] = time.monotonic()

    def _restart_broker(self) -> None:
        broker = self.broker
        assert broker is not None
        broker.stop()  # reaps the dead process
        broker.start()
        broker.restarts += 1
        self.status[BROKER] = "ready"
        lost = (
            "memory storage: it came back empty; services recreate their topics and steps whose events "
            "were lost are asked again"
            if broker.storage == MEMORY_STORAGE
            else f"storage {broker.storage}"
        )
        self.say(
            f"[bold]kafka[/]      restarted on {broker.bootstrap} (restart {broker.restarts}, pid {broker.pid}; {lost})"
        )

    def _restart_service(self, p: ServiceProcess) -> None:
        p.restarts += 1
        p.start()
        self.status[p.name] = "starting"
        self.say(f"[bold]{p.name}[/] restarted (restart {p.restarts}, pid {p.pid})")


def _status_table(broker: TansuBroker | None, procs: dict[str, ServiceProcess], status: dict[str, str]) -> Table:
    table = Table(title="DCOSTACK services", expand=False)
    for col in ("service", "url", "pid", "status", "restarts"):
        table.add_column(col)
    if broker is not None:
        table.add_row(BROKER, broker.bootstrap, str(broker.pid or "-"), status.get(BROKER, "-"), str(broker.restarts))
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
    supervisor: Supervisor | None = None

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
            broker = TansuBroker(port=port, log_path=logs / "kafka.log", storage=opts.kafka_storage).start()
            bootstrap = broker.bootstrap
            console.print(
                f"[bold]kafka[/]      started Tansu on {bootstrap} (pid {broker.pid}, storage {broker.storage}; "
                f"log {logs / 'kafka.log'}); restarted if it dies"
            )
        supervisor = Supervisor(broker, procs, say=console.print).start()
        status = supervisor.status
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
        deadline = time.monotonic() + opts.ready_timeout
        with Live(_status_table(broker, procs, status), console=console, refresh_per_second=4) as live:
            while len([s for s in status.values() if s == "ready"]) < len(procs):
                for name, p in procs.items():
                    if status.get(name) == "ready":
                        continue
                    if not p.running():
                        status[name] = "[red]exited[/]"
                        live.update(_status_table(broker, procs, status))
                        raise SystemExit(f"{name} exited while starting; its log ({p.log_path}) ends:\n{p.tail()}")
                    status[name] = "ready" if p.ready() else "starting"
                live.update(_status_table(broker, procs, status))
                if time.monotonic() > deadline:
                    raise SystemExit(f"services not ready after {opts.ready_timeout:.0f}s; logs in {logs}")
                time.sleep(0.25)
        supervisor.watch_services()
        ok, message = run_self_check(procs["planner"].base_url, opts.probe_count, cloud=login)
        console.print(("[green]self-check passed[/]: " if ok else "[red]self-check failed[/]: ") + message)
        if ok and opts.plan is not None:
            ok = _apply_plan(procs["planner"].base_url, opts.plan, destroy_after=opts.check, cloud=login)
        if opts.check:
            return 0 if ok else 1
        console.print(
            f"planner API: {procs['planner'].base_url}/docs   logs: {logs}   press Ctrl-C to stop",
        )
        with Live(_status_table(broker, procs, status), console=console, refresh_per_second=1) as live:
            while True:
                live.update(_status_table(broker, procs, status))
                time.sleep(1)
    except (KeyboardInterrupt, Stop):
        console.print("stopping…")
        return 0
    finally:
        # Ctrl-C reaches us twice (directly and forwarded by `uv run`): a second one must not cut the
        # cleanup short and leave services or the broker running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if supervisor is not None:
            supervisor.stop()
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
