"""``up``, ``down``, ``status`` and ``env`` of the dev cloud."""

from __future__ import annotations

import getpass
import grp
import hashlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml

from devcloud import procs
from devcloud.conf import HEAT_DOMAIN, HEAT_DOMAIN_ADMIN, SERVICE_USERS, Layout
from devcloud.procs import ProcSpec, StepFailed
from devcloud.settings import DevcloudSettings, Port
from devcloud.venv import ensure_venv, is_ready, requirements_digest, venv_path

Report = Callable[[str, str], None]  # (what, message)

DATABASES = ("keystone", "placement", "glance", "nova_api", "nova_cell0", "nova_cell1", "neutron", "cinder", "octavia")
OPTIONAL_DATABASES = ("heat",)  # created only when the service is enabled; dropped by ``down --wipe`` always

FLAVORS = (  # name, vcpus, ram MB, disk GB
    ("m1.tiny", 1, 512, 1),
    ("m1.small", 1, 2048, 20),
    ("m1.medium", 2, 4096, 40),
    ("m1.large", 4, 8192, 80),
)
IMAGE_NAME = "devcloud-tiny"
# DCOSTACK's own service user: only the ``service`` role on the service project, so it reaches a user's
# project solely through the Keystone trust each run delegates to it (as Heat's trustee does).
DCOSTACK_USER = "dcostack"
PUBLIC_NETWORK = "public"
PUBLIC_CIDR = "172.24.4.0/24"
DEMO_QUOTAS = {
    # RAM above one fake host's 800,000 MB, so a too-large flavor meets "No valid host", not the quota.
    "compute": {"instances": 200, "cores": 1000, "ram": 4 * 1024 * 1024, "key_pairs": 100, "server_groups": 50},
    "network": {"networks": 50, "subnets": 100, "routers": 20, "ports": 1000, "floating_ips": 50,
                "security_groups": 100, "security_group_rules": 1000},
    "volume": {"volumes": 100, "gigabytes": 2000, "snapshots": 50},
}  # fmt: skip


@dataclass
class ProcStatus:
    name: str
    group: str
    pid: int | None
    healthy: bool | None  # None: no health endpoint (an RPC worker), judged by being alive
    detail: str = ""


@dataclass
class UpResult:
    seconds: float
    started: list[str] = field(default_factory=list)
    already_running: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


