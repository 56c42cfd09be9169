from __future__ import annotations

from fastapi import FastAPI

from services.planner.plans import api as plans_api
from services.planner.previews import api as previews_api
from services.planner.probes import api as probes_api
from services.planner.runs import api as runs_api
from shared.http import create_base_app
from shared.runtime import Runtime


def create_app(runtime: Runtime) -> FastAPI:
    app = create_base_app(
        runtime,
        title="DCOSTACK planner",
        description="Plans, runs and steps; the platform self-check.",
    )
    app.include_router(probes_api.router)
    app.include_router(plans_api.router)
    app.include_router(runs_api.router)
    app.include_router(previews_api.router)
    return app
