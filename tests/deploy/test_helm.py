"""The Helm chart in ``helm/dcostack``, linted and rendered offline with the Helm v4 SDK (helm-python-sdk).

Every rendered manifest is validated against the Kubernetes 1.30 OpenAPI schemas (kubernetes-validate,
strict: unknown fields fail), and the environment each Deployment receives is fed to that service's real
settings class, so a misspelt ``DCOSTACK_*`` name or a bad value fails here rather than in a cluster.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from helm_python import HelmError, HelmValuesError
from helm_python.chart import Chart, lint

from shared.config import ENV_PREFIX, CloudExecutorSettings, ServiceSettings, load_settings, unknown_variables
from shared.runtime import ServiceSpec

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "helm" / "dcostack"
RELEASE = "dcostack"
KUBE_VERSION = "1.30"
CONTAINER_PORT = 8080
UID = 10001
KEYSTONE_URL = "https://keystone.example:5000/v3"
# identity.keystoneUrl has no default (the chart refuses to render without it): every render here names one.
IDENTITY: dict[str, Any] = {"identity": {"keystoneUrl": KEYSTONE_URL}}
KEYSTONE_REQUIRED = "identity.keystoneUrl is required when identity.strategy is keystone"

Manifest = dict[str, Any]

# jsonschema ships no type information and the mypy configuration has no override for it; imported
# dynamically so this file type-checks whether or not stubs or an override are added later.
jsonschema: Any = importlib.import_module("jsonschema")


def discover_services() -> list[str]:
    return sorted(p.parent.name for p in (ROOT / "services").glob("*/__main__.py") if p.parent.name != "cli")


SERVICE_NAMES = discover_services()


def settings_class(name: str) -> type[ServiceSettings]:
    spec = importlib.import_module(f"services.{name}.__main__").SPEC
    assert isinstance(spec, ServiceSpec)
    return spec.settings_cls


def uses_trusts(name: str) -> bool:
    """The planner makes and deletes Keystone trusts; the cloud executors act through them."""
    cls = settings_class(name)
    return "trust_lifetime_hours" in cls.model_fields or issubclass(cls, CloudExecutorSettings)


def needs_clouds_yaml(name: str) -> bool:
    return "cloud" in settings_class(name).model_fields or uses_trusts(name)


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, nested mappings key by key (as Helm merges ``-f`` files)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_values(name: str) -> dict[str, Any]:
    loaded = yaml.safe_load((CHART_DIR / name).read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def chart() -> Iterator[Chart]:
    with Chart.load(CHART_DIR) as loaded:
        yield loaded


def render(chart: Chart, values: dict[str, Any] | None = None, *, identity: bool = True) -> list[Manifest]:
    """Render the chart as ``helm template`` would (with ``IDENTITY`` under ``values`` unless told not to)
    and parse every YAML document."""
    values = merged(IDENTITY, values or {}) if identity else values or {}
    manifests: list[Manifest] = []
    for source, text in sorted(chart.render(values, name=RELEASE, namespace="dcostack").items()):
        for doc in yaml.safe_load_all(text):
            if doc is None:
                continue
            assert isinstance(doc, dict), f"{source} rendered a non-mapping document"
            doc.setdefault("metadata", {}).setdefault("annotations", {})
            manifests.append(doc)
    return manifests


PROFILES = {"default": "values.yaml", "prod": "values-prod.yaml"}


@pytest.fixture(scope="module", params=sorted(PROFILES))
def profile(request: pytest.FixtureRequest) -> str:
    name = request.param
    assert isinstance(name, str)
    return name


@pytest.fixture(scope="module")
def manifests(chart: Chart, profile: str) -> list[Manifest]:
    return render(chart, None if profile == "default" else load_values(PROFILES[profile]))


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def component(manifest: Manifest) -> str:
    value = manifest["metadata"]["labels"]["app.kubernetes.io/component"]
    assert isinstance(value, str)
    return value


def pod_specs(manifests: list[Manifest]) -> list[tuple[str, Manifest]]:
    return [
        (f"{m['kind']}/{m['metadata']['name']}", m["spec"]["template"]["spec"])
        for m in manifests
        if m["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet")
    ]


class TestLint:
    def test_lint_strict_is_clean(self) -> None:
        report = lint(CHART_DIR, IDENTITY, strict=True, kube_version=f"v{KUBE_VERSION}.0")
        assert report["errors"] == []
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert problems == []

    def test_lint_strict_with_prod_values_is_clean(self) -> None:
        report = lint(CHART_DIR, merged(IDENTITY, load_values("values-prod.yaml")), strict=True)
        assert report["errors"] == []

    def test_lint_reports_bad_values(self) -> None:
        report = lint(CHART_DIR, {"services": {"planner": {"replicas": "two"}}}, strict=True)
        assert any("/services/planner/replicas" in e for e in report["errors"])


class TestRenderedManifests:
    def test_every_manifest_is_valid_kubernetes(self, manifests: list[Manifest]) -> None:
        checked = 0
        for manifest in manifests:
            if manifest["apiVersion"].startswith("monitoring.coreos.com/"):
                continue  # a CRD: kubernetes-validate has no schema for it; TestServiceMonitor checks it
            clean = copy.deepcopy(manifest)
            if not clean["metadata"]["annotations"]:
                del clean["metadata"]["annotations"]
            kubernetes_validate.validate(clean, KUBE_VERSION, strict=True)
            checked += 1
        assert checked >= 2 * len(SERVICE_NAMES) + 2  # Deployments, Services, ConfigMaps, Job

    def test_one_deployment_and_service_per_service(self, manifests: list[Manifest]) -> None:
        deployments = sorted(component(d) for d in of_kind(manifests, "Deployment"))
        services = sorted(component(s) for s in of_kind(manifests, "Service"))
        assert deployments == SERVICE_NAMES
        assert services == SERVICE_NAMES

    def test_names_are_unique(self, manifests: list[Manifest]) -> None:
        keys = [(m["kind"], m["metadata"]["name"]) for m in manifests]
        assert len(keys) == len(set(keys))

    def test_service_selects_its_own_pods(self, manifests: list[Manifest]) -> None:
        pods = {component(d): d["spec"]["template"]["metadata"]["labels"] for d in of_kind(manifests, "Deployment")}
        for service in of_kind(manifests, "Service"):
            selector = service["spec"]["selector"]
            matching = [name for name, labels in pods.items() if selector.items() <= labels.items()]
            assert matching == [component(service)]
            assert service["spec"]["ports"][0]["targetPort"] == "http"


class TestContainers:
    def test_every_container_is_non_root_with_read_only_root(self, manifests: list[Manifest]) -> None:
        specs = pod_specs(manifests)
        assert len(specs) == len(SERVICE_NAMES) + 1  # the Deployments and the migrate Job
        for where, pod in specs:
            pod_ctx = pod.get("securityContext", {})
            assert pod_ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
            assert pod.get("automountServiceAccountToken") is False, where
            for container in pod["containers"] + pod.get("initContainers", []):
                ctx = {**pod_ctx, **container.get("securityContext", {})}
                assert ctx.get("runAsNonRoot") is True, where
                assert ctx.get("runAsUser") == UID, where
                assert ctx.get("readOnlyRootFilesystem") is True, where
                assert ctx.get("allowPrivilegeEscalation") is False, where
                assert ctx.get("capabilities", {}).get("drop") == ["ALL"], where
                mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
                volumes = {v["name"]: v for v in pod.get("volumes", [])}
                assert "emptyDir" in volumes[mounts["/tmp"]], f"{where}: /tmp must be an emptyDir"

    def test_probes_and_port(self, manifests: list[Manifest]) -> None:
        for deployment in of_kind(manifests, "Deployment"):
            (container,) = deployment["spec"]["template"]["spec"]["containers"]
            assert container["ports"] == [{"name": "http", "containerPort": CONTAINER_PORT, "protocol": "TCP"}]
            assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
            assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
            assert container["resources"]["requests"]
            assert container["resources"]["limits"]

    def test_database_url_comes_from_a_secret(self, manifests: list[Manifest]) -> None:
        for where, pod in pod_specs(manifests):
            (container,) = pod["containers"]
            env = {e["name"]: e for e in container.get("env", [])}
            assert "secretKeyRef" in env["DCOSTACK_DATABASE_URL"]["valueFrom"], where
            assert "value" not in env["DCOSTACK_DATABASE_URL"], where
            assert "secretKeyRef" in env["DCOSTACK_SECRET_KEY"]["valueFrom"], where

    @pytest.mark.parametrize("name", SERVICE_NAMES)
    def test_environment_is_what_the_settings_class_reads(
        self, manifests: list[Manifest], name: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Resolve the container's env (ConfigMaps + Secrets) and build the service's real settings from it."""
        configmaps = {c["metadata"]["name"]: c.get("data", {}) for c in of_kind(manifests, "ConfigMap")}
        (deployment,) = [d for d in of_kind(manifests, "Deployment") if component(d) == name]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env: dict[str, str] = {}
        for source in container["envFrom"]:
            env.update(configmaps[source["configMapRef"]["name"]])
        for item in container["env"]:
            env[item["name"]] = item.get("value", f"from-secret-{item['name'].lower()}")
        env["DCOSTACK_DATABASE_URL"] = "postgresql://dcostack:pw@postgres:5432/dcostack"

        assert env["SERVICE"] == name
        cls = settings_class(name)
        assert ("DCOSTACK_CLOUD" in env) == ("cloud" in cls.model_fields)
        assert env["DCOSTACK_AUTH_STRATEGY"] == "keystone"
        assert env["DCOSTACK_KEYSTONE_URL"] == KEYSTONE_URL
        assert ("DCOSTACK_SERVICE_CLOUD" in env) == uses_trusts(name)
        assert ("OS_CLIENT_CONFIG_FILE" in env) == needs_clouds_yaml(name)
        assert ("DCOSTACK_TRUST_LIFETIME_HOURS" in env) == (name == "planner")
        for var in [v for v in os.environ if v.startswith(ENV_PREFIX)]:
            monkeypatch.delenv(var)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        assert unknown_variables(cls) == [], f"{name} would warn about variables it does not read"
        settings = load_settings(cls)
        assert settings.port == CONTAINER_PORT
        assert settings.http_host == "0.0.0.0"
        assert settings.keystone_url == KEYSTONE_URL
        assert settings.service_cloud == ("dcostack" if uses_trusts(name) else None)

    def test_clouds_yaml_mounted_read_only_where_needed(self, manifests: list[Manifest]) -> None:
        for deployment in of_kind(manifests, "Deployment"):
            pod = deployment["spec"]["template"]["spec"]
            (container,) = pod["containers"]
            mounts = [m for m in container["volumeMounts"] if m["mountPath"] == "/etc/openstack"]
            if needs_clouds_yaml(component(deployment)):
                assert len(mounts) == 1
                assert mounts[0]["readOnly"] is True
                (volume,) = [v for v in pod["volumes"] if v["name"] == mounts[0]["name"]]
                assert volume["secret"]["items"][0]["path"] == "clouds.yaml"
            else:
                assert mounts == []


