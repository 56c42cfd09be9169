"""A plan's lifecycle in real OpenStack (devcloud): scale by diff, cancel and resume, hold and resume,
rollback. The planner, compute, network and storage run as processes over Kafka; every check reads the
cloud itself through openstacksdk, by the plan's tag."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from services.cli.infra import drop_database, ensure_database, free_port
from services.cli.processes import ServiceProcess
from shared.executor.marks import plan_tag
from tests.e2e.test_apply import tagged
from tests.fixtures.openstack import Cleanup, CloudUnderTest
from tests.fixtures.platform import planner_env, service_env, wait_for

pytestmark = pytest.mark.devcloud

EXECUTORS = ("planner", "compute", "network", "storage")
ACTIVE = ("running", "cancelling", "rolling_back")


@pytest.fixture(scope="module")
def planner_url(
    pg_server: str, kafka_bootstrap: str, test_cloud: CloudUnderTest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The four services that execute plans, shared by this module's tests (each keeps to its own project)."""
    database = f"dcostack_life_{uuid.uuid4().hex[:10]}"
    dsn = asyncio.run(ensure_database(pg_server, database))
    env = {
        **service_env(dsn, kafka_bootstrap, f"t{uuid.uuid4().hex[:8]}."),
        "DCOSTACK_CLOUD": test_cloud.member,
        "DCOSTACK_STEP_TIMEOUT_SECONDS": "300",
    }
    logs = tmp_path_factory.mktemp("lifecycle")
    ports = {name: free_port() for name in EXECUTORS}
    services = [
        ServiceProcess(name, ports[name], {**planner_env(ports), **env} if name == "planner" else env,
                       logs / f"{name}.log")
        for name in EXECUTORS
    ]  # fmt: skip
    try:
        for svc in services:
            svc.start()
        for svc in services:
            svc.wait_ready()
        yield services[0].base_url
    finally:
        for svc in services:
            svc.stop()
        asyncio.run(drop_database(pg_server, database))


@pytest.fixture
def api(planner_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=planner_url, timeout=30, headers={"X-Project-Id": f"p{uuid.uuid4().hex[:8]}"}) as c:
        yield c


@pytest.fixture
def conn(test_cloud: CloudUnderTest) -> Any:
    return test_cloud.connect()


@pytest.fixture
def huge_flavor(test_cloud: CloudUnderTest, cleanup: Cleanup) -> str:
    """A flavor with more memory than any fake host has (800,000 MB): Nova finds no valid host."""
    admin = test_cloud.connect(admin=True)
    name = f"huge-{uuid.uuid4().hex[:6]}"
    flavor = admin.compute.create_flavor(name=name, vcpus=1, ram=1_000_000, disk=1, is_public=True)
    cleanup.add(f"flavor {name}", lambda: admin.compute.delete_flavor(flavor))
    return name


def create_plan(api: httpx.Client, document: dict[str, Any], cleanup: Cleanup, conn: Any) -> str:
    r = api.post("/v1/plans", json=document)
    assert r.status_code == 201, r.text
    plan_id = str(r.json()["id"])
    cleanup.add(f"what plan {document['name']} built", lambda: destroy_all(api, plan_id, conn))
    return plan_id


def update_plan(api: httpx.Client, plan_id: str, document: dict[str, Any]) -> int:
    r = api.put(f"/v1/plans/{plan_id}", json=document)
    assert r.status_code == 200, r.text
    return int(r.json()["version"]["version"])


def start_run(api: httpx.Client, plan_id: str, action: str = "apply") -> str:
    r = api.post(f"/v1/plans/{plan_id}/runs", json={"action": action})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def wait_end(api: httpx.Client, run_id: str, deadline: float = 300) -> dict[str, Any]:
    end = time.monotonic() + deadline
    while True:
        run: dict[str, Any] = api.get(f"/v1/runs/{run_id}").json()
        if run["state"] not in ACTIVE:
            return run
        if time.monotonic() > end:
            pytest.fail(f"run {run_id} still {run['state']} after {deadline:.0f}s: {run['counts']}")
        time.sleep(0.5)


def failures(run: dict[str, Any]) -> str:
    bad = [f"{s['key']}: {s['error']}" for s in run["steps"] if s["state"] in ("failed", "error")]
    return f"{run['message']} {bad}"


