"""Keystone identity, end to end against devcloud: the platform runs with ``DCOSTACK_AUTH_STRATEGY=keystone``;
callers send real Keystone tokens; a run acts in the caller's project through a trust to DCOSTACK's own
service user, which has no role in that project. Every check of the cloud reads OpenStack directly."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import openstack
import pytest
from keystoneauth1 import session
from keystoneauth1.identity import v3

from tests.e2e.test_apply import failures, run_to_end, tagged, wait_run
from tests.fixtures.openstack import Cleanup, CloudUnderTest
from tests.fixtures.platform import Platform, wait_for

pytestmark = pytest.mark.devcloud

PASSWORD = "identity-test-password"


@dataclass
class Project:
    """A Keystone project with a member and a reader, and their tokens."""

    id: str
    member_id: str
    member_name: str
    member_token: str
    auth_url: str
    reader_token: str | None = None

    def connect(self) -> Any:
        """openstacksdk as the project's member: what the checks read the cloud with."""
        return openstack.connect(
            auth_url=self.auth_url, username=self.member_name, password=PASSWORD, project_id=self.id,
            user_domain_name="Default", region_name="RegionOne",
        )  # fmt: skip


def token(auth_url: str, user: str, project_id: str) -> str:
    auth = v3.Password(
        auth_url=auth_url, username=user, password=PASSWORD, user_domain_name="Default", project_id=project_id
    )
    return str(session.Session(auth=auth).get_token())


@pytest.fixture
def projects(test_cloud: CloudUnderTest) -> Iterator[tuple[Project, Project, str]]:
    """Two fresh projects A and B (each with a member; A also with a reader); Keystone's URL."""
    admin = test_cloud.connect(admin=True)
    ident = admin.identity
    auth_url = admin.config.config["auth"]["auth_url"]
    suffix = uuid.uuid4().hex[:8]
    made: list[Any] = []
    roles = {r: ident.find_role(r) for r in ("member", "reader", "load-balancer_member")}
    out: list[Project] = []
    try:
        for name in ("a", "b"):
            project = ident.create_project(name=f"idt-{name}-{suffix}", domain_id="default")
            made.append(project)
            member = ident.create_user(name=f"idt-{name}-member-{suffix}", password=PASSWORD, domain_id="default")
            made.append(member)
            for role in ("member", "load-balancer_member"):
                ident.assign_project_role_to_user(project, member, roles[role])
            found = Project(project.id, member.id, member.name, token(auth_url, member.name, project.id), auth_url)
            if name == "a":
                reader = ident.create_user(name=f"idt-a-reader-{suffix}", password=PASSWORD, domain_id="default")
                made.append(reader)
                ident.assign_project_role_to_user(project, reader, roles["reader"])
                found.reader_token = token(auth_url, reader.name, project.id)
            out.append(found)
        yield out[0], out[1], auth_url
    finally:
        for thing in reversed(made):
            if thing.__class__.__name__ == "User":
                ident.delete_user(thing, ignore_missing=True)
            else:
                ident.delete_project(thing, ignore_missing=True)


@pytest.fixture
def keystone_platform(
    platform_factory: Callable[..., Platform], projects: tuple[Project, Project, str], test_cloud: CloudUnderTest
) -> Platform:
    auth_url = projects[2]
    return platform_factory(
        "planner",
        "compute",
        "network",
        "storage",
        env={
            "DCOSTACK_AUTH_STRATEGY": "keystone",
            "DCOSTACK_KEYSTONE_URL": auth_url,
            "DCOSTACK_SERVICE_CLOUD": f"{test_cloud.member}-dcostack",
            "DCOSTACK_CLOUD": test_cloud.member,
            "DCOSTACK_STEP_TIMEOUT_SECONDS": "300",
            "DCOSTACK_TIMEOUT_CHECK_SECONDS": "1",
        },
    )


PLAN = {
    "name": "identity",
    "networks": [{"name": "net", "cidr": "10.77.0.0/24"}],
    "security_groups": [{"name": "sg", "rules": [{"protocol": "tcp", "ports": 22, "remote_cidr": "0.0.0.0/0"}]}],
    "instance_groups": [
        {
            "name": "vm",
            "flavor": "m1.tiny",
            "image": "devcloud-tiny",
            "count": 1,
            "networks": ["net"],
            "security_groups": ["sg"],
        }  # fmt: skip
    ],
}


def client(platform: Platform, service: str, tok: str | None) -> httpx.Client:
    c = platform.http(service)
    c.timeout = httpx.Timeout(60)
    if tok is not None:
        c.headers["X-Auth-Token"] = tok
    return c