def object_references(node: Any) -> Iterator[tuple[str, str]]:
    """(kind, name) of every ConfigMap and Secret a pod spec reads."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("configMapRef", "configMapKeyRef", "configMap") and isinstance(value, dict):
                yield "ConfigMap", value["name"]
            elif key in ("secretRef", "secretKeyRef") and isinstance(value, dict):
                yield "Secret", value["name"]
            elif key == "secret" and isinstance(value, dict):
                yield "Secret", value["secretName"]
            yield from object_references(value)
    elif isinstance(node, list):
        for item in node:
            yield from object_references(item)


class TestMigrateJob:
    def test_is_a_pre_install_and_pre_upgrade_hook(self, manifests: list[Manifest]) -> None:
        (job,) = of_kind(manifests, "Job")
        annotations = job["metadata"]["annotations"]
        assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
        (container,) = job["spec"]["template"]["spec"]["containers"]
        assert container["command"] == ["python", "-m", "services", "migrate"]
        assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"

    def test_does_not_need_objects_the_release_creates_later(self, manifests: list[Manifest]) -> None:
        """Hooks run before the release's ConfigMaps exist; the Job must only use external Secrets."""
        (job,) = of_kind(manifests, "Job")
        released = {
            (m["kind"], m["metadata"]["name"]) for m in manifests if "helm.sh/hook" not in m["metadata"]["annotations"]
        }
        referenced = set(object_references(job["spec"]))
        assert ("Secret", "dcostack-database") in referenced
        assert not referenced & released, "the migrate hook would wait for objects created after it"
        deployment = of_kind(manifests, "Deployment")[0]
        assert ("ConfigMap", "dcostack-config") in set(object_references(deployment["spec"]))  # the walker works