def destroy_all(api: httpx.Client, plan_id: str, conn: Any) -> None:
    """Destroy what the plan built (its latest version and everything the ledger holds); check nothing is left."""
    for run in api.get(f"/v1/plans/{plan_id}/runs").json()["runs"]:
        if run["state"] in ACTIVE:
            api.post(f"/v1/runs/{run['id']}/cancel")
            wait_end(api, run["id"])
    run = wait_end(api, start_run(api, plan_id, "destroy"))
    assert run["state"] == "succeeded", failures(run)

    # Nova may list a server for a few seconds after its delete completed (seen with 30 at once).
    end = time.monotonic() + 120
    while left := {k: [getattr(x, "name", None) or x.id for x in v] for k, v in tagged(conn, plan_id).items() if v}:
        assert time.monotonic() < end, f"left in the cloud after the destroy run: {left}"
        time.sleep(2)


def servers(conn: Any, plan_id: str) -> dict[str, Any]:
    """The plan's servers by their plan name (web-0, ...)."""
    found = list(conn.compute.servers(tags=plan_tag(plan_id)))
    by_name = {s.name.split("-", 2)[2]: s for s in found}
    assert len(by_name) == len(found), [s.name for s in found]
    return by_name


def web(count: int, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "networks": [{"name": "net", "cidr": "10.71.0.0/24"}],
        "instance_groups": [
            {"name": "web", "flavor": "m1.tiny", "image": "devcloud-tiny", "count": count, "networks": ["net"]}
        ],
        "load_balancers": [
            {
                "name": "lb",
                "network": "net",
                "listener": {"protocol": "HTTP", "port": 80},
                "pool": {"members": {"group": "web", "port": 80}},
            }
        ],
        "rollout": {"max_parallel": 10},
    }


def check_web(conn: Any, plan_id: str, count: int) -> None:
    """Exactly web-0..web-{count-1}, each an ACTIVE server and a member of the load balancer's pool."""
    found = servers(conn, plan_id)
    assert sorted(found) == sorted(f"web-{i}" for i in range(count))
    assert {s.status for s in found.values()} == {"ACTIVE"}
    addresses = {next(iter(conn.network.ports(device_id=s.id))).fixed_ips[0]["ip_address"] for s in found.values()}
    (lb,) = tagged(conn, plan_id)["load balancers"]
    (pool,) = [p for p in conn.load_balancer.pools() if lb.id in str(p.loadbalancers)]
    assert {m.address for m in conn.load_balancer.members(pool)} == addresses


class TestScale:
    def test_web_2_to_5_to_1_leaves_exactly_the_right_servers_and_lb_members(
        self, api: httpx.Client, conn: Any, cleanup: Cleanup
    ) -> None:
        name = f"scale-{uuid.uuid4().hex[:6]}"
        plan_id = create_plan(api, web(2, name), cleanup, conn)
        run = wait_end(api, start_run(api, plan_id))
        assert run["state"] == "succeeded", failures(run)
        check_web(conn, plan_id, 2)
        kept = servers(conn, plan_id)["web-0"].id

        update_plan(api, plan_id, web(5, name))
        run = wait_end(api, start_run(api, plan_id))
        assert run["state"] == "succeeded", failures(run)
        assert not [s for s in run["steps"] if s["action"] == "destroy"]
        check_web(conn, plan_id, 5)
        # Only the difference was dispatched: what the first run built is live and unchanged, so kept.
        unchanged = {s["key"] for s in run["steps"] if s["message"].startswith("unchanged")}
        assert {"server/web-0", "server/web-1", "network/net"} <= unchanged
        assert not unchanged & {f"server/web-{i}" for i in (2, 3, 4)}

        update_plan(api, plan_id, web(1, name))
        run = wait_end(api, start_run(api, plan_id))
        assert run["state"] == "succeeded", failures(run)
        removed = [s["key"] for s in run["steps"] if s["action"] == "destroy"]
        # Members leave the pool before their servers go, newest first (listed in dispatch priority).
        assert removed == [
            *(f"member/lb/web-{i}" for i in (4, 3, 2, 1)),
            *(f"server/web-{i}" for i in (4, 3, 2, 1)),
        ]
        check_web(conn, plan_id, 1)
        assert servers(conn, plan_id)["web-0"].id == kept, "the server that stays was recreated"


def fleet(count: int, name: str, *, big: str | None = None, on_failure: str = "rollback") -> dict[str, Any]:
    """``count`` servers w-N, and with ``big`` one more server of that flavor."""
    groups: list[dict[str, Any]] = [
        {"name": "w", "flavor": "m1.tiny", "image": "devcloud-tiny", "count": count, "networks": ["net"]}
    ]
    if big:
        groups.append({"name": "big", "flavor": big, "image": "devcloud-tiny", "count": 1, "networks": ["net"]})
    return {
        "name": name,
        "on_failure": on_failure,
        "networks": [{"name": "net", "cidr": "10.72.0.0/24"}],
        "instance_groups": groups,
        "rollout": {"max_parallel": 10, "batch_size": 30},
    }


