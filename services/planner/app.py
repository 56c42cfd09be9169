from __future__ import annotations

from fastapi import FastAPI

from services.planner import preview_api
from services.planner.api import router
from shared.http import create_base_app
from shared.runtime import Runtime


def create_app(runtime: Runtime) -> FastAPI:
    app = create_base_app(
        runtime,
        title="DCOSTACK planner",
        description="Plans, runs and steps; the platform self-check.",
    )
    app.include_router(router)
    app.include_router(preview_api.router)
    return app