def test_project_b_cannot_reach_project_a_and_a_reader_cannot_change_anything(
    keystone_platform: Platform, projects: tuple[Project, Project, str], test_cloud: CloudUnderTest, cleanup: Cleanup
) -> None:
    a, b, _ = projects
    admin = test_cloud.connect(admin=True)
    with client(keystone_platform, "planner", a.member_token) as api:
        r = api.post("/v1/plans", json=PLAN)
        assert r.status_code == 201, r.text
        plan = r.json()
        plan_id = plan["id"]
        assert plan["project_id"] == a.id  # the token's project, not one the caller names
        assert plan["version"]["created_by"] == a.member_id
        preview = api.post(f"/v1/plans/{plan_id}/preview", json={})
        assert preview.status_code == 200, preview.text
        preview_id = preview.json()["preview_id"]
        r = api.post(f"/v1/plans/{plan_id}/runs", json={"action": "apply", "preview_id": preview_id})
        assert r.status_code == 202, r.text
        run_id = r.json()["id"]
        trust_id = asyncio_fetch(keystone_platform, "SELECT trust_id FROM planner.runs WHERE id = $1", run_id)
        assert trust_id, "the run records the trust it acts through"
        cleanup.add(f"plan {plan_id}", lambda: destroy(keystone_platform, a.member_token, plan_id))
        run = wait_run(api, run_id)
        assert run["state"] == "succeeded", failures(run)

    # The run acted in project A as A's member (impersonation), through the trust; DCOSTACK's service user
    # itself has no role in project A.
    in_a = a.connect()
    found = tagged(in_a, plan_id)
    (server,) = found["servers"]
    assert server.project_id == a.id
    assert server.user_id == a.member_id
    (network,) = found["networks"]
    assert network.project_id == a.id
    service_user = admin.identity.find_user("dcostack", domain_id="default")
    assert not list(admin.identity.role_assignments(user_id=service_user.id, scope_project_id=a.id))
    # When the run ended, the planner deleted its trust in Keystone.
    wait_for(
        lambda: asyncio_fetch(keystone_platform, "SELECT trust_id FROM planner.runs WHERE id = $1", run_id) is None,
        30,
        "the finished run's trust to be deleted",
    )
    with pytest.raises(openstack.exceptions.NotFoundException):
        admin.identity.get_trust(trust_id)

    # Project B: every endpoint answers as if A's plan, run and preview did not exist.
    with client(keystone_platform, "planner", b.member_token) as api:
        assert plan_id not in {p["id"] for p in api.get("/v1/plans").json()["plans"]}
        calls = [
            ("GET", f"/v1/plans/{plan_id}", None),
            ("PUT", f"/v1/plans/{plan_id}", PLAN),
            ("DELETE", f"/v1/plans/{plan_id}", None),
            ("GET", f"/v1/plans/{plan_id}/versions", None),
            ("GET", f"/v1/plans/{plan_id}/versions/1", None),
            ("POST", f"/v1/plans/{plan_id}/preview", {}),
            ("GET", f"/v1/previews/{preview_id}", None),
            ("POST", f"/v1/plans/{plan_id}/runs", {"action": "apply"}),
            ("POST", f"/v1/plans/{plan_id}/runs", {"action": "destroy"}),
            ("GET", f"/v1/plans/{plan_id}/runs", None),
            ("GET", f"/v1/runs/{run_id}", None),
            ("POST", f"/v1/runs/{run_id}/cancel", None),
            ("POST", f"/v1/runs/{run_id}/resume", {}),
        ]
        for method, path, body in calls:
            r = api.request(method, path, json=body)
            assert r.status_code == 404, f"project B: {method} {path} → {r.status_code} {r.text}"
        # B's own plan of the same name is B's, and lists only there
        r = api.post("/v1/plans", json=PLAN)
        assert r.status_code == 201, r.text
        assert r.json()["project_id"] == b.id
    # The domain services' read APIs act as the caller: B sees none of A's resources; A sees them.
    for service, path, key in (
        ("compute", f"/v1/compute/plan-resources?plan_id={plan_id}", "plan-resources"),
        ("network", f"/v1/network/plan-resources?plan_id={plan_id}", "plan-resources"),
        ("compute", "/v1/compute/servers", "servers"),
        ("network", "/v1/network/networks", "networks"),
    ):
        with client(keystone_platform, service, b.member_token) as c:
            r = c.get(path)
            assert r.status_code == 200, r.text
            assert plan_id[:8] not in str(r.json()[key]), f"project B sees A's resources at {service} {path}"
        with client(keystone_platform, service, a.member_token) as c:
            assert plan_id[:8] in str(c.get(path).json()[key]), f"project A does not see its own at {service} {path}"

    # A reader of project A reads, previews, but changes nothing.
    assert a.reader_token is not None
    with client(keystone_platform, "planner", a.reader_token) as api:
        assert api.get(f"/v1/plans/{plan_id}").status_code == 200
        assert api.get(f"/v1/runs/{run_id}").json()["state"] == "succeeded"
        r = api.post(f"/v1/plans/{plan_id}/preview", json={})
        assert r.status_code == 200, r.text
        for method, path, body in [
            ("POST", "/v1/plans", {**PLAN, "name": "by-reader"}),
            ("PUT", f"/v1/plans/{plan_id}", PLAN),
            ("DELETE", f"/v1/plans/{plan_id}", None),
            ("POST", f"/v1/plans/{plan_id}/runs", {"action": "apply"}),
            ("POST", f"/v1/plans/{plan_id}/runs", {"action": "destroy"}),
            ("POST", f"/v1/runs/{run_id}/cancel", None),
            ("POST", f"/v1/runs/{run_id}/resume", {}),
        ]:
            r = api.request(method, path, json=body)
            assert r.status_code == 403, f"reader: {method} {path} → {r.status_code} {r.text}"
            assert "reader" in r.json()["detail"]

    # No token, or one Keystone does not accept: 401 everywhere, saying how to get one.
    for tok in (None, "not-a-token"):
        for service, path in (("planner", "/v1/plans"), ("planner", f"/v1/runs/{run_id}"),
                              ("compute", "/v1/compute/servers"), ("network", "/v1/network/networks"),
                              ("storage", "/v1/storage/volumes")):  # fmt: skip
            with client(keystone_platform, service, tok) as c:
                r = c.get(path)
                assert r.status_code == 401, f"{tok!r}: {service} {path} → {r.status_code}"
                assert "token" in r.json()["detail"]
                assert r.headers["WWW-Authenticate"].startswith("Keystone uri=")

    # A destroys its plan through a new trust; nothing of it stays.
    destroyed = destroy(keystone_platform, a.member_token, plan_id)
    assert destroyed["state"] == "succeeded", failures(destroyed)
    left = {kind: items for kind, items in tagged(in_a, plan_id).items() if items}
    assert not left, left


