from __future__ import annotations

from fastapi import FastAPI

from services.hybrid.api import router
from shared.http import create_base_app
from shared.probe import probe_router
from shared.runtime import Runtime


def create_app(runtime: Runtime) -> FastAPI:
    app = create_base_app(
        runtime,
        title="DCOSTACK hybrid",
        description="Public-cloud providers, unified inventory, cross-cloud migration, DR sites.",
    )
    app.include_router(router)
    app.include_router(probe_router("hybrid"))
    return app
