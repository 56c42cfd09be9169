from __future__ import annotations

from fastapi import FastAPI

from services.storage.api import router
from shared.http import create_base_app
from shared.probe import probe_router
from shared.runtime import Runtime


def create_app(runtime: Runtime) -> FastAPI:
    app = create_base_app(
        runtime,
        title="DCOSTACK storage",
        description="Volumes, snapshots, backups and object containers (Cinder, Swift).",
    )
    app.include_router(router)
    app.include_router(probe_router("storage"))
    return app
