"""Previews against real OpenStack: the planner asks real compute, network and storage services, which read
devcloud, in a project of this module's own with a small instance quota (a member of it acts; Placement is
read with the admin entry, DCOSTACK_CAPACITY_CLOUD). Every service is a process; nothing is mocked."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import openstack
import pytest
import yaml
from typer.testing import CliRunner

from services.cli import app
from services.cli.infra import drop_database, ensure_database, free_port
from services.cli.processes import ServiceProcess
from services.planner.previews.service import ensure_preview_current
from services.planner.settings import PlannerSettings
from shared.config import AuthStrategy
from shared.errors import Conflict
from shared.executor.marks import plan_tag
from tests.e2e.test_apply import failures, run_to_end
from tests.fixtures.openstack import CloudUnderTest
from tests.fixtures.platform import planner_env, service_env

pytestmark = pytest.mark.devcloud

INSTANCE_QUOTA = 3
EXECUTORS = ("compute", "network", "storage")
runner = CliRunner()


@dataclass
class Setup:
    planner: str
    dsn: str
    urls: dict[str, str]
    project_id: str
    admin: Any

    def api(self) -> httpx.Client:
        """The planner API in a planner project of the test's own."""
        return httpx.Client(base_url=self.planner, timeout=60, headers={"X-Project-Id": f"p{uuid.uuid4().hex[:8]}"})


def _auth_of(cloud: str) -> dict[str, Any]:
    config = openstack.config.OpenStackConfig().get_one(cloud=cloud).config
    return {k: config[k] for k in ("auth", "region_name", "interface", "identity_api_version") if k in config}


