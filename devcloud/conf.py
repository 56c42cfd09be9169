"""Configuration files and process lists of every OpenStack service devcloud runs.

Written on every ``up`` from the settings (so a changed port or password takes effect), into
``<home>/etc/<service>/``. The choices that make the services run without a hypervisor or dataplane
are explained where they are made; ../shared/notes/devcloud.md has the measurements behind them.
"""

from __future__ import annotations

import configparser
import shutil
import signal
import uuid
from collections.abc import Mapping
from pathlib import Path

from devcloud.procs import ProcSpec
from devcloud.settings import DevcloudSettings, Port

# Modules that run inside the OpenStack virtualenv (the fake agent, the stable fake virt driver).
INSIDE = Path(__file__).with_name("inside")
# Must equal devcloud_virt.NAMESPACE: node uuid = uuid5(namespace, host).
VIRT_NAMESPACE = uuid.UUID("5b0f4cf4-3a8c-4f0e-9d55-6a1d2f1c0d11")

Ini = Mapping[str, Mapping[str, object]]

# Keystone users, one per service, in the ``service`` project with the ``service`` and ``admin`` roles,
# as DevStack sets them up (Nova's service token must carry ``service`` or Neutron and Cinder answer 401/409).
SERVICE_USERS = ("placement", "glance", "nova", "neutron", "cinder", "octavia", "swift")
HEAT_DOMAIN, HEAT_DOMAIN_ADMIN = "heat", "heat_domain_admin"


def write_ini(path: Path, sections: Ini) -> None:
    parser = configparser.RawConfigParser()
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep option case (paste, swift)
    for section, options in sections.items():
        if section != "DEFAULT":
            parser.add_section(section)
        for key, value in options.items():
            if isinstance(value, bool):
                value = str(value).lower()
            parser.set(section, key, str(value))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        parser.write(out)