class TestProfiles:
    def test_service_monitor_only_in_prod(self, manifests: list[Manifest], profile: str) -> None:
        monitors = of_kind(manifests, "ServiceMonitor")
        assert len(monitors) == (1 if profile == "prod" else 0)

    def test_prod_runs_two_or_more_of_everything(self, manifests: list[Manifest], profile: str) -> None:
        replicas = {component(d): d["spec"]["replicas"] for d in of_kind(manifests, "Deployment")}
        if profile == "prod":
            assert min(replicas.values()) >= 2
        else:
            assert set(replicas.values()) == {1}

    def test_prod_gets_more_resources(self, chart: Chart) -> None:
        def memory_limits(values: dict[str, Any] | None) -> dict[str, str]:
            return {
                component(d): d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
                for d in of_kind(render(chart, values), "Deployment")
            }

        default, prod = memory_limits(None), memory_limits(load_values("values-prod.yaml"))
        assert default.keys() == prod.keys()
        assert all(default[n] != prod[n] for n in default)

    def test_disabled_service_is_not_rendered(self, chart: Chart) -> None:
        manifests = render(chart, {"services": {"hybrid": {"enabled": False}}})
        rendered = {component(m) for m in manifests if m["kind"] in ("Deployment", "Service")}
        assert rendered == set(SERVICE_NAMES) - {"hybrid"}


