"""HTTP request and response models of runs."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, Field

from services.planner.runs.machine import Run, RunStep


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
    started_at: datetime | None = Field(description="When it was first dispatched")
    finished_at: datetime | None
    resource_id: str | None = Field(
        default=None, description="The id of the cloud resource it made or found; null before it succeeded"
    )
    took_seconds: float | None = Field(
        default=None, description="From its first dispatch to its result; null while in flight or never started"
    )
    reasks: int = Field(
        default=0,
        description="How many times its command was sent again (same dispatch id) because nothing was heard "
        "from its service for DCOSTACK_STEP_REASK_SECONDS",
    )

    @classmethod
    def of(cls, s: RunStep) -> RunStepView:
        return cls(**vars(s), resource_id=s.resource_id, took_seconds=s.took_seconds)


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
            steps=[RunStepView.of(s) for s in run.steps],
        )


class RunList(BaseModel):
    runs: list[RunView]
