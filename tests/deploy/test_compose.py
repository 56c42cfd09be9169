"""docker-compose.yml, the Dockerfile it builds, and the Prometheus/Grafana configuration it mounts.

Checked statically (no Docker engine here): every service of ``services/`` is in the stack, configured with
settings its own ``ServiceSettings`` class accepts, health-checked, started only after Kafka, PostgreSQL and
the migrations; secrets are never defaulted; nothing listens on the host's public interfaces; Prometheus
scrapes every service and Grafana plots only metrics that ``shared/metrics.py`` really exports.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

import shared.metrics
from services.cli.processes import SERVICES as CLI_SERVICES
from shared.config import ENV_PREFIX, CloudExecutorSettings, ServiceSettings, load_settings, unknown_variables
from shared.runtime import ServiceSpec

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
PROMETHEUS_FILE = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARD_FILE = GRAFANA_DIR / "dashboards" / "dcostack.json"
CONTAINER_PORT = 8080
CLOUDS_YAML = "/etc/openstack/clouds.yaml"

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|CREDENTIAL|PRIVATE", re.IGNORECASE)
METRIC_NAME = re.compile(r"\bdcostack_[a-z0-9_]+\b")


def discover_services() -> list[str]:
    """Every ``services/<name>/__main__.py`` except the CLI: the services the stack must run."""
    return sorted(p.parent.name for p in (ROOT / "services").glob("*/__main__.py") if p.parent.name != "cli")


SERVICE_NAMES = discover_services()


def settings_class(name: str) -> type[ServiceSettings]:
    spec = importlib.import_module(f"services.{name}.__main__").SPEC
    assert isinstance(spec, ServiceSpec)
    return spec.settings_cls


def needs_cloud(name: str) -> bool:
    return "cloud" in settings_class(name).model_fields


def uses_trusts(name: str) -> bool:
    """The planner makes and deletes Keystone trusts; the cloud executors act through them."""
    cls = settings_class(name)
    return "trust_lifetime_hours" in cls.model_fields or issubclass(cls, CloudExecutorSettings)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose-style variable substitution; a required variable missing from ``env`` is an error."""

    def sub(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        value = env.get(name)
        if op in (":?", "?") and not value:
            raise KeyError(f"{name} is required: {arg}")
        if op in (":-", "-") and not value:
            return arg
        return value or ""

    return INTERPOLATION.sub(sub, text)


@pytest.fixture(scope="module")
def raw_compose() -> str:
    return COMPOSE_FILE.read_text()


@pytest.fixture(scope="module")
def compose(raw_compose: str) -> dict[str, Any]:
    loaded = yaml.safe_load(raw_compose)
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svcs = compose["services"]
    assert isinstance(svcs, dict)
    return svcs


def env_of(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's environment as a dict of strings (compose accepts a mapping or ``KEY=value`` items)."""
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(str(item).split("=", 1) for item in env)
    assert isinstance(env, dict)
    return {str(k): str(v) for k, v in env.items()}


def all_strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, Mapping):
        for key, value in node.items():
            yield from all_strings(key)
            yield from all_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from all_strings(item)


def test_discovery_agrees_with_the_cli() -> None:
    assert SERVICE_NAMES == sorted(CLI_SERVICES)
    assert len(SERVICE_NAMES) == 7


class TestApplicationServices:
    @pytest.mark.parametrize("name", SERVICE_NAMES)
    def test_every_service_runs_from_the_one_image(self, services: dict[str, dict[str, Any]], name: str) -> None:
        assert name in services, f"{name} is missing from docker-compose.yml"
        svc = services[name]
        assert env_of(svc).get("SERVICE") == name
        assert svc["build"]["dockerfile"] == "Dockerfile"
        images = {services[n]["image"] for n in SERVICE_NAMES} | {services["migrate"]["image"]}
        assert len(images) == 1, f"all services and migrate share one image, got {images}"
        assert "command" not in svc, "the image's entrypoint runs services.$SERVICE"
        assert "entrypoint" not in svc, "the image's entrypoint runs services.$SERVICE"

    @pytest.mark.parametrize("name", SERVICE_NAMES)
    def test_healthcheck_asks_readyz(self, services: dict[str, dict[str, Any]], name: str) -> None:
        check = services[name].get("healthcheck")
        assert check, f"{name} has no healthcheck"
        test = " ".join(check["test"]) if isinstance(check["test"], list) else check["test"]
        assert f"http://127.0.0.1:{CONTAINER_PORT}/readyz" in test
        assert "urllib" in test

    @pytest.mark.parametrize("name", SERVICE_NAMES)
    def test_starts_after_broker_database_and_migrations(self, services: dict[str, dict[str, Any]], name: str) -> None:
        depends = services[name].get("depends_on")
        assert isinstance(depends, dict), "depends_on must use the long form with conditions"
        assert depends.get("kafka", {}).get("condition") == "service_healthy"
        assert depends.get("postgres", {}).get("condition") == "service_healthy"
        assert depends.get("migrate", {}).get("condition") == "service_completed_successfully"
        for dependency, spec in depends.items():
            if spec["condition"] == "service_healthy":
                assert services[dependency].get("healthcheck"), f"{dependency} needs a healthcheck to be waited on"

    @pytest.mark.parametrize("name", SERVICE_NAMES)
    def test_environment_is_what_the_settings_class_reads(
        self, services: dict[str, dict[str, Any]], name: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Build the service's real settings from its compose environment: wrong names or values fail here."""
        fake = {
            "POSTGRES_PASSWORD": "pw",
            "DCOSTACK_SECRET_KEY": "k" * 32,
            "DCOSTACK_CLOUDS_YAML": "/c.yaml",
            "DCOSTACK_KEYSTONE_URL": "https://keystone.example:5000/v3",
            "DCOSTACK_SERVICE_CLOUD": "dcostack",
        }
        env = {k: interpolate(v, fake) for k, v in env_of(services[name]).items()}
        for var in [v for v in os.environ if v.startswith(ENV_PREFIX)]:
            monkeypatch.delenv(var)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        cls = settings_class(name)
        assert unknown_variables(cls) == [], f"{name} would warn about variables it does not read"
        settings = load_settings(cls)
        assert settings.port == CONTAINER_PORT
        assert settings.http_host == "0.0.0.0"
        assert settings.kafka_bootstrap_servers == "kafka:9092"
        assert settings.database_url == "postgresql://dcostack:pw@postgres:5432/dcostack"
        assert settings.auth_strategy == "keystone"
        assert settings.keystone_url == "https://keystone.example:5000/v3"
        assert settings.service_cloud == ("dcostack" if uses_trusts(name) else None)

    @pytest.mark.parametrize("name", SERVICE_NAMES)
    def test_identity_is_required_never_defaulted(self, services: dict[str, dict[str, Any]], name: str) -> None:
        env = env_of(services[name])
        assert env["DCOSTACK_AUTH_STRATEGY"] == "keystone"
        assert env["DCOSTACK_KEYSTONE_URL"].startswith("${DCOSTACK_KEYSTONE_URL:?")
        if uses_trusts(name):
            assert env["DCOSTACK_SERVICE_CLOUD"].startswith("${DCOSTACK_SERVICE_CLOUD:?")
        else:
            assert "DCOSTACK_SERVICE_CLOUD" not in env

    def test_trust_users_are_the_planner_and_the_cloud_executors(self) -> None:
        assert {n for n in SERVICE_NAMES if uses_trusts(n)} == {"planner", "compute", "network", "storage"}

    @pytest.mark.parametrize("name", SERVICE_NAMES)
    def test_clouds_yaml_only_where_a_cloud_is_used(self, services: dict[str, dict[str, Any]], name: str) -> None:
        svc = services[name]
        mounts = [v for v in svc.get("volumes", []) if isinstance(v, dict) and v.get("target", "").endswith(".yaml")]
        env = env_of(svc)
        if needs_cloud(name) or uses_trusts(name):
            assert len(mounts) == 1, f"{name} needs clouds.yaml"
            assert mounts[0]["read_only"] is True, f"{name} must mount clouds.yaml read-only"
            assert mounts[0]["target"] == CLOUDS_YAML
            assert env.get("OS_CLIENT_CONFIG_FILE") == mounts[0]["target"]
        else:
            assert not mounts
            assert "OS_CLIENT_CONFIG_FILE" not in env
        if needs_cloud(name):
            assert env.get("DCOSTACK_CLOUD", "").startswith("${DCOSTACK_CLOUD")
        else:
            assert "DCOSTACK_CLOUD" not in env, f"{name}'s settings do not read DCOSTACK_CLOUD"

    def test_services_run_hardened(self, services: dict[str, dict[str, Any]]) -> None:
        for name in [*SERVICE_NAMES, "migrate"]:
            svc = services[name]
            assert svc.get("read_only") is True, name
            assert "ALL" in svc.get("cap_drop", []), name
            assert "no-new-privileges:true" in svc.get("security_opt", []), name


class TestInfrastructure:
    def test_kafka_is_kraft(self, services: dict[str, dict[str, Any]]) -> None:
        kafka = services["kafka"]
        assert kafka["image"] == "apache/kafka:3.9.0"
        env = env_of(kafka)
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
        assert "CONTROLLER" in env["KAFKA_CONTROLLER_LISTENER_NAMES"]
        assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
        listener_names = {item.split("://")[0] for item in env["KAFKA_LISTENERS"].split(",")}
        mapped = {item.split(":")[0] for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")}
        assert listener_names <= mapped
        assert "kafka-broker-api-versions.sh" in " ".join(kafka["healthcheck"]["test"])

    def test_postgres(self, services: dict[str, dict[str, Any]]) -> None:
        pg = services["postgres"]
        assert pg["image"] == "postgres:16"
        assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
        assert env_of(pg)["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")

    def test_migrate_is_a_one_shot_after_postgres(self, services: dict[str, dict[str, Any]]) -> None:
        migrate = services["migrate"]
        assert migrate["command"] == ["python", "-m", "services", "migrate"]
        assert migrate.get("restart", "no") == "no"
        assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "DCOSTACK_DATABASE_URL" in env_of(migrate)

    def test_grafana_admin_password_is_required(self, services: dict[str, dict[str, Any]]) -> None:
        env = env_of(services["grafana"])
        assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")


class TestSecretsAndPorts:
    def test_secrets_are_required_never_defaulted(self, raw_compose: str) -> None:
        secrets = [m for m in INTERPOLATION.finditer(raw_compose) if SECRET_NAME.search(m["name"])]
        assert {m["name"] for m in secrets} >= {"POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD"}
        for match in secrets:
            assert match["op"] == ":?", f"{match[0]} must use the ${{VAR:?message}} form"

    def test_no_literal_secret_values(self, services: dict[str, dict[str, Any]]) -> None:
        """Secret-named variables are exactly ``${VAR:?...}``; a password inside a URL comes from one."""
        from_env = "value-from-the-environment"
        urls_with_password = 0
        for name, svc in services.items():
            for key, value in env_of(svc).items():
                if SECRET_NAME.search(key):
                    assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]*\}", value), f"{name}: {key} is a literal"
                resolved = interpolate(value, dict.fromkeys(re.findall(r"\$\{([A-Z0-9_]+)", value), from_env))
                for password in re.findall(r"://[^/@\s:]+:([^@\s]*)@", resolved):
                    assert password == from_env, f"{name}: {key} embeds a literal password"
                    urls_with_password += 1
        assert urls_with_password >= len(SERVICE_NAMES)

    def test_env_example_lists_every_required_variable(self, raw_compose: str) -> None:
        required = {m["name"] for m in INTERPOLATION.finditer(raw_compose) if m["op"] == ":?"}
        example = (ROOT / ".env.example").read_text()
        listed = dict(line.split("=", 1) for line in example.splitlines() if line.strip() and not line.startswith("#"))
        assert required <= listed.keys()
        for key in listed.keys() & required:
            if SECRET_NAME.search(key):
                assert "change-me" in listed[key], f"{key} in .env.example must be a placeholder"

    def test_no_port_bound_beyond_localhost(self, services: dict[str, dict[str, Any]]) -> None:
        published = 0
        for name, svc in services.items():
            for port in svc.get("ports", []):
                if isinstance(port, dict):
                    host_ip = port.get("host_ip", "")
                else:
                    parts = str(port).rsplit(":", 2)
                    host_ip = parts[0] if len(parts) == 3 else ""
                assert host_ip == "127.0.0.1", f"{name} publishes {port!r} beyond 127.0.0.1"
                published += 1
        assert published >= len(SERVICE_NAMES)

    def test_host_ports_are_unique(self, services: dict[str, dict[str, Any]]) -> None:
        host_ports = [str(p).rsplit(":", 2)[1] for svc in services.values() for p in svc.get("ports", [])]
        assert len(host_ports) == len(set(host_ports))


class TestDockerfile:
    def test_image_is_non_root_and_runs_the_named_service(self) -> None:
        dockerfile = (ROOT / "Dockerfile").read_text()
        assert re.search(r"^FROM python:3\.11-slim|^ARG PYTHON_IMAGE=python:3\.11-slim", dockerfile, re.M)
        assert "uv sync --frozen --no-dev --all-extras" in dockerfile
        assert re.search(r"^USER 10001(:10001)?$", dockerfile, re.M)
        assert re.search(rf"^EXPOSE {CONTAINER_PORT}$", dockerfile, re.M)
        assert 'python -m "services.${SERVICE}"' in dockerfile
        ignored = (ROOT / ".dockerignore").read_text().split()
        assert {".venv", ".git", ".pytest_cache", ".mypy_cache"} <= set(ignored)


class TestPrometheus:
    def test_scrapes_every_service(self, services: dict[str, dict[str, Any]]) -> None:
        config = yaml.safe_load(PROMETHEUS_FILE.read_text())
        targets: set[str] = set()
        for job in config["scrape_configs"]:
            path = job.get("metrics_path", "/metrics")
            for static in job.get("static_configs", []):
                targets |= {f"{t}{path}" for t in static["targets"]}
        for name in SERVICE_NAMES:
            assert f"{name}:{CONTAINER_PORT}/metrics" in targets, f"Prometheus does not scrape {name}"

    def test_compose_mounts_that_config(self, services: dict[str, dict[str, Any]]) -> None:
        volumes = services["prometheus"]["volumes"]
        assert f"./{PROMETHEUS_FILE.relative_to(ROOT)}:/etc/prometheus/prometheus.yml:ro" in volumes


def exported_sample_names() -> set[str]:
    """Every sample name ``shared/metrics.py`` exports, with the suffixes Prometheus adds per type."""
    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"], "summary": ["_sum"]}
    names: set[str] = set()
    collectors = [v for v in vars(shared.metrics).values() if isinstance(v, MetricWrapperBase)]
    assert collectors
    for collector in collectors:
        for family in collector.describe():
            names |= {family.name + suffix for suffix in suffixes[family.type]}
    return names


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded = json.loads(DASHBOARD_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


class TestGrafana:
    def test_exported_names_are_known(self) -> None:
        names = exported_sample_names()
        assert "dcostack_events_consumed_total" in names
        assert "dcostack_handler_duration_seconds_bucket" in names
        assert "dcostack_outbox_pending" in names
        assert "dcostack_outbox_pending_total" not in names

    def test_dashboard_uses_only_exported_metrics(self, dashboard: dict[str, Any]) -> None:
        used = {name for text in all_strings(dashboard) for name in METRIC_NAME.findall(text)}
        unknown = used - exported_sample_names()
        assert not unknown, f"dashboard references metrics shared/metrics.py does not define: {sorted(unknown)}"

    @pytest.mark.parametrize(
        "metric",
        [
            "dcostack_events_consumed_total",
            "dcostack_events_published_total",
            "dcostack_outbox_pending",
            "dcostack_dlq_total",
            "dcostack_handler_duration_seconds_bucket",
            "dcostack_http_requests_total",
        ],
    )
    def test_dashboard_plots(self, dashboard: dict[str, Any], metric: str) -> None:
        exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
        assert any(metric in expr for expr in exprs), f"no panel plots {metric}"

    def test_handler_p99(self, dashboard: dict[str, Any]) -> None:
        exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
        assert any(
            "histogram_quantile(0.99" in e and "dcostack_handler_duration_seconds_bucket" in e and " le)" in e
            for e in exprs
        )

    def test_provisioning_matches_compose(self, services: dict[str, dict[str, Any]]) -> None:
        provisioning = GRAFANA_DIR / "provisioning"
        datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
        assert [d["type"] for d in datasources] == ["prometheus"]
        assert datasources[0]["url"] == "http://prometheus:9090"
        providers = yaml.safe_load((provisioning / "dashboards" / "dcostack.yml").read_text())["providers"]
        mounts = {v.split(":")[0]: v.split(":")[1] for v in services["grafana"]["volumes"] if str(v).startswith("./")}
        assert mounts[f"./{provisioning.relative_to(ROOT)}"] == "/etc/grafana/provisioning"
        assert mounts[f"./{DASHBOARD_FILE.parent.relative_to(ROOT)}"] == providers[0]["options"]["path"]

    def test_dashboard_datasource_is_the_provisioned_one(self, dashboard: dict[str, Any]) -> None:
        datasources = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())
        uid = datasources["datasources"][0]["uid"]
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == uid, panel["title"]