class TestServiceMonitor:
    def test_scrapes_the_services(self, chart: Chart) -> None:
        manifests = render(chart, load_values("values-prod.yaml"))
        (monitor,) = of_kind(manifests, "ServiceMonitor")
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] == "http"
        assert endpoint["path"] == "/metrics"
        selector = monitor["spec"]["selector"]["matchLabels"]
        selected = [s for s in of_kind(manifests, "Service") if selector.items() <= s["metadata"]["labels"].items()]
        assert sorted(component(s) for s in selected) == SERVICE_NAMES
        for service in selected:
            assert [p["name"] for p in service["spec"]["ports"]] == ["http"]


def service_env(manifests: list[Manifest], name: str) -> dict[str, str]:
    """The ConfigMap-provided environment of one service's container."""
    configmaps = {c["metadata"]["name"]: c.get("data", {}) for c in of_kind(manifests, "ConfigMap")}
    (deployment,) = [d for d in of_kind(manifests, "Deployment") if component(d) == name]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env: dict[str, str] = {}
    for source in container["envFrom"]:
        env.update(configmaps[source["configMapRef"]["name"]])
    return env


class TestIdentity:
    def test_trust_users_are_the_planner_and_the_cloud_executors(self) -> None:
        assert {n for n in SERVICE_NAMES if uses_trusts(n)} == {"planner", "compute", "network", "storage"}

    def test_planner_mounts_clouds_yaml_without_a_cloud(self, manifests: list[Manifest]) -> None:
        env = service_env(manifests, "planner")
        assert env["DCOSTACK_SERVICE_CLOUD"] == "dcostack"
        assert env["OS_CLIENT_CONFIG_FILE"] == "/etc/openstack/clouds.yaml"
        assert env["DCOSTACK_TRUST_LIFETIME_HOURS"] == "24"
        assert "DCOSTACK_CLOUD" not in env

    def test_rendering_without_a_keystone_url_fails_with_the_fix(self, chart: Chart) -> None:
        with pytest.raises(HelmError, match=KEYSTONE_REQUIRED):
            chart.render(None, name=RELEASE)

    def test_identity_values_reach_the_services(self, chart: Chart) -> None:
        values = {"identity": {"keystoneUrl": "http://ks:5000", "serviceCloud": "trustee", "trustLifetimeHours": 6}}
        manifests = render(chart, values)
        for name in SERVICE_NAMES:
            env = service_env(manifests, name)
            assert env["DCOSTACK_KEYSTONE_URL"] == "http://ks:5000", name
            assert env.get("DCOSTACK_SERVICE_CLOUD") == ("trustee" if uses_trusts(name) else None), name
        assert service_env(manifests, "planner")["DCOSTACK_TRUST_LIFETIME_HOURS"] == "6"

    def test_noauth_in_dev_needs_no_keystone(self, chart: Chart, monkeypatch: pytest.MonkeyPatch) -> None:
        manifests = render(chart, {"environment": "dev", "identity": {"strategy": "noauth"}}, identity=False)
        env = service_env(manifests, "planner")
        assert env["DCOSTACK_AUTH_STRATEGY"] == "noauth"
        assert "DCOSTACK_KEYSTONE_URL" not in env
        for var in [v for v in os.environ if v.startswith(ENV_PREFIX)]:
            monkeypatch.delenv(var)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        assert load_settings(settings_class("planner")).keystone_url is None


