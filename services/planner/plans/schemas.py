from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, Field

from services.planner.plans.domain import CheckedPlan, PlanRecord, PlanVersion


class PlanVersionView(BaseModel):
    plan_id: UUID
    version: int
    created_at: datetime
    created_by: str | None = Field(description="Keystone user id of who stored it; empty under noauth")
    document: dict[str, Any] | None = Field(
        default=None, description="The document as submitted (templates not substituted); left out of listings"
    )

    @classmethod
    def of(cls, v: PlanVersion) -> PlanVersionView:
        return cls(
            plan_id=v.plan_id, version=v.version, created_at=v.created_at, created_by=v.created_by, document=v.document
        )


class PlanSummaryView(BaseModel):
    id: UUID
    project_id: str
    name: str
    latest_version: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, p: PlanRecord) -> PlanSummaryView:
        return cls(
            id=p.id,
            project_id=p.project_id,
            name=p.name,
            latest_version=p.latest_version,
            created_at=p.created_at,
            updated_at=p.updated_at,
        )


class PlanView(PlanSummaryView):
    version: PlanVersionView = Field(description="The latest version, or the one asked for")
    warnings: list[str] = Field(default=[], description="Checks that could not be run, e.g. flavors against the cloud")

    @classmethod
    def of_version(cls, p: PlanRecord, v: PlanVersion, warnings: list[str] | None = None) -> PlanView:
        return cls(**PlanSummaryView.of(p).model_dump(), version=PlanVersionView.of(v), warnings=warnings or [])


class PlanList(BaseModel):
    plans: list[PlanSummaryView] = Field(description="Newest first")


class PlanVersionList(BaseModel):
    plan_id: UUID
    name: str
    versions: list[PlanVersionView] = Field(description="Oldest first, without documents")


class StepView(BaseModel):
    key: str = Field(description="Stable across versions, e.g. server/web-0")
    service: str = Field(description="The domain service that executes it")
    kind: str
    path: str = Field(description="Where in the plan it comes from")
    after: list[str] = Field(description="Steps that must be complete before it starts")


class StepSummary(BaseModel):
    total: int
    by_kind: dict[str, int]
    by_service: dict[str, int]


class PlanCheckView(BaseModel):
    valid: bool = True
    name: str
    plan: dict[str, Any] = Field(description="The plan with parameter defaults substituted and every default filled in")
    summary: StepSummary
    steps: list[StepView] = Field(description="Every step in an order that respects its dependencies")
    warnings: list[str] = Field(default=[], description="Checks that could not be run, e.g. flavors against the cloud")

    @classmethod
    def of(cls, checked: CheckedPlan, warnings: list[str] | None = None) -> PlanCheckView:
        steps = checked.ordered_steps
        return cls(
            warnings=warnings or [],
            name=checked.name,
            plan=checked.plan.model_dump(mode="json"),
            summary=StepSummary(
                total=len(steps), by_kind=checked.count_by("kind"), by_service=checked.count_by("service")
            ),
            steps=[
                StepView(key=s.key, service=s.service, kind=s.kind, path=s.path, after=sorted(s.after)) for s in steps
            ],
        )


class PlanErrorView(BaseModel):
    path: str = Field(description="JSON path in the document, e.g. $.networks[0].cidr")
    message: str = Field(description="What is wrong and what is allowed")
    available: list[str] | None = Field(default=None, description="For a name the cloud lacks: the names it has")


class PlanInvalidView(BaseModel):
    error: str = "PlanInvalid"
    detail: str
    errors: list[PlanErrorView]
