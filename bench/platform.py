"""What the plan benchmarks run against: devcloud, a Tansu broker, a fresh database on the local PostgreSQL,
and the planner, compute, network and storage services as processes, wired as `dcostack up` wires them
(the planner asks the domain services for live state; compute reads host capacity with the admin entry)
and with Keystone identity as in production: the client sends the demo member's token, and runs act
through trusts to devcloud's `dcostack` service user."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openstack

from devcloud.cloud import Devcloud
from devcloud.settings import DevcloudSettings
from services.cli.infra import LOCAL_PG, TansuBroker, drop_database, ensure_database, free_port
from services.cli.processes import ServiceProcess

DOMAIN = ("compute", "network", "storage")


@contextmanager
def bench_platform(*, concurrency: int, heat: bool = False, timeout: float = 60) -> Iterator[httpx.Client]:
    """A client of the planner, logged in as devcloud's demo member; everything is stopped on exit."""
    settings = DevcloudSettings(heat=heat)
    Devcloud(settings).up()
    cloud = settings.cloud_name
    logs = Path(tempfile.mkdtemp(prefix="dcostack-bench-"))
    broker = TansuBroker(port=free_port(), log_path=logs / "kafka.log").start()
    database = f"bench_{uuid.uuid4().hex[:8]}"
    dsn = asyncio.run(ensure_database(LOCAL_PG, database))
    env = {
        "DCOSTACK_DATABASE_URL": dsn,
        "DCOSTACK_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "DCOSTACK_LOG_LEVEL": "WARNING",
        "DCOSTACK_AUTH_STRATEGY": "keystone",
        "DCOSTACK_KEYSTONE_URL": settings.auth_url,
        "DCOSTACK_SERVICE_CLOUD": f"{cloud}-dcostack",
    }
    ports = {n: free_port() for n in ("planner", *DOMAIN)}
    urls = {f"DCOSTACK_{n.upper()}_URL": f"http://127.0.0.1:{ports[n]}" for n in DOMAIN}
    domain_env = {**env, "DCOSTACK_CLOUD": cloud, "DCOSTACK_CLOUD_CONCURRENCY": str(concurrency)}
    procs = [ServiceProcess("planner", ports["planner"], {**env, **urls}, logs / "planner.log")]
    for n in DOMAIN:
        extra = {"DCOSTACK_CAPACITY_CLOUD": f"{cloud}-admin"} if n == "compute" else {}
        procs.append(ServiceProcess(n, ports[n], {**domain_env, **extra}, logs / f"{n}.log"))
    token = str(openstack.connect(cloud=cloud).auth_token)
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.wait_ready(120)
        with httpx.Client(base_url=procs[0].base_url, timeout=timeout, headers={"X-Auth-Token": token}) as api:
            yield api
    finally:
        for p in procs:
            p.stop()
        broker.stop()
        asyncio.run(drop_database(LOCAL_PG, database))
