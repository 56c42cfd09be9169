"""Preview latency: ``POST /v1/plans/{id}/preview`` for a plan of 100 servers (two groups, one with a volume
each, one behind a load balancer with a floating IP each, a network with a router, two security groups),
measured from the client: p50 and max of 5, after one warm-up preview (each service logs in to Keystone on
its first read). Target: < 2 s.

    uv run python -m bench.preview [--servers 100] [--repeat 5] [--apply]

``--apply`` applies the plan first, so the preview also matches 100 live servers and their neighbours
(and destroys it afterwards). Starts what it needs: devcloud (if not up), a Tansu broker, a database on the
local PostgreSQL, and the planner, compute (with the admin entry for Placement), network and storage
services as processes (as `dcostack up` runs them).
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from typing import Any

import httpx

from bench.platform import bench_platform


def plan_document(name: str, servers: int) -> dict[str, Any]:
    web, app = servers // 2, servers - servers // 2
    group = {"flavor": "m1.tiny", "image": "devcloud-tiny", "networks": ["net"]}
    return {
        "name": name,
        "networks": [{"name": "net", "cidr": "10.97.0.0/22", "router": {"name": "r", "external_network": "public"}}],
        "security_groups": [
            {"name": "web", "rules": [{"protocol": "tcp", "ports": 80, "remote_cidr": "0.0.0.0/0"}]},
            {"name": "app", "rules": [{"protocol": "tcp", "ports": 8080, "remote_group": "web"}]},
        ],
        "instance_groups": [
            {
                **group,
                "name": "app",
                "count": app,
                "security_groups": ["app"],
                "volumes": [{"name": "d", "size_gb": 1}],
            },
            {**group, "name": "web", "count": web, "security_groups": ["web"], "floating_ip": True},
        ],
        "load_balancers": [
            {
                "name": "lb",
                "network": "net",
                "listener": {"port": 80},
                "pool": {"members": {"group": "web", "port": 80}},
            }
        ],
        "rollout": {"max_parallel": 50, "batch_size": 50},
    }


def run_plan(api: httpx.Client, plan_id: str, action: str) -> dict[str, Any]:
    run: dict[str, Any] = api.post(f"/v1/plans/{plan_id}/runs", json={"action": action}).json()
    while run["state"] not in ("succeeded", "failed", "cancelled", "rolled_back"):
        time.sleep(1.0)
        run = api.get(f"/v1/runs/{run['id']}").json()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--apply", action="store_true", help="apply the plan first (and destroy it at the end)")
    args = parser.parse_args()
    applied = None
    with bench_platform(concurrency=100, timeout=120) as api:
        try:
            name = f"bench-preview-{uuid.uuid4().hex[:6]}"
            r = api.post("/v1/plans", json=plan_document(name, args.servers))
            r.raise_for_status()
            plan_id = r.json()["id"]
            if args.apply:
                applied = plan_id
                started = time.monotonic()
                run = run_plan(api, plan_id, "apply")
                print(f"applied in {time.monotonic() - started:.0f} s: {run['state']}", flush=True)  # noqa: T201
            api.post(f"/v1/plans/{plan_id}/preview").raise_for_status()  # warm-up: Keystone logins
            took: list[float] = []
            reported: list[float] = []
            body: dict[str, Any] = {}
            for _ in range(args.repeat):
                started = time.perf_counter()
                r = api.post(f"/v1/plans/{plan_id}/preview")
                took.append(time.perf_counter() - started)
                r.raise_for_status()
                body = r.json()
                reported.append(body["took_ms"] / 1000)
            failed = [c["name"] for c in body["checks"] if c["status"] == "failed"]
            not_run = body["not_run"]
            print(  # noqa: T201
                f"preview of a {args.servers}-server plan ({sum(body['summary'].values())} resources: "
                f"{body['summary']}; failed checks: {failed or 'none'}; not run: {not_run or 'none'})\n"
                f"  client latency  p50 {statistics.median(took):.3f} s  max {max(took):.3f} s  (n={len(took)})\n"
                f"  planner took_ms p50 {statistics.median(reported):.3f} s  max {max(reported):.3f} s"
                f"  (target < 2 s)\n"
                f"  reads of the last preview (ms): {body['reads_ms']}",
                flush=True,
            )
            if applied:
                run = run_plan(api, applied, "destroy")
                applied = None
                print(f"destroyed: {run['state']}", flush=True)  # noqa: T201
        finally:
            if applied:
                run_plan(api, applied, "destroy")


if __name__ == "__main__":
    main()
