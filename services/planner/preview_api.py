"""Planner HTTP API for previews: what applying a plan version would do in the cloud, and whether it can."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from services.planner import preview
from services.planner.settings import PlannerSettings
from shared.auth import Reader
from shared.http import errors

router = APIRouter(tags=["runs"])


class PreviewRequest(BaseModel):
    version: int | None = Field(default=None, ge=1, description="The plan version to preview; the latest when omitted")


class DiffEntryView(BaseModel):
    key: str = Field(description="The step key (as in runs); for a resource no version names, '<kind>:<id>'")
    kind: str
    service: str = Field(description="The domain service that holds it")
    action: Literal["create", "change", "delete", "unchanged"]
    path: str | None = Field(description="Where in the plan it comes from; null for a delete")
    changes: dict[str, dict[str, Any]] = Field(description="For a change: each field the plan controls, old → new")
    id: str | None = Field(description="The live resource's id, when there is one")
    name: str | None


class CheckView(BaseModel):
    name: str
    ok: bool | None = Field(description="null when the check could not be run (see message)")
    status: Literal["passed", "failed", "not_run"]
    message: str
    paths: list[str] = Field(default=[], description="JSON paths of the plan fields to change")
    fix: str = Field(default="", description="What to change")
    needed: float | None = None
    available: float | None = None
    shortfall: float | None = None


class PreviewView(BaseModel):
    preview_id: UUID = Field(description="Start a run from this preview with POST /v1/plans/{id}/runs")
    plan_id: UUID
    plan_name: str
    version: int
    project_id: str
    ok: bool = Field(description="No check failed (checks not run are listed in not_run)")
    complete: bool = Field(description="Every check was run")
    not_run: list[str]
    summary: dict[str, int] = Field(description="Resources to create, change, delete, and unchanged")
    diff: list[DiffEntryView] = Field(description="Creates and changes in creation order, then deletes")
    checks: list[CheckView] = Field(description="Failed first, then not run, then passed")
    took_ms: float
    reads_ms: dict[str, float] = Field(default={}, description="How long each read of a domain service took")
    created_at: datetime


@router.post(
    "/v1/plans/{plan_id}/preview",
    response_model=PreviewView,
    responses={
        **errors(429),
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
    services = preview.DomainServices.of(settings, who)
    version = body.version if body else None
    return await preview.create_preview(runtime.pool, services, who.project_id, plan_id, version)


@router.get("/v1/previews/{preview_id}", response_model=PreviewView)
async def get_preview(preview_id: UUID, request: Request, who: Reader) -> dict[str, Any]:
    """A stored preview, as it was computed."""
    return await preview.get_preview(request.app.state.runtime.pool, who.project_id, preview_id)
