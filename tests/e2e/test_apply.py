"""Plans run on real OpenStack: the planner, compute, network and storage services as processes,
talking over Kafka, acting in devcloud. Every check reads the cloud directly through openstacksdk."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from shared.executor.marks import plan_tag
from tests.fixtures.openstack import CloudUnderTest
from tests.fixtures.platform import Platform

pytestmark = pytest.mark.devcloud

EXAMPLE = Path(__file__).parents[2] / "examples" / "two-tier.yaml"
EXECUTORS = ("planner", "compute", "network", "storage")


def start_platform(factory: Callable[..., Platform], cloud: CloudUnderTest) -> Platform:
    return factory(*EXECUTORS, env={"DCOSTACK_CLOUD": cloud.member, "DCOSTACK_STEP_TIMEOUT_SECONDS": "300"})


def create_plan(api: httpx.Client, document: dict[str, Any]) -> str:
    r = api.post("/v1/plans", json=document)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def run_to_end(api: httpx.Client, plan_id: str, action: str, deadline: float = 600) -> dict[str, Any]:
    r = api.post(f"/v1/plans/{plan_id}/runs", json={"action": action})
    assert r.status_code == 202, r.text
    return wait_run(api, r.json()["id"], deadline)


def wait_run(api: httpx.Client, run_id: str, deadline: float = 600) -> dict[str, Any]:
    """Poll a run until it ends; fail with its step counts if it does not within ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        run: dict[str, Any] = api.get(f"/v1/runs/{run_id}").json()
        if run["state"] not in ("running", "cancelling", "rolling_back"):
            return run
        time.sleep(1.0)
    pytest.fail(f"{run['action']} run {run_id} still running after {deadline:.0f}s: {run['counts']}")


def failures(run: dict[str, Any]) -> list[str]:
    return [f"{s['key']}: {s['error']}" for s in run["steps"] if s["error"]]  # rolled back ones keep theirs


def tagged(conn: Any, plan_id: str) -> dict[str, list[Any]]:
    """Everything in the cloud that carries the plan's tag or metadata."""
    tag = plan_tag(plan_id)
    return {
        "servers": list(conn.compute.servers(tags=tag)),
        "networks": list(conn.network.networks(tags=tag)),
        "subnets": list(conn.network.subnets(tags=tag)),
        "routers": list(conn.network.routers(tags=tag)),
        "security groups": list(conn.network.security_groups(tags=tag)),
        "floating ips": list(conn.network.ips(tags=tag)),
        "load balancers": [lb for lb in conn.load_balancer.load_balancers() if tag in (lb.tags or [])],
        "volumes": [
            v for v in conn.block_storage.volumes(details=True) if (v.metadata or {}).get("dcostack_plan") == plan_id
        ],
    }


def test_example_plan_is_built_in_openstack_and_destroyed_without_a_trace(
    platform_factory: Callable[..., Platform], test_cloud: CloudUnderTest
) -> None:
    platform = start_platform(platform_factory, test_cloud)
    document = yaml.safe_load(EXAMPLE.read_text())
    document["name"] = f"two-tier-{uuid.uuid4().hex[:6]}"
    conn = test_cloud.connect()
    with platform.http("planner") as api:
        api.headers["X-Project-Id"] = f"p{uuid.uuid4().hex[:8]}"
        plan_id = create_plan(api, document)
        try:
            check_example_built(conn, plan_id, run_to_end(api, plan_id, "apply"))
            # The domain services' read APIs show what the plan built.
            ours = {s.name for s in conn.compute.servers(tags=plan_tag(plan_id))}
            with platform.http("compute") as compute:
                listed = {s["name"] for s in compute.get("/v1/compute/servers").json()["servers"]}
            assert ours <= listed
            with platform.http("network") as network:
                lbs = network.get("/v1/network/load-balancers").json()["load-balancers"]
            assert any(lb["name"].endswith("web-lb") for lb in lbs)
        finally:
            destroyed = run_to_end(api, plan_id, "destroy")
        assert destroyed["state"] == "succeeded", failures(destroyed)
    left = {kind: [getattr(x, "name", None) or x.id for x in items] for kind, items in tagged(conn, plan_id).items()}
    assert not any(left.values()), left


def check_example_built(conn: Any, plan_id: str, run: dict[str, Any]) -> None:
    """Every resource of examples/two-tier.yaml exists in OpenStack with the right properties and marks."""
    assert run["state"] == "succeeded", failures(run)
    assert {s["state"] for s in run["steps"]} == {"succeeded"}

    found = tagged(conn, plan_id)
    servers = {s.name.rsplit("-", 2)[-2] + "-" + s.name.rsplit("-", 1)[-1]: s for s in found["servers"]}
    assert sorted(servers) == ["app-0", "app-1", "web-0", "web-1"]
    assert {s.status for s in found["servers"]} == {"ACTIVE"}
    (net,) = found["networks"]
    (subnet,) = found["subnets"]
    assert subnet.cidr == "10.42.0.0/24"
    assert subnet.network_id == net.id
    (router,) = found["routers"]
    public = conn.network.find_network("public")
    assert router.external_gateway_info["network_id"] == public.id
    assert any(p.device_owner == "network:router_interface" for p in conn.network.ports(device_id=router.id))
    groups = {g.name.rsplit("-", 1)[-1]: g for g in found["security groups"]}
    assert set(groups) == {"web", "app"}
    web_ports = {r.port_range_min for r in conn.network.security_group_rules(security_group_id=groups["web"].id)}
    assert 80 in web_ports
    app_rules = list(conn.network.security_group_rules(security_group_id=groups["app"].id))
    assert any(r.port_range_min == 8080 and r.remote_group_id == groups["web"].id for r in app_rules)
    for name, server in servers.items():
        (port,) = conn.network.ports(device_id=server.id)
        assert port.network_id == net.id
        expected = groups[name.split("-")[0]].id
        assert expected in port.security_group_ids
    fips = found["floating ips"]
    assert sorted(f.port_id for f in fips) == sorted(
        next(iter(conn.network.ports(device_id=servers[n].id))).id for n in ("web-0", "web-1")
    )
    volumes = found["volumes"]
    assert len(volumes) == 2
    assert {v.status for v in volumes} == {"in-use"}
    assert {v.attachments[0]["server_id"] for v in volumes} == {servers["app-0"].id, servers["app-1"].id}
    (lb,) = found["load balancers"]
    assert lb.provisioning_status == "ACTIVE"
    (listener,) = [x for x in conn.load_balancer.listeners() if lb.id in str(x.load_balancers)]
    assert (listener.protocol, listener.protocol_port) == ("HTTP", 80)
    (pool,) = [p for p in conn.load_balancer.pools() if lb.id in str(p.loadbalancers)]
    members = list(conn.load_balancer.members(pool))
    web_ips = {
        next(iter(conn.network.ports(device_id=servers[n].id))).fixed_ips[0]["ip_address"] for n in ("web-0", "web-1")
    }
    assert {m.address for m in members} == web_ips
    assert pool.health_monitor_id


