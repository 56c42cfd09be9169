from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, Field, WithJsonSchema

from services.planner.domain import PROBE_TARGETS, CheckedPlan, PlanRecord, PlanVersion
from services.planner.runs import Run


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


class RunRequest(BaseModel):
    action: Literal["apply", "destroy"] = "apply"
    version: int | None = Field(default=None, ge=1, description="Plan version; the latest when absent")
    preview_id: UUID | None = Field(
        default=None,
        description="Apply exactly what this preview (POST /v1/plans/{id}/preview) showed: refused (409) when "
        "the plan or the cloud changed since, or when one of its checks fails",
    )
    force: bool = Field(
        default=False, description="Start even though the preview's checks fail (it must still be current)"
    )


class ResumeRequest(BaseModel):
    version: int | None = Field(
        default=None, ge=1, description="Plan version to continue with; the run's own version when absent"
    )


class RunStepView(BaseModel):
    key: str
    action: str = Field(description="apply, or destroy: a removal (scale-in, destroy run) or a rollback")
    rollback: bool = Field(description="True when the step undoes what this run created (on_failure: rollback)")
    service: str
    kind: str
    path: str
    state: str
    message: str
    outputs: dict[str, Any]
    error: dict[str, Any] | None
    started_at: datetime | None
    finished_at: datetime | None


class RunView(BaseModel):
    id: UUID
    plan_id: UUID
    plan_version: int
    action: str
    state: str = Field(
        description="running, cancelling or rolling_back while in progress; then succeeded, failed (a held "
        "failure, or a rollback that could not undo everything), cancelled or rolled_back"
    )
    on_failure: str = Field(description="rollback or hold: what the run does when a step fails")
    resumed: int = Field(description="How many times the run was resumed")
    preview_id: UUID | None = Field(default=None, description="The preview the run was started from")
    message: str
    created_at: datetime
    finished_at: datetime | None
    counts: dict[str, int]
    steps: list[RunStepView]

    @classmethod
    def of(cls, run: Run) -> RunView:
        return cls(
            id=run.id,
            plan_id=run.plan_id,
            plan_version=run.plan_version,
            action=run.action,
            state=run.state,
            on_failure=run.on_failure,
            resumed=run.resumed,
            preview_id=run.preview_id,
            message=run.message,
            created_at=run.created_at,
            finished_at=run.finished_at,
            counts=run.counts,
            steps=[RunStepView(**vars(s)) for s in run.steps],
        )


class RunList(BaseModel):
    runs: list[RunView]
