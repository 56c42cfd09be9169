"""Plan execution against the physical limit: a plan of N servers (plus network, subnet, router with
gateway, security group) applied by DCOSTACK until the run succeeds, next to the same N servers created
directly with openstacksdk at the same concurrency, and the same resources as one Heat stack (Heat from
PyPI, started beside devcloud with ``dcostack devcloud up --heat``), on the same devcloud in the same
run; and the ratios. Then scale-out: the plan at FROM servers changed to TO and applied again (only the
difference is created), next to TO - FROM servers created directly.

    uv run python -m bench.plans [--counts 50,100] [--scale 50,100]

The services run with Keystone identity as in production: the benchmark logs in as devcloud's demo member
and every run acts through a trust to devcloud's `dcostack` service user.

Starts what it needs: devcloud (if not up), a Tansu broker, a database on the local PostgreSQL, and the
planner, compute, network and storage services as processes (as `dcostack up` runs them).
"""

from __future__ import annotations

import argparse
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openstack

from bench.platform import bench_platform
from devcloud.settings import DevcloudSettings

SERVICES = ("planner", "compute", "network", "storage")


def plan_document(name: str, count: int) -> dict[str, Any]:
    return {
        "name": name,
        "networks": [{"name": "net", "cidr": "10.99.0.0/20", "router": {"name": "r", "external_network": "public"}}],
        "security_groups": [{"name": "sg", "rules": [{"protocol": "tcp", "ports": 22, "remote_cidr": "0.0.0.0/0"}]}],
        "instance_groups": [
            {"name": "s", "flavor": "m1.tiny", "image": "devcloud-tiny", "count": count, "networks": ["net"],
             "security_groups": ["sg"]}
        ],
        "rollout": {"max_parallel": count, "batch_size": count},
    }  # fmt: skip


def run_plan(api: httpx.Client, plan_id: str, action: str) -> tuple[float, dict[str, Any]]:
    started = time.monotonic()
    run = api.post(f"/v1/plans/{plan_id}/runs", json={"action": action}).json()
    while run["state"] == "running":
        time.sleep(0.25)
        run = api.get(f"/v1/runs/{run['id']}").json()
    return time.monotonic() - started, run


def direct(cloud: str, count: int) -> float:
    """N servers on a fresh network, created concurrently (one connection per thread), all ACTIVE."""
    conn: Any = openstack.connect(cloud=cloud)
    net = conn.network.create_network(name=f"bench-direct-{uuid.uuid4().hex[:6]}")
    conn.network.create_subnet(network_id=net.id, ip_version=4, cidr="10.98.0.0/20")
    flavor = conn.compute.find_flavor("m1.tiny").id
    image = conn.image.find_image("devcloud-tiny").id

    def one(i: int) -> Any:
        c: Any = openstack.connect(cloud=cloud)
        s = c.compute.create_server(
            name=f"{net.name}-{i}", flavor_id=flavor, image_id=image, networks=[{"uuid": net.id}]
        )
        for _ in range(5):  # an overloaded API may drop a poll; a real client polls again
            try:
                # polled every second, as the compute service's adapter polls
                return c.compute.wait_for_server(s, status="ACTIVE", failures=["ERROR"], interval=1.0, wait=900)
            except openstack.exceptions.SDKException as exc:
                if "ERROR" in str(exc):
                    raise
                time.sleep(1.0)
        raise RuntimeError(f"server {s.id} not ACTIVE after 5 attempts to poll it")

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=count) as pool:
        servers = list(pool.map(one, range(count)))
    elapsed = time.monotonic() - started
    for s in servers:
        conn.compute.delete_server(s)
    for s in servers:
        conn.compute.wait_for_delete(s, interval=0.5, wait=900)
    for port in conn.network.ports(network_id=net.id):
        conn.network.delete_port(port)
    conn.network.delete_network(net)
    return elapsed


def heat_template(count: int) -> dict[str, Any]:
    """The plan's resources as one Heat stack: network, subnet, router with gateway, security group, N servers."""
    resources: dict[str, Any] = {
        "net": {"type": "OS::Neutron::Net", "properties": {"name": "bench-heat"}},
        "subnet": {"type": "OS::Neutron::Subnet",
                   "properties": {"network": {"get_resource": "net"}, "cidr": "10.97.0.0/20"}},
        "router": {"type": "OS::Neutron::Router", "properties": {"external_gateway_info": {"network": "public"}}},
        "interface": {"type": "OS::Neutron::RouterInterface",
                      "properties": {"router": {"get_resource": "router"}, "subnet": {"get_resource": "subnet"}}},
        "sg": {"type": "OS::Neutron::SecurityGroup",
               "properties": {"rules": [{"protocol": "tcp", "port_range_min": 22, "port_range_max": 22,
                                         "remote_ip_prefix": "0.0.0.0/0"}]}},
    }  # fmt: skip
    for i in range(count):
        resources[f"s{i}"] = {
            "type": "OS::Nova::Server",
            "depends_on": ["interface"],  # as the plan orders them: a server boots once its router is wired
            "properties": {
                "flavor": "m1.tiny", "image": "devcloud-tiny", "user_data_format": "RAW",
                "networks": [{"network": {"get_resource": "net"}}], "security_groups": [{"get_resource": "sg"}],
            },
        }  # fmt: skip
    return {"heat_template_version": "2018-08-31", "resources": resources}