class TestValuesSchema:
    @pytest.mark.parametrize(
        ("values", "complaint"),
        [
            ({"services": {"planner": {"replicas": "two"}}}, "/services/planner/replicas"),
            ({"services": {"planner": {"replica": 2}}}, "'replica' not allowed"),
            ({"services": {"scheduler": {"enabled": True, "replicas": 1, "port": 8080}}}, "'scheduler' not allowed"),
            ({"services": {"compute": {"enabled": "yes"}}}, "/services/compute/enabled"),
            ({"securityContext": {"readOnlyRootFilesystem": False}}, "/securityContext/readOnlyRootFilesystem"),
            ({"serviceMonitor": {"enabled": "true"}}, "/serviceMonitor/enabled"),
            ({"identity": {"strategy": "none"}}, "/identity/strategy"),
            ({"identity": {"keystoneUrl": "keystone:5000"}}, "/identity/keystoneUrl"),
            ({"services": {"planner": {"trusts": "yes"}}}, "/services/planner/trusts"),
        ],
    )
    def test_helm_rejects_bad_values(self, chart: Chart, values: dict[str, Any], complaint: str) -> None:
        with pytest.raises(HelmValuesError, match=complaint):
            chart.validate_schema(chart.merge_values(values))
        with pytest.raises(HelmValuesError, match=complaint):
            chart.render(values, name=RELEASE)

    def test_helm_accepts_the_shipped_values(self, chart: Chart) -> None:
        chart.validate_schema(chart.merge_values(None))
        chart.validate_schema(chart.merge_values(load_values("values-prod.yaml")))

    def test_schema_is_draft_07_and_agrees_with_jsonschema(self) -> None:
        schema = json.loads((CHART_DIR / "values.schema.json").read_text())
        assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
        jsonschema.Draft7Validator.check_schema(schema)
        validator = jsonschema.Draft7Validator(schema)
        defaults = load_values("values.yaml")
        assert list(validator.iter_errors(defaults)) == []
        assert sorted(defaults["services"]) == SERVICE_NAMES
        bad = copy.deepcopy(defaults)
        bad["services"]["planner"]["replicas"] = "two"
        (error,) = validator.iter_errors(bad)
        assert list(error.absolute_path) == ["services", "planner", "replicas"]
