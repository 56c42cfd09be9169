"""HTTP request and response models of the self-check."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from pydantic import BaseModel, Field, WithJsonSchema

from services.planner.probes.domain import PROBE_TARGETS


class ProbeRequest(BaseModel):
    # the enum is published; check_targets refuses other names with the list of valid ones
    targets: list[Annotated[str, WithJsonSchema({"type": "string", "enum": list(PROBE_TARGETS)})]] | None = Field(
        default=None, description="Services that must answer; all domain services when omitted"
    )
    count: int = Field(default=1, ge=1, le=10000, description="Commands sent to each target")


class ProbeView(BaseModel):
    probe_id: UUID
    targets: list[str]
    count: int
    answered: dict[str, int]
    complete: bool
    missing: list[str]