class TestCancelAndResume:
    def test_cancel_mid_way_through_30_servers_then_resume_gives_exactly_30(
        self, api: httpx.Client, conn: Any, cleanup: Cleanup
    ) -> None:
        plan_id = create_plan(api, fleet(30, f"thirty-{uuid.uuid4().hex[:6]}"), cleanup, conn)
        run_id = start_run(api, plan_id)
        wait_for(lambda: len(servers(conn, plan_id)) >= 5, 120, "the first servers")
        r = api.post(f"/v1/runs/{run_id}/cancel")
        assert r.status_code == 202, r.text
        assert r.json()["state"] in ("cancelling", "cancelled")
        run = wait_end(api, run_id)
        assert run["state"] == "cancelled", failures(run)
        done = [s["key"] for s in run["steps"] if s["state"] == "succeeded" and s["kind"] == "server"]
        assert 5 <= len(done) < 30
        time.sleep(3)  # nothing was dispatched after the cancel: the cloud has what succeeded, no more
        assert sorted(servers(conn, plan_id)) == sorted(k.removeprefix("server/") for k in done)
        assert all(s["message"] == "cancelled before it started" for s in run["steps"] if s["state"] == "cancelled")

        r = api.post(f"/v1/runs/{run_id}/resume")
        assert r.status_code == 202, r.text
        run = wait_end(api, run_id)
        assert run["state"] == "succeeded", failures(run)
        found = servers(conn, plan_id)
        assert sorted(found) == sorted(f"w-{i}" for i in range(30))
        assert {s.status for s in found.values()} == {"ACTIVE"}


class TestOnFailure:
    def test_hold_keeps_what_was_built_and_resume_with_the_fixed_flavor_recreates_nothing(
        self, api: httpx.Client, conn: Any, cleanup: Cleanup, huge_flavor: str
    ) -> None:
        name = f"hold-{uuid.uuid4().hex[:6]}"
        plan_id = create_plan(api, fleet(1, name, big=huge_flavor, on_failure="hold"), cleanup, conn)
        run_id = start_run(api, plan_id)
        run = wait_end(api, run_id)
        assert run["state"] == "failed"
        assert run["message"].startswith("held: 1 step(s) failed: server/big-0")
        assert "No valid host was found" in {s["key"]: s for s in run["steps"]}["server/big-0"]["error"]["message"]
        before = {n: s.id for n, s in servers(conn, plan_id).items() if n.startswith("w-")}
        assert sorted(before) == ["w-0"]
        (network,) = tagged(conn, plan_id)["networks"]

        fixed = update_plan(api, plan_id, fleet(1, name, big="m1.tiny", on_failure="hold"))
        r = api.post(f"/v1/runs/{run_id}/resume", json={"version": fixed})
        assert r.status_code == 202, r.text
        run = wait_end(api, run_id)
        assert run["state"] == "succeeded", failures(run)
        assert run["resumed"] == 1
        after = servers(conn, plan_id)
        assert sorted(after) == ["big-0", "w-0"]
        assert {n: after[n].id for n in before} == before, "a completed server was recreated"
        assert after["big-0"].status == "ACTIVE"
        assert [n.id for n in tagged(conn, plan_id)["networks"]] == [network.id]

    def test_rollback_removes_everything_this_run_created_and_keeps_what_was_there(
        self, api: httpx.Client, conn: Any, cleanup: Cleanup, huge_flavor: str
    ) -> None:
        name = f"undo-{uuid.uuid4().hex[:6]}"
        plan_id = create_plan(api, fleet(0, name), cleanup, conn)
        first = wait_end(api, start_run(api, plan_id))
        assert first["state"] == "succeeded", failures(first)
        (network,) = tagged(conn, plan_id)["networks"]

        update_plan(api, plan_id, fleet(1, name, big=huge_flavor))
        run = wait_end(api, start_run(api, plan_id))
        assert run["state"] == "rolled_back", failures(run)
        assert "server/big-0" in run["message"]
        steps = {s["key"]: s for s in run["steps"]}
        assert {k for k, s in steps.items() if s["rollback"]} == {"server/w-0", "server/big-0"}
        assert {s["state"] for s in steps.values() if s["rollback"]} == {"rolled_back"}
        assert "No valid host was found" in steps["server/big-0"]["error"]["message"]
        # Nothing of this run is left (not even big-0 in ERROR); the network that was there is untouched.
        assert servers(conn, plan_id) == {}
        assert [n.id for n in tagged(conn, plan_id)["networks"]] == [network.id]