class Layout:
    """Paths and common sections for one devcloud, derived from its settings and virtualenv."""

    def __init__(self, settings: DevcloudSettings, venv: Path) -> None:
        self.s = settings
        self.venv = venv

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def etc(self, service: str) -> Path:
        return self.s.etc / service

    def data(self, service: str) -> Path:
        return self.s.data / service

    def authtoken(self, user: str) -> dict[str, object]:
        return {
            "www_authenticate_uri": self.s.url(Port.KEYSTONE),
            "auth_url": self.s.url(Port.KEYSTONE),
            "auth_type": "password",
            "project_domain_name": "Default",
            "user_domain_name": "Default",
            "project_name": "service",
            "username": user,
            "password": self.s.service_password.get_secret_value(),
            "service_token_roles_required": True,
            "service_token_roles": "service",
        }

    def service_auth(self, user: str = "nova") -> dict[str, object]:
        return {
            "auth_type": "password",
            "auth_url": self.s.url(Port.KEYSTONE),
            "project_domain_name": "Default",
            "user_domain_name": "Default",
            "project_name": "service",
            "username": user,
            "password": self.s.service_password.get_secret_value(),
            "region_name": "RegionOne",
        }

    def common(self, service: str) -> dict[str, object]:
        return {
            "transport_url": self.s.transport_url,
            "use_stderr": True,
            "debug": False,
            "state_path": str(self.data(service)),
        }

    def uwsgi(
        self,
        name: str,
        port: Port,
        module: str | None = None,
        wsgi_file: Path | None = None,
        env: Mapping[str, str] | None = None,
        pyargv: str | None = None,
        processes: int = 2,
        group: str = "",
    ) -> ProcSpec:
        argv = [
            self.bin("uwsgi"), "--master", "--die-on-term", "--need-app", "--lazy-apps",
            "--http", f"127.0.0.1:{self.s.port(port)}", "--http-keepalive", "--http-auto-chunked",
            "--processes", str(processes), "--threads", "1", "--buffer-size", "65535",
            "--worker-reload-mercy", "5", "--listen", "1024", "--http-timeout", "300",
            "--disable-logging", "--home", str(self.venv),
        ]  # fmt: skip
        if module:
            argv += ["--module", module]
        if wsgi_file:
            argv += ["--wsgi-file", str(wsgi_file)]
        if pyargv:
            argv += ["--pyargv", pyargv]
        # SIGINT: uWSGI's immediate shutdown (its graceful SIGTERM can take 20 s and more per server).
        return ProcSpec(name, argv, dict(env or {}), health_url=self.s.url(port), group=group or name,
                        stop_signal=signal.SIGINT)  # fmt: skip

    # ---------------------------------------------------------------- keystone
    def keystone(self) -> list[ProcSpec]:
        etc = self.etc("keystone")
        write_ini(etc / "keystone.conf", {
            "DEFAULT": {"use_stderr": True, "debug": False},
            "database": {"connection": self.s.db("keystone")},
            "token": {"provider": "fernet", "expiration": 86400},
            "fernet_tokens": {"key_repository": str(etc / "fernet-keys")},
            "credential": {"key_repository": str(etc / "credential-keys")},
        })  # fmt: skip
        return [self.uwsgi("keystone", Port.KEYSTONE, module="keystone.wsgi.api:application", processes=2,
                           env=self.keystone_env())]  # fmt: skip

    def keystone_env(self) -> dict[str, str]:
        return {"OS_KEYSTONE_CONFIG_DIR": str(self.etc("keystone"))}

    # --------------------------------------------------------------- placement
    def placement(self) -> list[ProcSpec]:
        write_ini(self.etc("placement") / "placement.conf", {
            "DEFAULT": {"use_stderr": True},
            "placement_database": {"connection": self.s.db("placement")},
            "api": {"auth_strategy": "keystone"},
            "keystone_authtoken": self.authtoken("placement"),
        })  # fmt: skip
        env = {"OS_PLACEMENT_CONFIG_DIR": str(self.etc("placement"))}
        return [self.uwsgi("placement", Port.PLACEMENT, module="placement.wsgi.api:application", env=env, processes=2)]

    # ------------------------------------------------------------------ glance
    def glance(self) -> list[ProcSpec]:
        etc, data = self.etc("glance"), self.data("glance")
        for sub in ("images", "staging", "tasks"):
            (data / sub).mkdir(parents=True, exist_ok=True)
        write_ini(etc / "glance-api.conf", {
            "DEFAULT": {"use_stderr": True, "enabled_backends": "file:file", "workers": 1},
            "database": {"connection": self.s.db("glance")},
            "glance_store": {"default_backend": "file"},
            "file": {"filesystem_store_datadir": str(data / "images")},
            "os_glance_staging_store": {"filesystem_store_datadir": str(data / "staging")},
            "os_glance_tasks_store": {"filesystem_store_datadir": str(data / "tasks")},
            "keystone_authtoken": self.authtoken("glance"),
            "paste_deploy": {"flavor": "keystone"},
            "oslo_concurrency": {"lock_path": str(data / "lock")},
        })  # fmt: skip
        shutil.copy(self.venv / "etc/glance/glance-api-paste.ini", etc / "glance-api-paste.ini")
        env = {"OS_GLANCE_CONFIG_DIR": str(etc)}
        return [self.uwsgi("glance-api", Port.GLANCE, module="glance.wsgi.api:application", env=env,
                           group="glance")]  # fmt: skip

    # -------------------------------------------------------------------- nova
    def nova_conf(self) -> Path:
        etc, data = self.etc("nova"), self.data("nova")
        write_ini(etc / "nova.conf", {
            "DEFAULT": {
                **self.common("nova"),
                "my_ip": "127.0.0.1",
                # nova.virt.fake.FakeDriver (1000 vCPUs per host) with node ids stable across restarts
                "compute_driver": "devcloud_virt.StableFakeDriver",
                "vif_plugging_is_fatal": False,  # nothing sends network-vif-plugged without a dataplane
                "vif_plugging_timeout": 0,
                "instance_usage_audit": False,
                "heal_instance_info_cache_interval": -1,
                "osapi_compute_workers": 2,
            },
            "api": {"auth_strategy": "keystone"},
            "wsgi": {"api_paste_config": str(etc / "api-paste.ini")},
            "api_database": {"connection": self.s.db("nova_api")},
            "database": {"connection": self.s.db("nova_cell1")},
            "keystone_authtoken": self.authtoken("nova"),
            "service_user": {**self.service_auth(), "send_service_user_token": True},
            "placement": self.service_auth(),
            "neutron": {**self.service_auth(), "default_floating_pool": "public"},
            "cinder": {**self.service_auth(), "os_region_name": "RegionOne"},
            "glance": {"region_name": "RegionOne"},
            "conductor": {"workers": 1},
            "scheduler": {"workers": 1, "discover_hosts_in_cells_interval": 2},
            "oslo_concurrency": {"lock_path": str(data / "lock")},
            "oslo_messaging_notifications": {"driver": "noop"},
            "vnc": {"enabled": False},
            "compute": {"resource_provider_association_refresh": 30},
        })  # fmt: skip
        shutil.copy(self.venv / "etc/nova/api-paste.ini", etc / "api-paste.ini")
        return etc / "nova.conf"

    def nova(self) -> list[ProcSpec]:
        conf = self.nova_conf()
        # Nova loads compute drivers only from nova.virt: place ours there (the virtualenv is devcloud's own).
        for virt in self.venv.glob("lib/python3*/site-packages/nova/virt"):
            shutil.copy(INSIDE / "devcloud_virt.py", virt / "devcloud_virt.py")
        env = {"OS_NOVA_CONFIG_DIR": str(conf.parent)}
        procs = [
            self.uwsgi("nova-api", Port.NOVA, module="nova.wsgi.osapi_compute:application", env=env, processes=4,
                       group="nova"),
            ProcSpec("nova-conductor", [self.bin("nova-conductor"), "--config-file", str(conf)], group="nova"),
            ProcSpec("nova-scheduler", [self.bin("nova-scheduler"), "--config-file", str(conf)], group="nova"),
        ]  # fmt: skip
        for index in range(self.s.compute_hosts):
            procs.append(self.nova_compute(index, conf))
        return procs

    def compute_conf(self, index: int) -> Path:
        host = self.s.compute_host(index)
        path = self.etc("nova") / f"{host}.conf"
        state = self.data("nova") / host
        state.mkdir(parents=True, exist_ok=True)
        write_ini(path, {"DEFAULT": {"host": host, "state_path": str(state)}})
        # The identity Nova expects to find after its first start (see inside/devcloud_virt.py).
        (state / "compute_id").write_text(str(uuid.uuid5(VIRT_NAMESPACE, host)) + "\n")
        return path

    def nova_compute(self, index: int, conf: Path) -> ProcSpec:
        argv = [self.bin("nova-compute"), "--config-file", str(conf), "--config-file", str(self.compute_conf(index))]
        return ProcSpec(f"nova-compute-{index + 1}", argv, group="nova")

    # ----------------------------------------------------------------- neutron
    def neutron(self) -> list[ProcSpec]:
        etc, data = self.etc("neutron"), self.data("neutron")
        write_ini(etc / "neutron.conf", {
            "DEFAULT": {
                **self.common("neutron"),
                "core_plugin": "ml2",
                "service_plugins": "router",
                "auth_strategy": "keystone",
                "allow_overlapping_ips": True,
                "notify_nova_on_port_status_changes": False,
                "notify_nova_on_port_data_changes": False,
                "dhcp_agent_notification": False,
                "api_workers": 2,
                "rpc_workers": 1,
                "rpc_state_report_workers": 1,
                "agent_down_time": 75,
            },
            "database": {"connection": self.s.db("neutron")},
            "keystone_authtoken": self.authtoken("neutron"),
            "nova": self.service_auth("neutron"),
            "oslo_concurrency": {"lock_path": str(data / "lock")},
            "agent": {"report_interval": 10},
        })  # fmt: skip
        write_ini(etc / "plugins/ml2/ml2_conf.ini", {
            "ml2": {
                "type_drivers": "flat,vxlan",
                "tenant_network_types": "vxlan",
                # Neutron's own test driver: binds a port on a host whose fake agent reports alive
                # (devcloud/fake_agent.py runs one per compute host); no dataplane needed.
                "mechanism_drivers": "fake_agent",
                "extension_drivers": "port_security",
            },
            "ml2_type_vxlan": {"vni_ranges": "1:20000"},
            "ml2_type_flat": {"flat_networks": "public"},
        })  # fmt: skip
        shutil.copy(self.venv / "etc/neutron/api-paste.ini", etc / "api-paste.ini")
        files = [etc / "neutron.conf", etc / "plugins/ml2/ml2_conf.ini"]
        env = {"OS_NEUTRON_CONFIG_DIR": str(etc), "OS_NEUTRON_CONFIG_FILES": ";".join(map(str, files))}
        cfg_args = [arg for f in files for arg in ("--config-file", str(f))]
        agent = str(INSIDE / "fake_agent.py")
        procs = [
            self.uwsgi("neutron-api", Port.NEUTRON, module="neutron.wsgi.api:application", env=env, processes=2,
                       group="neutron"),
            ProcSpec("neutron-rpc-server", [self.bin("neutron-rpc-server"), *cfg_args], group="neutron"),
        ]  # fmt: skip
        for index in range(self.s.compute_hosts):
            host = self.s.compute_host(index)
            argv = [self.bin("python"), agent, *cfg_args]
            env = {"DEVCLOUD_AGENT_HOST": host}
            procs.append(ProcSpec(f"neutron-agent-{index + 1}", argv, env, group="neutron"))
        return procs

    def neutron_files(self) -> list[str]:
        etc = self.etc("neutron")
        return ["--config-file", str(etc / "neutron.conf"), "--config-file", str(etc / "plugins/ml2/ml2_conf.ini")]

    # ------------------------------------------------------------------ cinder
    def cinder(self) -> list[ProcSpec]:
        etc, data = self.etc("cinder"), self.data("cinder")
        write_ini(etc / "cinder.conf", {
            "DEFAULT": {
                **self.common("cinder"),
                "auth_strategy": "keystone",
                "my_ip": "127.0.0.1",
                "host": f"{self.s.cloud_name}-storage",
                "enabled_backends": "fake",
                "default_volume_type": "__DEFAULT__",
                "api_paste_config": str(etc / "api-paste.ini"),
                "osapi_volume_workers": 1,
                "glance_api_servers": self.s.url(Port.GLANCE),
                # Without it Cinder refuses every list filter (name, metadata) with 400.
                "resource_query_filters_file": str(self.venv / "etc/cinder/resource_filters.json"),
            },
            "fake": {
                # Cinder's own test driver (an LVM subclass that logs its commands instead of running them):
                # volumes go available/in-use through the real API, scheduler and volume manager.
                "volume_driver": "cinder.tests.fake_driver.FakeLoggingVolumeDriver",
                "volume_backend_name": "fake",
            },
            "database": {"connection": self.s.db("cinder")},
            "keystone_authtoken": self.authtoken("cinder"),
            "nova": self.service_auth("cinder"),
            "service_user": {**self.service_auth("cinder"), "send_service_user_token": True},
            "oslo_concurrency": {"lock_path": str(data / "lock")},
            "oslo_messaging_notifications": {"driver": "noop"},
        })  # fmt: skip
        shutil.copy(self.venv / "etc/cinder/api-paste.ini", etc / "api-paste.ini")
        conf = str(etc / "cinder.conf")
        return [
            self.uwsgi("cinder-api", Port.CINDER, module="cinder.wsgi.api:application",
                       pyargv=f"--config-file {conf}", processes=1, group="cinder"),
            ProcSpec("cinder-scheduler", [self.bin("cinder-scheduler"), "--config-file", conf], group="cinder"),
            ProcSpec("cinder-volume", [self.bin("cinder-volume"), "--config-file", conf], group="cinder"),
        ]  # fmt: skip

    # ----------------------------------------------------------------- octavia
    def octavia(self) -> list[ProcSpec]:
        etc, data = self.etc("octavia"), self.data("octavia")
        (data / "lock").mkdir(parents=True, exist_ok=True)
        certs = etc / "certs"
        write_ini(etc / "octavia.conf", {
            "DEFAULT": {**self.common("octavia")},
            "api_settings": {
                "bind_host": "127.0.0.1",
                "bind_port": self.s.port(Port.OCTAVIA),
                "auth_strategy": "keystone",
                "enabled_provider_drivers": "amphora:The Octavia Amphora driver (noop backends here)",
                "default_provider_driver": "amphora",
            },
            "database": {"connection": self.s.db("octavia")},
            "keystone_authtoken": self.authtoken("octavia"),
            "service_auth": self.service_auth("octavia"),
            # The real controller worker and its task flows, with Octavia's no-op backends: load
            # balancers, listeners, pools and members reach ACTIVE through the real API and database.
            "controller_worker": {
                "amphora_driver": "amphora_noop_driver",
                "compute_driver": "compute_noop_driver",
                "network_driver": "network_noop_driver",
                "image_driver": "image_noop_driver",
                "volume_driver": "volume_noop_driver",
                "distributor_driver": "distributor_noop_driver",
                "loadbalancer_topology": "SINGLE",
                "amp_image_tag": "amphora",
                "amp_flavor_id": "amphora",
                "amp_boot_network_list": "noop-network",
                "client_ca": str(certs / "ca.pem"),
                "workers": 1,
            },
            "certificates": {
                "cert_generator": "local_cert_generator",
                "ca_certificate": str(certs / "ca.pem"),
                "ca_private_key": str(certs / "ca.key"),
                "server_certs_key_passphrase": "insecure-key-do-not-use-this-key",
            },
            "haproxy_amphora": {
                "client_cert": str(certs / "client.pem"),
                "server_ca": str(certs / "ca.pem"),
            },
            "health_manager": {"heartbeat_key": "devcloud", "bind_ip": "127.0.0.1"},
            "task_flow": {"jobboard_enabled": False},
            "oslo_messaging": {"topic": "octavia_prov"},
            "oslo_concurrency": {"lock_path": str(data / "lock")},
        })  # fmt: skip
        conf = str(etc / "octavia.conf")
        shim = etc / "octavia-wsgi.py"
        shim.write_text(
            "from octavia.api import app as _app\n"
            f"application = _app.setup_app(argv=['octavia-api', '--config-file', {conf!r}])\n"
        )
        return [
            self.uwsgi("octavia-api", Port.OCTAVIA, wsgi_file=shim, processes=1, group="octavia"),
            ProcSpec("octavia-worker", [self.bin("octavia-worker"), "--config-file", conf], group="octavia"),
        ]

    # ------------------------------------------------------------------- swift
    def swift(self) -> list[ProcSpec]:
        etc, data = self.etc("swift"), self.data("swift")
        (data / "node/sdb1").mkdir(parents=True, exist_ok=True)
        write_ini(etc / "swift.conf", {
            "swift-hash": {"swift_hash_path_suffix": "devcloud", "swift_hash_path_prefix": "devcloud"},
            "storage-policy:0": {"name": "Policy-0", "default": "yes"},
        })  # fmt: skip
        common = {"swift_dir": str(etc), "devices": str(data / "node"), "mount_check": False,
                  "bind_ip": "127.0.0.1", "workers": 0, "log_facility": "LOG_LOCAL0"}  # fmt: skip
        procs = []
        for kind, port in (("account", Port.SWIFT_ACCOUNT), ("container", Port.SWIFT_CONTAINER),
                           ("object", Port.SWIFT_OBJECT)):  # fmt: skip
            path = etc / f"{kind}-server.conf"
            write_ini(path, {
                "DEFAULT": {**common, "bind_port": self.s.port(port)},
                "pipeline:main": {"pipeline": f"{kind}-server"},
                f"app:{kind}-server": {"use": f"egg:swift#{kind}"},
                f"{kind}-replicator": {}, f"{kind}-auditor": {}, f"{kind}-updater": {},
            })  # fmt: skip
            procs.append(ProcSpec(f"swift-{kind}", [self.bin(f"swift-{kind}-server"), str(path)], group="swift"))
        proxy = etc / "proxy-server.conf"
        write_ini(proxy, {
            "DEFAULT": {**common, "bind_port": self.s.port(Port.SWIFT)},
            "pipeline:main": {"pipeline": "catch_errors gatekeeper healthcheck proxy-logging listing_formats "
                                          "authtoken keystoneauth copy proxy-logging proxy-server"},
            "app:proxy-server": {"use": "egg:swift#proxy", "account_autocreate": True},
            "filter:catch_errors": {"use": "egg:swift#catch_errors"},
            "filter:gatekeeper": {"use": "egg:swift#gatekeeper"},
            "filter:healthcheck": {"use": "egg:swift#healthcheck"},
            "filter:proxy-logging": {"use": "egg:swift#proxy_logging"},
            "filter:listing_formats": {"use": "egg:swift#listing_formats"},
            "filter:copy": {"use": "egg:swift#copy"},
            "filter:keystoneauth": {"use": "egg:swift#keystoneauth", "operator_roles": "admin,member,manager",
                                    "project_reader_roles": "reader"},
            "filter:authtoken": {"paste.filter_factory": "keystonemiddleware.auth_token:filter_factory",
                                 **self.authtoken("swift"), "delay_auth_decision": True},
        })  # fmt: skip
        procs.append(ProcSpec("swift-proxy", [self.bin("swift-proxy-server"), str(proxy)],
                              health_url=f"{self.s.url(Port.SWIFT)}/healthcheck", group="swift"))  # fmt: skip
        return procs

    def swift_rings(self) -> list[list[str]]:
        etc = self.etc("swift")
        steps: list[list[str]] = []
        for kind, port in (("account", Port.SWIFT_ACCOUNT), ("container", Port.SWIFT_CONTAINER),
                           ("object", Port.SWIFT_OBJECT)):  # fmt: skip
            builder = str(etc / f"{kind}.builder")
            ring = self.bin("swift-ring-builder")
            steps += [
                [ring, builder, "create", "8", "1", "1"],
                [ring, builder, "add", f"r1z1-127.0.0.1:{self.s.port(port)}/sdb1", "1"],
                [ring, builder, "rebalance"],
            ]
        return steps

    # -------------------------------------------------------------------- heat
    def heat(self) -> list[ProcSpec]:
        """Heat, only as the peer the plan benchmark compares with: API under uWSGI plus the engine."""
        etc = self.etc("heat")
        password = self.s.service_password.get_secret_value()
        write_ini(etc / "heat.conf", {
            "DEFAULT": {
                **self.common("heat"),
                "num_engine_workers": 2,
                "region_name_for_services": "RegionOne",
                "heat_metadata_server_url": self.s.url(Port.HEAT),
                "heat_waitcondition_server_url": f"{self.s.url(Port.HEAT)}/v1/waitcondition",
                # Users Heat makes for in-instance agents live in their own domain, administered by this user.
                "stack_user_domain_name": HEAT_DOMAIN,
                "stack_domain_admin": HEAT_DOMAIN_ADMIN,
                "stack_domain_admin_password": password,
            },
            "database": {"connection": self.s.db("heat")},
            "keystone_authtoken": self.authtoken("heat"),
            # Deferred operations act through a Keystone trust from the stack owner to this user.
            "trustee": {"auth_type": "password", "auth_url": self.s.url(Port.KEYSTONE), "username": "heat",
                        "password": password, "user_domain_name": "Default"},
            "clients_keystone": {"auth_uri": self.s.url(Port.KEYSTONE)},
            "paste_deploy": {"api_paste_config": str(etc / "api-paste.ini")},
            "oslo_messaging_notifications": {"driver": "noop"},
        })  # fmt: skip
        shutil.copy(self.venv / "etc/heat/api-paste.ini", etc / "api-paste.ini")
        conf = str(etc / "heat.conf")
        return [
            self.uwsgi("heat-api", Port.HEAT, module="heat.wsgi.api:application", processes=2, group="heat",
                       pyargv=f"--config-file {conf}"),
            ProcSpec("heat-engine", [self.bin("heat-engine"), "--config-file", conf], group="heat"),
        ]  # fmt: skip

    def all(self) -> list[ProcSpec]:
        return [*self.keystone(), *self.placement(), *self.glance(), *self.neutron(), *self.nova(),
                *self.cinder(), *self.octavia(), *self.swift(), *(self.heat() if self.s.heat else [])]  # fmt: skip