class Devcloud:
    def __init__(self, settings: DevcloudSettings, report: Report | None = None) -> None:
        self.s = settings
        self.report: Report = report or (lambda what, message: None)

    # ------------------------------------------------------------------ helpers
    @contextmanager
    def _step(self, what: str, timings: dict[str, float]) -> Iterator[None]:
        started = time.monotonic()
        self.report(what, "…")
        yield
        timings[what] = time.monotonic() - started
        self.report(what, f"done in {timings[what]:.1f}s")

    def _settings_digest(self) -> str:
        secrets = repr(self.clouds()) + self.s.service_password.get_secret_value()
        return hashlib.sha256(self.s.model_dump_json().encode() + secrets.encode()).hexdigest()[:12]

    def _marker(self, name: str) -> Path:
        return self.s.home / "state" / f"{name}.done"

    def _once(self, name: str, action: Callable[[], None]) -> None:
        """Run ``action`` unless it already succeeded for this state directory."""
        marker = self._marker(name)
        if marker.exists():
            return
        action()
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))

    def _run(self, layout: Layout, argv: list[str], what: str, log: str, env: dict[str, str] | None = None) -> None:
        procs.run_once(argv, env or {}, self.s.logs / f"{log}.log", what)

    # ------------------------------------------------------------ prerequisites
    def check_prerequisites(self) -> None:
        db = urlsplit(self.s.database_url)
        mq = urlsplit(self.s.transport_url)
        needs = [
            ("MariaDB/MySQL", db.hostname or "127.0.0.1", db.port or 3306, "DCOSTACK_DEVCLOUD_DATABASE_URL",
             ["start-stop-daemon", "--start", "--oknodo", "--background", "--exec", "/usr/sbin/mariadbd"],
             "/usr/sbin/mariadbd", "apt-get install mariadb-server"),
            ("RabbitMQ", mq.hostname or "127.0.0.1", mq.port or 5672, "DCOSTACK_DEVCLOUD_TRANSPORT_URL",
             ["rabbitmq-server", "-detached"], "/usr/sbin/rabbitmq-server", "apt-get install rabbitmq-server"),
        ]  # fmt: skip
        for name, host, port, variable, start_cmd, binary, install in needs:
            if _reachable(host, port):
                continue
            local = host in ("127.0.0.1", "localhost")
            if local and Path(binary).exists():
                self.report(name, f"not answering on {host}:{port}; starting it")
                if name.startswith("MariaDB"):
                    Path("/run/mysqld").mkdir(exist_ok=True)
                    shutil.chown("/run/mysqld", "mysql", "mysql") if _user_exists("mysql") else None
                subprocess.run(start_cmd, capture_output=True, check=False)
                if _wait_reachable(host, port, 60):
                    continue
            raise StepFailed(
                f"{name} is not reachable on {host}:{port}. "
                + (f"Install it ({install}) and start it, " if not Path(binary).exists() else "Start it, ")
                + f"or point {variable} at a running one."
            )

    # ---------------------------------------------------------------------- up
    def up(self) -> UpResult:
        started_at = time.monotonic()
        result = UpResult(seconds=0.0)
        t = result.timings
        with self._step("prerequisites", t):
            self.check_prerequisites()
        if not is_ready(self.s):
            self.report("install", "installing OpenStack into its own virtualenv (first time only, ~1 min)")
        with self._step("install", t):
            venv = ensure_venv(self.s)
        layout = Layout(self.s, venv)
        with self._step("configure", t):
            for path in (self.s.etc, self.s.logs, self.s.run, self.s.data):
                path.mkdir(parents=True, exist_ok=True)
            specs = layout.all()
            self._create_databases(venv)
        by_name = {spec.name: spec for spec in specs}
        keystone = [spec for spec in specs if spec.group == "keystone"]
        with self._step("keystone", t):
            self._keystone_setup(layout)
            self._start(keystone, result)
            self._wait_healthy(keystone)
        with self._step("catalog", t):
            admin = self.admin_connection()
            # Users, roles, services and endpoints: again only when a setting they depend on changed.
            self._once(f"catalog-{self._settings_digest()}", lambda: self._catalog(admin))
            # A new token: the first one was issued before the services above were in the catalog.
            admin = self.admin_connection()
        with self._step("databases", t):
            self._sync_databases(layout)
        rest = [spec for spec in specs if spec.group != "keystone"]
        with self._step("services", t):
            self._start(rest, result)
            self._wait_healthy(rest)
        with self._step("compute hosts", t):
            nova_conf = str(self.s.etc / "nova/nova.conf")
            discover = [layout.bin("nova-manage"), "--config-file", nova_conf, "cell_v2", "discover_hosts"]
            self._run(layout, discover, "nova-manage cell_v2 discover_hosts", "nova-manage")
            self._wait_agents(admin, by_name)
        with self._step("resources", t):
            self._resources(admin)
            self.write_clouds_yaml()
        result.seconds = time.monotonic() - started_at
        return result

    def _start(self, specs: list[ProcSpec], result: UpResult) -> None:
        for spec in specs:
            if procs.read_pid(self.s.run, spec.name) is not None:
                result.already_running.append(spec.name)
                continue
            procs.start(spec, self.s.run, self.s.logs)
            result.started.append(spec.name)
            self.report(spec.group, f"started {spec.name}")

    def _wait_healthy(self, specs: list[ProcSpec]) -> None:
        deadline = time.monotonic() + self.s.start_timeout
        pending = {spec.name: spec for spec in specs if spec.health_url}
        with httpx.Client(timeout=5.0) as client:
            while True:
                for spec in specs:
                    if procs.exited_early(self.s.run, spec.name):
                        raise StepFailed(f"{spec.name} exited at start; see {self.s.logs / spec.name}.log:\n"
                                         + _tail(self.s.logs / f"{spec.name}.log"))  # fmt: skip
                for name, spec in list(pending.items()):
                    try:
                        if client.get(spec.health_url or "").status_code < 500:
                            del pending[name]
                            self.report(spec.group, f"{name} answers on {spec.health_url}")
                    except httpx.TransportError:
                        pass
                if not pending:
                    return
                if time.monotonic() > deadline:
                    names = ", ".join(sorted(pending))
                    raise StepFailed(f"{names} not answering after {self.s.start_timeout:.0f}s; logs in {self.s.logs}")
                time.sleep(0.5)

    # ---------------------------------------------------------------- keystone
    def _create_databases(self, venv: Path) -> None:
        wanted = (*DATABASES, *(["heat"] if self.s.heat else []))
        self._each_database(venv, "CREATE DATABASE IF NOT EXISTS `{}` CHARACTER SET utf8mb4", "creating", wanted)

    def _drop_databases(self, venv: Path) -> None:
        self._each_database(venv, "DROP DATABASE IF EXISTS `{}`", "dropping", (*DATABASES, *OPTIONAL_DATABASES))

    def _each_database(self, venv: Path, statement: str, verb: str, which: tuple[str, ...]) -> None:
        """Run ``statement`` for each of ``which`` databases, with PyMySQL from the OpenStack virtualenv."""
        db = urlsplit(self.s.database_url)
        names = [f"{self.s.database_prefix}{name}" for name in which]
        script = (
            "import sys, pymysql\n"
            "host, port, user, password, statement, *names = sys.argv[1:]\n"
            "c = pymysql.connect(host=host, port=int(port), user=user, password=password or '')\n"
            "cur = c.cursor()\n"
            "for n in names: cur.execute(statement.format(n))\n"
        )
        argv = [str(venv / "bin/python"), "-c", script, db.hostname or "127.0.0.1", str(db.port or 3306),
                db.username or "root", db.password or "", statement, *names]  # fmt: skip
        procs.run_once(argv, {}, self.s.logs / "databases.log", f"{verb} the databases")

    def _keystone_setup(self, layout: Layout) -> None:
        conf = str(self.s.etc / "keystone/keystone.conf")
        manage = [layout.bin("keystone-manage"), "--config-file", conf]
        user, group = getpass.getuser(), grp.getgrgid(os.getgid()).gr_name
        url = self.s.url(Port.KEYSTONE)

        def setup() -> None:
            self._run(layout, [*manage, "db_sync"], "keystone-manage db_sync", "keystone-manage")
            for what in ("fernet_setup", "credential_setup"):
                self._run(layout, [*manage, what, "--keystone-user", user, "--keystone-group", group],
                          f"keystone-manage {what}", "keystone-manage")  # fmt: skip
            self._run(layout, [*manage, "bootstrap", "--bootstrap-password", self.s.admin_password.get_secret_value(),
                               "--bootstrap-admin-url", url, "--bootstrap-internal-url", url,
                               "--bootstrap-public-url", url, "--bootstrap-region-id", "RegionOne"],
                      "keystone-manage bootstrap", "keystone-manage")  # fmt: skip

        self._once(f"keystone-{requirements_digest(self.s)}", setup)

    def admin_connection(self) -> Any:
        import openstack

        return openstack.connect(
            auth_url=self.s.auth_url,
            username="admin",
            password=self.s.admin_password.get_secret_value(),
            project_name="admin",
            user_domain_name="Default",
            project_domain_name="Default",
            region_name="RegionOne",
            load_yaml_config=False,
            load_envvars=False,
        )

    def _catalog(self, conn: Any) -> None:
        ident = conn.identity
        service_project = _find_or(ident.find_project("service", domain_id="default"),
                                   lambda: ident.create_project(name="service", domain_id="default"))  # fmt: skip
        demo_project = _find_or(ident.find_project("demo", domain_id="default"),
                                lambda: ident.create_project(name="demo", domain_id="default"))  # fmt: skip
        roles = {}
        for role in ("admin", "member", "reader", "service", "manager", "load-balancer_member",
                     "load-balancer_admin", "load-balancer_observer"):  # fmt: skip
            roles[role] = ident.find_role(role) or ident.create_role(name=role)
        for name in (*SERVICE_USERS, *(["heat"] if self.s.heat else [])):
            user = self._user(conn, name, self.s.service_password.get_secret_value(), service_project.id)
            for role in ("service", "admin"):
                ident.assign_project_role_to_user(service_project, user, roles[role])
        if self.s.heat:
            self._heat_domain(conn, roles["admin"])
        dcostack = self._user(conn, DCOSTACK_USER, self.s.service_password.get_secret_value(), service_project.id)
        ident.assign_project_role_to_user(service_project, dcostack, roles["service"])
        demo = self._user(conn, "demo", self.s.demo_password.get_secret_value(), demo_project.id)
        for role in ("member", "reader", "load-balancer_member"):
            ident.assign_project_role_to_user(demo_project, demo, roles[role])
        admin = ident.find_user("admin", domain_id="default")
        ident.assign_project_role_to_user(demo_project, admin, roles["admin"])
        endpoints = [
            ("placement", "placement", self.s.url(Port.PLACEMENT)),
            ("glance", "image", self.s.url(Port.GLANCE)),
            ("nova", "compute", f"{self.s.url(Port.NOVA)}/v2.1"),
            ("neutron", "network", self.s.url(Port.NEUTRON)),
            ("cinderv3", "volumev3", f"{self.s.url(Port.CINDER)}/v3/%(project_id)s"),
            ("cinder", "block-storage", f"{self.s.url(Port.CINDER)}/v3/%(project_id)s"),
            ("octavia", "load-balancer", self.s.url(Port.OCTAVIA)),
            ("swift", "object-store", f"{self.s.url(Port.SWIFT)}/v1/AUTH_%(project_id)s"),
        ]
        if self.s.heat:
            endpoints.append(("heat", "orchestration", f"{self.s.url(Port.HEAT)}/v1/%(project_id)s"))
        for name, kind, url in endpoints:
            service = next(iter(ident.services(type=kind)), None) or ident.create_service(name=name, type=kind)
            existing = {ep.interface: ep for ep in ident.endpoints(service_id=service.id)}
            for interface in ("public", "internal", "admin"):
                ep = existing.get(interface)
                if ep is None:
                    ident.create_endpoint(service_id=service.id, interface=interface, url=url, region_id="RegionOne")
                elif ep.url != url:
                    ident.update_endpoint(ep, url=url)

    def _heat_domain(self, conn: Any, admin_role: Any) -> None:
        """The domain Heat creates its in-instance users in, and the user that administers it."""
        ident = conn.identity
        domain = ident.find_domain(HEAT_DOMAIN) or ident.create_domain(
            name=HEAT_DOMAIN, description="Users created by Heat stacks"
        )
        for role in ("heat_stack_owner", "heat_stack_user"):
            ident.find_role(role) or ident.create_role(name=role)
        password = self.s.service_password.get_secret_value()
        user = ident.find_user(HEAT_DOMAIN_ADMIN, domain_id=domain.id)
        if user is None:
            user = ident.create_user(name=HEAT_DOMAIN_ADMIN, password=password, domain_id=domain.id)
        else:
            ident.update_user(user, password=password)
        ident.assign_domain_role_to_user(domain, user, admin_role)

    def _user(self, conn: Any, name: str, password: str, project_id: str) -> Any:
        user = conn.identity.find_user(name, domain_id="default")
        if user is None:
            return conn.identity.create_user(
                name=name, password=password, domain_id="default", default_project_id=project_id
            )
        conn.identity.update_user(user, password=password)
        return user

    # --------------------------------------------------------------- databases
    def _sync_databases(self, layout: Layout) -> None:
        etc = self.s.etc
        digest = requirements_digest(self.s)
        nova_conf = ["--config-file", str(etc / "nova/nova.conf")]
        nova_manage = [layout.bin("nova-manage"), *nova_conf]

        def nova() -> None:
            self._run(layout, [*nova_manage, "api_db", "sync"], "nova-manage api_db sync", "nova-manage")
            self._run(layout, [*nova_manage, "cell_v2", "map_cell0", "--database_connection",
                               self.s.db("nova_cell0")], "nova-manage cell_v2 map_cell0", "nova-manage")  # fmt: skip
            listed = subprocess.run(
                [*nova_manage, "cell_v2", "list_cells"], capture_output=True, text=True, check=False
            )
            if " cell1 " not in listed.stdout:
                self._run(layout, [*nova_manage, "cell_v2", "create_cell", "--name", "cell1"],
                          "nova-manage cell_v2 create_cell", "nova-manage")  # fmt: skip
            self._run(layout, [*nova_manage, "db", "sync"], "nova-manage db sync", "nova-manage")

        def swift() -> None:
            for argv in layout.swift_rings():
                if argv[-1] == "rebalance" or not Path(argv[1]).exists() or argv[2] != "create":
                    if argv[2] == "add" and Path(argv[1].replace(".builder", ".ring.gz")).exists():
                        continue
                    result = subprocess.run(argv, capture_output=True, text=True, check=False)
                    # rebalance answers 1 with a warning when nothing moved
                    if result.returncode not in (0, 1):
                        raise StepFailed(f"{' '.join(argv)} failed: {result.stdout}{result.stderr}")

        placement_env = {"OS_PLACEMENT_CONFIG_DIR": str(etc / "placement")}
        jobs: dict[str, Callable[[], None]] = {
            "placement": lambda: self._run(layout, [layout.bin("placement-manage"), "--config-file",
                                                    str(etc / "placement/placement.conf"), "db", "sync"],
                                           "placement-manage db sync", "placement-manage", placement_env),
            "glance": lambda: self._run(layout, [layout.bin("glance-manage"), "--config-file",
                                                 str(etc / "glance/glance-api.conf"), "db_sync"],
                                        "glance-manage db_sync", "glance-manage"),
            "nova": nova,
            "neutron": lambda: self._run(layout, [layout.bin("neutron-db-manage"), *layout.neutron_files(),
                                                  "upgrade", "heads"], "neutron-db-manage upgrade", "neutron-manage"),
            "cinder": lambda: self._run(layout, [layout.bin("cinder-manage"), "--config-file",
                                                 str(etc / "cinder/cinder.conf"), "db", "sync"],
                                        "cinder-manage db sync", "cinder-manage"),
            "octavia": lambda: self._octavia_setup(layout),
            "swift": swift,
        }  # fmt: skip
        if self.s.heat:
            jobs["heat"] = lambda: self._run(layout, [layout.bin("heat-manage"), "--config-file",
                                                      str(etc / "heat/heat.conf"), "db_sync"],
                                             "heat-manage db_sync", "heat-manage")  # fmt: skip
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = {name: pool.submit(self._once, f"{name}-{digest}", job) for name, job in jobs.items()}
            for name, future in futures.items():
                future.result()
                self.report(name, "database ready")

    def _octavia_setup(self, layout: Layout) -> None:
        certs = self.s.etc / "octavia/certs"
        certs.mkdir(parents=True, exist_ok=True)
        if not (certs / "ca.pem").exists():
            self._run(layout, ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
                               "-subj", "/CN=devcloud-octavia-ca", "-keyout", str(certs / "ca.key"),
                               "-out", str(certs / "ca.pem")], "creating Octavia's CA", "octavia-manage")  # fmt: skip
            (certs / "client.pem").write_bytes((certs / "ca.pem").read_bytes() + (certs / "ca.key").read_bytes())
        self._run(layout, [layout.bin("octavia-db-manage"), "--config-file", str(self.s.etc / "octavia/octavia.conf"),
                           "upgrade", "head"], "octavia-db-manage upgrade", "octavia-manage")  # fmt: skip

    # ------------------------------------------------------------ compute/agents
    def _wait_agents(self, conn: Any, by_name: dict[str, ProcSpec]) -> None:
        hosts = {self.s.compute_host(i) for i in range(self.s.compute_hosts)}
        deadline = time.monotonic() + self.s.start_timeout
        while True:
            for name in by_name:
                if procs.exited_early(self.s.run, name):
                    raise StepFailed(
                        f"{name} exited; see {self.s.logs / name}.log:\n" + _tail(self.s.logs / f"{name}.log")
                    )
            computes = {s.host for s in conn.compute.services(binary="nova-compute") if s.state == "up"}
            hypervisors = {h.name for h in conn.compute.hypervisors()}
            agents = {a.host for a in conn.network.agents() if a.is_alive}
            volumes = [s for s in conn.block_storage.services(binary="cinder-volume") if s.state == "up"]
            missing = []
            if hosts - computes:
                missing.append(f"nova-compute on {', '.join(sorted(hosts - computes))}")
            if hosts - hypervisors:
                missing.append(f"hypervisors {', '.join(sorted(hosts - hypervisors))}")
            if hosts - agents:
                missing.append(f"network agents on {', '.join(sorted(hosts - agents))}")
            if not volumes:
                missing.append("cinder-volume")
            if not missing:
                self.report("nova", f"{len(hosts)} compute hosts up, agents alive, cinder-volume up")
                return
            if time.monotonic() > deadline:
                raise StepFailed(f"still waiting for {'; '.join(missing)}; logs in {self.s.logs}")
            time.sleep(1.0)

    # --------------------------------------------------------------- resources
    def _resources(self, conn: Any) -> None:
        for index, (name, vcpus, ram, disk) in enumerate(FLAVORS, start=1):
            if conn.compute.find_flavor(name) is None:
                conn.compute.create_flavor(name=name, vcpus=vcpus, ram=ram, disk=disk, id=str(index), is_public=True)
        image = conn.image.find_image(IMAGE_NAME)
        if image is not None and image.status != "active":  # an earlier upload was interrupted
            conn.image.delete_image(image)
            image = None
        if image is None:
            image = conn.image.create_image(
                name=IMAGE_NAME,
                data=_tiny_image(),
                disk_format="raw",
                container_format="bare",
                visibility="public",
            )
            conn.image.wait_for_status(image, status="active", wait=60)
        public = conn.network.find_network(PUBLIC_NETWORK)
        if public is None:
            public = conn.network.create_network(
                name=PUBLIC_NETWORK,
                is_router_external=True,
                is_default=True,
                provider_network_type="flat",
                provider_physical_network="public",
            )
        if not list(conn.network.subnets(network_id=public.id)):
            conn.network.create_subnet(
                name="public-subnet",
                network_id=public.id,
                ip_version=4,
                cidr=PUBLIC_CIDR,
                gateway_ip="172.24.4.1",
                allocation_pools=[{"start": "172.24.4.10", "end": "172.24.4.250"}],
                is_dhcp_enabled=False,
            )
        demo = conn.identity.find_project("demo", domain_id="default")
        conn.set_compute_quotas(demo.id, **DEMO_QUOTAS["compute"])
        conn.set_network_quotas(demo.id, **DEMO_QUOTAS["network"])
        conn.set_volume_quotas(demo.id, **DEMO_QUOTAS["volume"])

    # ------------------------------------------------------------- clouds.yaml
    def clouds(self) -> dict[str, dict[str, Any]]:
        """The clouds.yaml entries ``up`` writes: the demo user, admin, and DCOSTACK's trustee user."""

        def entry(user: str, password: str, project: str) -> dict[str, Any]:
            return {
                "auth": {
                    "auth_url": self.s.auth_url,
                    "username": user,
                    "password": password,
                    "project_name": project,
                    "user_domain_name": "Default",
                    "project_domain_name": "Default",
                },
                "region_name": "RegionOne",
                "interface": "public",
                "identity_api_version": 3,
            }

        return {
            self.s.cloud_name: entry("demo", self.s.demo_password.get_secret_value(), "demo"),
            f"{self.s.cloud_name}-admin": entry("admin", self.s.admin_password.get_secret_value(), "admin"),
            f"{self.s.cloud_name}-dcostack": entry(
                DCOSTACK_USER, self.s.service_password.get_secret_value(), "service"
            ),
        }

    def write_clouds_yaml(self) -> None:
        path = self.s.clouds_yaml
        current: dict[str, Any] = {}
        if path.exists():
            current = yaml.safe_load(path.read_text()) or {}
        clouds = current.setdefault("clouds", {})
        clouds.update(self.clouds())
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".yaml.tmp")
        tmp.write_text(yaml.safe_dump(current, sort_keys=False))
        tmp.chmod(0o600)
        tmp.replace(path)

    # -------------------------------------------------------------------- down
    def down(self, wipe: bool = False) -> list[str]:
        """Stop every process ``up`` started (by PID file), in reverse start order; ``wipe`` drops all state."""
        stopped = []
        names = sorted(p.stem for p in self.s.run.glob("*.pid")) if self.s.run.exists() else []

        def stop(name: str) -> None:
            if procs.stop(self.s.run, name):
                stopped.append(name)
                self.report("down", f"stopped {name}")

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(stop, names))
        if wipe:
            venv = venv_path(self.s)
            if is_ready(self.s) and _reachable(urlsplit(self.s.database_url).hostname or "127.0.0.1",
                                               urlsplit(self.s.database_url).port or 3306):  # fmt: skip
                self._drop_databases(venv)
            shutil.rmtree(self.s.home, ignore_errors=True)
            self._remove_clouds_yaml_entries()
            self.report("down", f"wiped {self.s.home} and the {self.s.database_prefix}* databases")
        return stopped

    def _remove_clouds_yaml_entries(self) -> None:
        path = self.s.clouds_yaml
        if not path.exists():
            return
        current = yaml.safe_load(path.read_text()) or {}
        for name in self.clouds():
            current.get("clouds", {}).pop(name, None)
        path.write_text(yaml.safe_dump(current, sort_keys=False))

    # ------------------------------------------------------------------ status
    def status(self) -> list[ProcStatus]:
        if not is_ready(self.s) or not self.s.etc.exists():
            return []
        settings = self.s
        if not settings.heat and procs.read_pid(self.s.run, "heat-engine"):  # started by ``up --heat``
            settings = settings.model_copy(update={"heat": True})
        layout = Layout(settings, venv_path(self.s))
        out = []
        with httpx.Client(timeout=3.0) as client:
            for spec in layout.all():
                pid = procs.read_pid(self.s.run, spec.name)
                healthy: bool | None = None
                detail = "running" if pid else "stopped"
                if pid and spec.health_url:
                    try:
                        code = client.get(spec.health_url).status_code
                        healthy, detail = code < 500, f"HTTP {code} on {spec.health_url}"
                    except httpx.TransportError as exc:
                        healthy, detail = False, f"no answer on {spec.health_url} ({type(exc).__name__})"
                elif pid is None:
                    healthy = False
                out.append(ProcStatus(spec.name, spec.group, pid, healthy, detail))
        return out

    def env(self) -> dict[str, str]:
        env = {"OS_CLOUD": self.s.cloud_name}
        default = Path.home() / ".config/openstack/clouds.yaml"
        if self.s.clouds_yaml != default:
            env["OS_CLIENT_CONFIG_FILE"] = str(self.s.clouds_yaml)
        return env

    def rss_bytes(self) -> int:
        total = 0
        for pid_file in self.s.run.glob("*.pid"):
            pid = procs.read_pid(self.s.run, pid_file.stem)
            if pid:
                total += procs.group_rss_bytes(pid)
        return total


def _find_or(found: Any, create: Callable[[], Any]) -> Any:
    return found if found is not None else create()


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _wait_reachable(host: str, port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _reachable(host, port):
            return True
        time.sleep(0.5)
    return False


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _tiny_image() -> bytes:
    """A 1 MiB raw disk: nothing boots it (the hypervisor is fake), Glance stores and inspects it as raw."""
    return b"devcloud tiny image, built locally\n".ljust(1024 * 1024, b"\0")
