from __future__ import annotations

from fastapi import FastAPI

from services.network.api import router
from shared.http import create_base_app
from shared.probe import probe_router
from shared.runtime import Runtime


def create_app(runtime: Runtime) -> FastAPI:
    app = create_base_app(
        runtime,
        title="DCOSTACK network",
        description="Networks, subnets, routers, floating IPs, security groups, load balancers (Neutron, Octavia).",
    )
    app.include_router(router)
    app.include_router(probe_router("network"))
    return app