def heat(cloud: str, count: int) -> tuple[float, float]:
    """Create the stack until CREATE_COMPLETE, then delete it until gone: (create, delete) seconds."""
    conn: Any = openstack.connect(cloud=cloud)
    started = time.monotonic()
    stack = conn.orchestration.create_stack(
        name=f"bench-heat-{uuid.uuid4().hex[:6]}", template=heat_template(count), timeout_mins=30
    )
    stack = conn.orchestration.wait_for_status(
        stack, status="CREATE_COMPLETE", failures=["CREATE_FAILED"], interval=1.0, wait=1800
    )
    created = time.monotonic() - started
    started = time.monotonic()
    conn.orchestration.delete_stack(stack)
    conn.orchestration.wait_for_delete(stack, interval=1.0, wait=1800)
    return created, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="50,100")
    parser.add_argument("--scale", default="50,100", help="FROM,TO for the scale-out row; empty to skip")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",") if c]
    scale = [int(c) for c in args.scale.split(",") if c]
    cloud = DevcloudSettings().cloud_name
    rows: list[tuple[str, str]] = []

    def row(label: str, value: str) -> None:
        rows.append((label, value))
        print(f"{label:<62}  {value}", flush=True)  # noqa: T201

    with bench_platform(concurrency=max(counts + scale), heat=True) as api:
        # Warm-up, not measured: freshly started services join their consumer groups and log in to
        # Keystone on the first commands (about 5 s), as the direct and Heat columns' clients did before.
        warm = api.post("/v1/plans", json=plan_document(f"bench-warm-{uuid.uuid4().hex[:6]}", 1)).json()["id"]
        run_plan(api, warm, "apply")
        run_plan(api, warm, "destroy")
        for count in counts:
            name = f"bench-{count}-{uuid.uuid4().hex[:6]}"
            plan_id = api.post("/v1/plans", json=plan_document(name, count)).json()["id"]
            took, run = run_plan(api, plan_id, "apply")
            if run["state"] != "succeeded":
                failed = [s for s in run["steps"] if s["state"] == "failed"][:3]
                raise SystemExit(f"the {count}-server plan failed: {failed}")
            destroy_took, _ = run_plan(api, plan_id, "destroy")
            row(f"plan of {count} servers + network, router, security group", f"{took:.1f} s")
            row(f"destroy of the {count}-server plan", f"{destroy_took:.1f} s")
            limit = direct(cloud, count)
            row(f"same {count} servers directly via openstacksdk, {count} threads", f"{limit:.1f} s")
            row(f"ratio plan / direct (N={count}; target <= 1.10)", f"{took / limit:.2f}x")
            heat_took, heat_destroy = heat(cloud, count)
            row(f"same resources as one Heat stack (N={count}), CREATE_COMPLETE", f"{heat_took:.1f} s")
            row(f"delete of the Heat stack (N={count})", f"{heat_destroy:.1f} s")
            row(f"Heat / plan (N={count}; target >= 3)", f"{heat_took / took:.2f}x")
        if len(scale) == 2:
            low, high = scale
            name = f"bench-scale-{uuid.uuid4().hex[:6]}"
            plan_id = api.post("/v1/plans", json=plan_document(name, low)).json()["id"]
            _, run = run_plan(api, plan_id, "apply")
            assert run["state"] == "succeeded", run["message"]
            api.put(f"/v1/plans/{plan_id}", json=plan_document(name, high)).raise_for_status()
            took, run = run_plan(api, plan_id, "apply")
            assert run["state"] == "succeeded", run["message"]
            kept = sum(1 for s in run["steps"] if s["message"].startswith("unchanged"))
            run_plan(api, plan_id, "destroy")
            row(f"scale-out {low} -> {high} servers (apply of the changed plan)", f"{took:.1f} s")
            row("  steps kept as live and unchanged / dispatched", f"{kept} / {len(run['steps']) - kept}")
            limit = direct(cloud, high - low)
            row(f"{high - low} servers directly via openstacksdk, {high - low} threads", f"{limit:.1f} s")
            row(f"ratio scale-out / direct ({high - low} servers)", f"{took / limit:.2f}x")


if __name__ == "__main__":
    main()
