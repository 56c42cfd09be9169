"""HTTP request and response models of previews."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, Field


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
