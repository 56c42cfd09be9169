"""Planner HTTP API for previews: what applying a plan version would do in the cloud, and whether it can."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from fastapi import APIRouter, Request

from services.planner.previews import service
from services.planner.previews.live import DomainServices
from services.planner.previews.schemas import PreviewRequest, PreviewView
from services.planner.settings import PlannerSettings
from shared.auth import Reader
from shared.limits import RATE_LIMITED, limited

router = APIRouter(tags=["runs"])


@router.post(
    "/v1/plans/{plan_id}/preview",
    response_model=PreviewView,
    dependencies=[limited("preview")],
    responses={
        **RATE_LIMITED,
        404: {"description": "No such plan (or version) in the project"},
        503: {"description": "A domain service (compute, network, storage) did not answer; names it and its URL"},
    },
)
async def preview_plan(
    plan_id: UUID, request: Request, who: Reader, body: PreviewRequest | None = None
) -> dict[str, Any]:
    """What applying a plan version would create, change and delete in the cloud, and whether the cloud can
    take it: quota headroom, flavors, images and external networks, room in every subnet, host capacity.

    The domain services are asked for live state at once; the preview is stored, and its ``preview_id``
    lets a run start from exactly what was checked (the run refuses it if the plan or cloud changed since).
    """
    runtime = request.app.state.runtime
    settings: PlannerSettings = runtime.settings
    services = DomainServices.of(settings, who)
    version = body.version if body else None
    return await service.create_preview(runtime.pool, services, who.project_id, plan_id, version)


@router.get("/v1/previews/{preview_id}", response_model=PreviewView)
async def get_preview(preview_id: UUID, request: Request, who: Reader) -> dict[str, Any]:
    """A stored preview, as it was computed."""
    return await service.get_preview(request.app.state.runtime.pool, who.project_id, preview_id)