def destroy(platform: Platform, tok: str, plan_id: str) -> dict[str, Any]:
    with client(platform, "planner", tok) as api:
        return run_to_end(api, plan_id, "destroy", 300)


def asyncio_fetch(platform: Platform, query: str, *args: Any) -> Any:
    import asyncio

    async def fetch() -> Any:
        conn = await asyncpg.connect(platform.dsn)
        try:
            return await conn.fetchval(query, *args)
        finally:
            await conn.close()

    return asyncio.run(fetch())


def test_the_cli_logs_in_from_clouds_yaml(
    keystone_platform: Platform, test_cloud: CloudUnderTest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from services.cli import app

    monkeypatch.delenv("OS_CLOUD", raising=False)
    runner = CliRunner()
    url = keystone_platform["planner"].base_url
    document = f"{{'name': 'cli-{uuid.uuid4().hex[:6]}', 'networks': [{{'name': 'n', 'cidr': '10.78.0.0/24'}}]}}"
    without = runner.invoke(app, ["plan", "list", "--planner-url", url])
    assert without.exit_code == 1
    assert "needs a Keystone token: pass --os-cloud NAME or set OS_CLOUD" in without.output
    wrong = runner.invoke(app, ["--os-cloud", "no-such-cloud", "plan", "list", "--planner-url", url])
    assert wrong.exit_code == 1
    assert "no cloud named 'no-such-cloud' in clouds.yaml" in wrong.output
    (tmp_path / "plan.yaml").write_text(document)
    args = ["plan", "create", str(tmp_path / "plan.yaml"), "--planner-url", url, "-o", "json"]
    created = runner.invoke(app, ["--os-cloud", test_cloud.member, *args])
    assert created.exit_code == 0, created.output
    body = json.loads(created.output)
    demo = test_cloud.connect()
    assert body["project_id"] == demo.current_project_id  # the clouds.yaml entry's project
    monkeypatch.setenv("OS_CLOUD", test_cloud.member)
    listed = runner.invoke(app, ["plan", "list", "--planner-url", url, "-o", "json"])
    assert listed.exit_code == 0, listed.output
    assert body["id"] in listed.output