def test_a_server_nova_cannot_place_fails_its_step_with_novas_message(
    platform_factory: Callable[..., Platform], test_cloud: CloudUnderTest
) -> None:
    admin = test_cloud.connect(admin=True)
    flavor_name = f"huge-{uuid.uuid4().hex[:6]}"
    # More memory than any fake host has (800,000 MB), within the demo project's quota.
    flavor = admin.compute.create_flavor(name=flavor_name, vcpus=1, ram=1_000_000, disk=1, is_public=True)
    platform = start_platform(platform_factory, test_cloud)
    document = {
        "name": f"too-big-{uuid.uuid4().hex[:6]}",
        "on_failure": "hold",  # keep the failed step to read (rollback: tests/e2e/test_lifecycle.py)
        "networks": [{"name": "net", "cidr": "10.77.0.0/24"}],
        "instance_groups": [
            {"name": "big", "flavor": flavor_name, "image": "devcloud-tiny", "count": 1, "networks": ["net"]}
        ],
    }
    try:
        with platform.http("planner") as api:
            api.headers["X-Project-Id"] = f"p{uuid.uuid4().hex[:8]}"
            plan_id = create_plan(api, document)
            run = run_to_end(api, plan_id, "apply")
            assert run["state"] == "failed"
            (step,) = [s for s in run["steps"] if s["state"] == "failed"]
            assert step["key"] == "server/big-0"
            assert step["path"] == "$.instance_groups[0]"
            assert "No valid host was found" in step["error"]["message"]
            assert not [s for s in run["steps"] if s["state"] in ("pending", "dispatched", "running")]
            destroyed = run_to_end(api, plan_id, "destroy")
            assert destroyed["state"] == "succeeded", failures(destroyed)
        conn = test_cloud.connect()
        left = {k: v for k, v in tagged(conn, plan_id).items() if v}
        assert not left, left
    finally:
        admin.compute.delete_flavor(flavor)


def test_kill_9_of_compute_then_planner_mid_apply_still_gives_exactly_20_servers(
    platform_factory: Callable[..., Platform], test_cloud: CloudUnderTest
) -> None:
    platform = factory_platform = start_platform(platform_factory, test_cloud)
    document = {
        "name": f"twenty-{uuid.uuid4().hex[:6]}",
        "networks": [{"name": "net", "cidr": "10.88.0.0/24"}],
        "instance_groups": [
            {"name": "w", "flavor": "m1.tiny", "image": "devcloud-tiny", "count": 20, "networks": ["net"]}
        ],
        "rollout": {"max_parallel": 6, "batch_size": 20},
    }
    conn = test_cloud.connect()
    with platform.http("planner") as api:
        api.headers["X-Project-Id"] = f"p{uuid.uuid4().hex[:8]}"
        plan_id = create_plan(api, document)
        r = api.post(f"/v1/plans/{plan_id}/runs", json={"action": "apply"})
        run_id = r.json()["id"]

        def servers_seen() -> int:
            return len(list(conn.compute.servers(tags=plan_tag(plan_id))))

        _wait_until(lambda: servers_seen() >= 3, "the first servers to be created")
        factory_platform["compute"].kill9()
        time.sleep(2)
        factory_platform["compute"].start()
        factory_platform["compute"].wait_ready()
        _wait_until(lambda: servers_seen() >= 10, "half of the servers")
        factory_platform["planner"].kill9()
        time.sleep(2)
        factory_platform["planner"].start()
        factory_platform["planner"].wait_ready()
        end = time.monotonic() + 600
        run: dict[str, Any] = {}
        while time.monotonic() < end:
            run = api.get(f"/v1/runs/{run_id}").json()
            if run["state"] != "running":
                break
            time.sleep(1)
        assert run["state"] == "succeeded", failures(run)
        servers = list(conn.compute.servers(tags=plan_tag(plan_id)))
        names = sorted(s.name for s in servers)
        assert len(servers) == 20, names
        assert len(set(names)) == 20
        assert {s.status for s in servers} == {"ACTIVE"}
        destroyed = run_to_end(api, plan_id, "destroy")
        assert destroyed["state"] == "succeeded", failures(destroyed)
    assert not list(conn.compute.servers(tags=plan_tag(plan_id)))


def _wait_until(check: Callable[[], bool], what: str, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.5)