@pytest.fixture(scope="module")
def setup(
    test_cloud: CloudUnderTest, pg_server: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    """A fresh project (quota: INSTANCE_QUOTA instances) with a member user, a clouds.yaml naming both it and
    the admin entry, and the planner with the three domain services acting in that project."""
    admin = test_cloud.connect(admin=True)
    name = f"t-preview-{uuid.uuid4().hex[:6]}"
    tmp = tmp_path_factory.mktemp("preview")
    project = admin.identity.create_project(name=name, domain_id="default")
    password = uuid.uuid4().hex
    user = admin.identity.create_user(name=name, password=password, default_project_id=project.id, domain_id="default")
    procs: list[ServiceProcess] = []
    database = f"dcostack_preview_{uuid.uuid4().hex[:8]}"
    try:
        for role in ("member", "reader", "load-balancer_member"):
            admin.identity.assign_project_role_to_user(project, user, admin.identity.find_role(role))
        admin.set_compute_quotas(project.id, instances=INSTANCE_QUOTA)
        base = _auth_of(test_cloud.member)
        member_entry = {
            **base,
            "auth": {
                "auth_url": base["auth"]["auth_url"],
                "username": name,
                "password": password,
                "project_name": name,
                "user_domain_name": "Default",
                "project_domain_name": "Default",
            },
        }
        clouds = tmp / "clouds.yaml"
        clouds.write_text(yaml.safe_dump({"clouds": {name: member_entry, "admin": _auth_of(test_cloud.admin)}}))
        dsn = asyncio.run(ensure_database(pg_server, database))
        env = service_env(dsn, kafka_bootstrap, f"t{uuid.uuid4().hex[:8]}.") | {
            "OS_CLIENT_CONFIG_FILE": str(clouds),
            "DCOSTACK_STEP_TIMEOUT_SECONDS": "300",
        }
        ports = {n: free_port() for n in ("planner", *EXECUTORS)}
        cloud_env = env | {"DCOSTACK_CLOUD": name}
        for n in EXECUTORS:
            extra = {"DCOSTACK_CAPACITY_CLOUD": "admin"} if n == "compute" else {}
            procs.append(ServiceProcess(n, ports[n], cloud_env | extra, tmp / f"{n}.log"))
        procs.append(ServiceProcess("planner", ports["planner"], env | planner_env(ports), tmp / "planner.log"))
        for p in procs:
            p.start()
        for p in procs:
            p.wait_ready()
        yield Setup(
            planner=procs[-1].base_url,
            dsn=dsn,
            urls={n: f"http://127.0.0.1:{ports[n]}" for n in EXECUTORS},
            project_id=project.id,
            admin=admin,
        )
    finally:
        for p in procs:
            p.stop()
        asyncio.run(drop_database(pg_server, database))
        for group in admin.network.security_groups(project_id=project.id):
            admin.network.delete_security_group(group, ignore_missing=True)  # Neutron's default group
        admin.identity.delete_user(user, ignore_missing=True)
        admin.identity.delete_project(project, ignore_missing=True)


def small_plan(name: str, **group: Any) -> dict[str, Any]:
    return {
        "name": name,
        "networks": [{"name": "net", "cidr": "10.61.0.0/24"}],
        "security_groups": [{"name": "web", "rules": [{"protocol": "tcp", "ports": 80, "remote_cidr": "0.0.0.0/0"}]}],
        "instance_groups": [
            {
                "name": "web",
                "flavor": "m1.tiny",
                "image": "devcloud-tiny",
                "count": 2,
                "networks": ["net"],
                "security_groups": ["web"],
            }
            | group
        ],
        "volumes": [{"name": "data", "size_gb": 1}],
    }


def create(api: httpx.Client, document: dict[str, Any]) -> str:
    r = api.post("/v1/plans", json=document)
    assert r.status_code == 201, r.text
    assert r.json()["warnings"] == []
    return str(r.json()["id"])


def preview(api: httpx.Client, plan_id: str, version: int | None = None) -> dict[str, Any]:
    r = api.post(f"/v1/plans/{plan_id}/preview", json={"version": version} if version else {})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def checks_of(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in body["checks"]}


class TestLiveNames:
    def test_unknown_flavor_and_image_are_refused_with_their_paths_and_the_available_names(self, setup: Setup) -> None:
        doc = small_plan(f"names-{uuid.uuid4().hex[:6]}", flavor="m9.nope", image="no-such-image")
        with setup.api() as api:
            for method, path in (("POST", "/v1/plans/validate"), ("POST", "/v1/plans")):
                r = api.request(method, path, json=doc)
                assert r.status_code == 422, r.text
                body = r.json()
                assert body["error"] == "PlanInvalid"
                errors = {e["path"]: e for e in body["errors"]}
                assert set(errors) == {"$.instance_groups[0].flavor", "$.instance_groups[0].image"}
                assert "m1.tiny" in errors["$.instance_groups[0].flavor"]["available"]
                assert "devcloud-tiny" in errors["$.instance_groups[0].image"]["available"]
                assert "m9.nope" in errors["$.instance_groups[0].flavor"]["message"]
            assert api.get("/v1/plans", params={"name": doc["name"]}).json()["plans"] == []
            plan_id = create(api, small_plan(doc["name"]))
            r = api.put(f"/v1/plans/{plan_id}", json=doc)
            assert r.status_code == 422, r.text
            assert api.get(f"/v1/plans/{plan_id}").json()["latest_version"] == 1


class TestFeasibility:
    def test_a_plan_over_the_instance_quota_names_the_quota_and_the_shortfall(self, setup: Setup) -> None:
        with setup.api() as api:
            plan_id = create(api, small_plan(f"quota-{uuid.uuid4().hex[:6]}", count=INSTANCE_QUOTA + 2))
            body = preview(api, plan_id)
        assert body["ok"] is False
        check = checks_of(body)["quota: instances"]
        assert check["status"] == "failed"
        assert check["paths"] == ["$.instance_groups[0].count"]
        assert re.search(rf"needs {INSTANCE_QUOTA + 2} more, \d+ free of {INSTANCE_QUOTA}", check["message"])
        assert check["shortfall"] == INSTANCE_QUOTA + 2 - check["available"]
        assert body["checks"][0]["status"] == "failed"  # failing checks come first
        assert checks_of(body)["host capacity"]["status"] == "passed"  # Placement read with the admin entry
        assert body["summary"]["create"] > 0
        assert body["summary"]["delete"] == 0

        # The CLI prints failing checks first, with the fix, and exits 1; --output json is the API's answer.
        args = ["plan", "preview", body["plan_name"], "--planner-url", setup.planner, "--project", body["project_id"]]
        result = runner.invoke(app, args, env={"COLUMNS": "240"})
        assert result.exit_code == 1, result.output
        assert "NOT feasible" in result.stdout
        failed_rows = [line for line in result.stdout.splitlines() if "FAILED" in line]
        assert "quota: instances" in failed_rows[0]
        assert "raise the" in result.stdout
        result = runner.invoke(app, [*args, "--output", "json"])
        assert json.loads(result.stdout)["checks"][0]["name"] == "quota: instances"

        # The stored preview stays current while nothing changes, and is refused once the quota moves.
        settings = PlannerSettings(
            compute_url=setup.urls["compute"],
            network_url=setup.urls["network"],
            storage_url=setup.urls["storage"],
            auth_strategy=AuthStrategy.NOAUTH,
        )

        async def ensure() -> dict[str, Any]:
            conn = await asyncpg.connect(setup.dsn, server_settings={"search_path": "planner"})
            try:
                return await ensure_preview_current(
                    conn,
                    uuid.UUID(body["preview_id"]),
                    uuid.UUID(plan_id),
                    1,
                    project_id=body["project_id"],
                    settings=settings,
                )
            finally:
                await conn.close()

        assert asyncio.run(ensure())["preview_id"] == body["preview_id"]
        setup.admin.set_compute_quotas(setup.project_id, instances=INSTANCE_QUOTA + 10)
        try:
            with pytest.raises(Conflict) as raised:
                asyncio.run(ensure())
        finally:
            setup.admin.set_compute_quotas(setup.project_id, instances=INSTANCE_QUOTA)
        message = str(raised.value)
        assert "quota instances" in message
        assert "re-run preview" in message

    def test_an_apply_from_a_failing_preview_is_refused_and_forced_through_it_rolls_back(self, setup: Setup) -> None:
        with setup.api() as api:
            plan_id = create(api, small_plan(f"force-{uuid.uuid4().hex[:6]}", count=INSTANCE_QUOTA + 1))
            body = preview(api, plan_id)
            assert body["ok"] is False
            start = {"action": "apply", "preview_id": body["preview_id"]}
            refused = api.post(f"/v1/plans/{plan_id}/runs", json=start)
            assert refused.status_code == 409, refused.text
            assert "quota: instances" in refused.json()["detail"]
            assert "force=true" in refused.json()["detail"]
            assert api.get(f"/v1/plans/{plan_id}/runs").json()["runs"] == [], "a refused apply started a run"

            forced = api.post(f"/v1/plans/{plan_id}/runs", json={**start, "force": True})
            assert forced.status_code == 202, forced.text
            run_id = forced.json()["id"]
            deadline = time.monotonic() + 300
            while (run := api.get(f"/v1/runs/{run_id}").json())["state"] in ("running", "rolling_back"):
                assert time.monotonic() < deadline, f"run still {run['state']}: {run['counts']}"
                time.sleep(1.0)
        assert run["preview_id"] == body["preview_id"]
        assert run["state"] == "rolled_back", failures(run)
        assert any("Quota exceeded for instances" in f for f in failures(run)), failures(run)
        left = list(setup.admin.compute.servers(all_projects=True, project_id=setup.project_id,
                                                tags=plan_tag(plan_id)))  # fmt: skip
        assert left == [], [s.name for s in left]
        nets = [n.name for n in setup.admin.network.networks(project_id=setup.project_id) if plan_id[:8] in n.name]
        assert nets == [], nets

    def test_a_missing_external_network_and_a_flavor_no_host_can_take_fail_their_checks(self, setup: Setup) -> None:
        admin = setup.admin
        flavor = admin.compute.create_flavor(
            name=f"huge-{uuid.uuid4().hex[:6]}", vcpus=1, ram=4_000_000, disk=1, is_public=False
        )
        try:
            admin.compute.flavor_add_tenant_access(flavor, setup.project_id)
            doc = small_plan(f"huge-{uuid.uuid4().hex[:6]}", flavor=flavor.name, count=1)
            doc["networks"][0]["router"] = {"name": "r", "external_network": "no-such-net"}
            with setup.api() as api:
                body = preview(api, create(api, doc))
        finally:
            admin.compute.delete_flavor(flavor, ignore_missing=True)
        checks = checks_of(body)
        assert body["ok"] is False
        ext = checks["external network 'no-such-net'"]
        assert ext["status"] == "failed"
        assert ext["paths"] == ["$.networks[0].router.external_network"]
        assert "public" in ext["fix"]
        capacity = checks["host capacity"]
        assert capacity["status"] == "failed"
        assert f"flavor {flavor.name!r}" in capacity["message"]
        assert "fits on no host" in capacity["message"]
        assert capacity["paths"] == ["$.instance_groups[0].flavor"]
        assert checks[f"flavor {flavor.name!r}"]["status"] == "passed"


class TestDiff:
    def test_after_an_apply_a_new_version_shows_create_change_delete_and_unchanged(self, setup: Setup) -> None:
        name = f"diff-{uuid.uuid4().hex[:6]}"
        with setup.api() as api:
            plan_id = create(api, small_plan(name))
            first = preview(api, plan_id)
            assert first["ok"] is True, [c for c in first["checks"] if c["status"] == "failed"]
            assert first["summary"] == {"create": len(first["diff"]), "change": 0, "delete": 0, "unchanged": 0}
            try:
                applied = run_to_end(api, plan_id, "apply", deadline=300)
                assert applied["state"] == "succeeded", failures(applied)
                same = preview(api, plan_id)
                assert same["summary"]["unchanged"] == len(same["diff"]), [
                    e for e in same["diff"] if e["action"] != "unchanged"
                ]
                v2 = small_plan(name, count=1)
                v2["security_groups"][0]["rules"][0]["ports"] = 8080
                v2["volumes"][0]["size_gb"] = 2
                v2["instance_groups"].append(
                    {"name": "app", "flavor": "m1.tiny", "image": "devcloud-tiny", "count": 1, "networks": ["net"]}
                )
                r = api.put(f"/v1/plans/{plan_id}", json=v2)
                assert r.status_code == 200, r.text
                body = preview(api, plan_id)
                assert body["version"] == 2
                diff = {e["key"]: e for e in body["diff"]}
                assert diff["server/web-1"]["action"] == "delete"
                assert diff["server/web-0"]["action"] == "unchanged"
                assert diff["server/app-0"]["action"] == "create"
                assert diff["security-group-rule/web/0"]["action"] == "change"
                assert diff["security-group-rule/web/0"]["changes"] == {"ports": {"old": "80", "new": "8080"}}
                assert diff["volume/data"]["changes"] == {"size_gb": {"old": 1, "new": 2}}
                for key in ("network/net", "subnet/net", "security-group/web"):
                    assert diff[key]["action"] == "unchanged", diff[key]
                assert body["summary"] == {"create": 1, "change": 2, "delete": 1, "unchanged": len(diff) - 4}
                # one server deleted, one created: no new instance is needed
                assert "needs 0 more" in checks_of(body)["quota: instances"]["message"]
                # An earlier version can still be previewed: against it, the live state is unchanged.
                assert preview(api, plan_id, version=1)["summary"]["unchanged"] == len(first["diff"])
            finally:
                destroyed = run_to_end(api, plan_id, "destroy", deadline=300)
            assert destroyed["state"] == "succeeded", failures(destroyed)
