"""devcloud numbers: cold and warm ``up``, RSS of all OpenStack processes, server create→ACTIVE latency,
and how long 50 and 100 servers created concurrently through openstacksdk take to be ACTIVE (the limit
the planner's own overhead is measured against).

    uv run python -m bench.devcloud [--cold] [--counts 50,100] [--latency-samples 10]

``--cold`` wipes devcloud's state and its cached virtualenv first (a fresh machine's first ``up``).
Uses the devcloud that DCOSTACK_DEVCLOUD_* settings name.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openstack

from devcloud.cloud import Devcloud
from devcloud.settings import DevcloudSettings


def timed_up(cloud: Devcloud) -> float:
    result = cloud.up()
    return result.seconds


def create_active(conn: Any, name: str, flavor: str, image: str) -> float:
    started = time.monotonic()
    server = conn.compute.create_server(name=name, flavor_id=flavor, image_id=image, networks="none")
    conn.compute.wait_for_server(server, status="ACTIVE", failures=["ERROR"], interval=0.25, wait=600)
    return time.monotonic() - started


def delete_all(conn: Any, prefix: str) -> None:
    servers = [s for s in conn.compute.servers() if s.name.startswith(prefix)]
    for s in servers:
        conn.compute.delete_server(s)
    for s in servers:
        conn.compute.wait_for_delete(s, interval=0.5, wait=600)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold", action="store_true", help="wipe state and the virtualenv first")
    parser.add_argument("--counts", default="50,100", help="concurrent server counts")
    parser.add_argument("--latency-samples", type=int, default=10)
    args = parser.parse_args()
    settings = DevcloudSettings()
    cloud = Devcloud(settings)
    rows: list[tuple[str, str]] = []

    def show(label: str, value: str) -> None:
        rows.append((label, value))
        print(f"{label:<52}  {value}", flush=True)  # noqa: T201

    if args.cold:
        cloud.down(wipe=True)
        shutil.rmtree(settings.cache_dir, ignore_errors=True)
        show("cold up (install + configure + start)", f"{timed_up(cloud):.1f} s")
    else:
        cloud.up()  # make sure it runs before measuring a warm restart
    cloud.down()
    show("warm up (after down, state kept)", f"{timed_up(cloud):.1f} s")
    show("RSS of all OpenStack processes", f"{cloud.rss_bytes() / 2**30:.2f} GiB")

    conn: Any = openstack.connect(cloud=settings.cloud_name)  # the demo project: quota for 200 servers
    flavor = conn.compute.find_flavor("m1.tiny").id
    image = conn.image.find_image("devcloud-tiny").id
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    samples = [create_active(conn, f"{prefix}-lat{i}", flavor, image) for i in range(args.latency_samples)]
    delete_all(conn, prefix)
    show(
        *(
            f"server create→ACTIVE, sequential (n={len(samples)})",
            f"p50 {statistics.median(samples):.2f} s, max {max(samples):.2f} s",
        )
    )
    for count in [int(c) for c in args.counts.split(",") if c]:
        name = f"{prefix}-c{count}"
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=count) as pool:
            latencies = list(
                pool.map(
                    lambda i, name=name: create_active(
                        openstack.connect(cloud=settings.cloud_name), f"{name}-{i}", flavor, image
                    ),  # fmt: skip
                    range(count),
                )
            )
        total = time.monotonic() - started
        delete_all(conn, name)
        show(
            *(
                f"{count} servers created concurrently, all ACTIVE",
                f"{total:.1f} s (slowest {max(latencies):.1f} s, p50 {statistics.median(latencies):.1f} s)",
            )
        )


if __name__ == "__main__":
    main()
