"""Plan execution: the planner asks domain services to apply or destroy one step's resource, and
they report every transition of that step back.

All of them are control-lane events (what a run waits for). Commands go to ``dcostack.<domain>.commands``
keyed by run id; progress goes to ``dcostack.<domain>.events`` keyed by run id, so one run's events stay
in order per service.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import Field

from shared.events.base import EventData, register
from shared.topics import Lane


class _StepCommand(EventData):
    LANE = Lane.CONTROL
    dispatch_id: UUID = Field(description="Unique per dispatch; a redelivered command has the same id")
    run_id: UUID
    plan_id: UUID
    step_key: str = Field(description="Stable key of the step in the plan's graph, e.g. server/web-0")
    kind: str = Field(description="Resource kind, e.g. network, server, member")
    path: str = Field(description="JSON path in the plan the step comes from, for error messages")
    params: dict[str, Any] = Field(default_factory=dict)
    timeout_seconds: float = Field(gt=0, description="How long the service may work on it before failing it")
    trust_id: str | None = Field(
        None,
        description="The Keystone trust the service acts through (trustor: the user who started the run; "
        "trustee: DCOSTACK's service user). None: the service acts with its own DCOSTACK_CLOUD entry "
        "(noauth deployments)",
    )


@register
class ApplyStepV1(_StepCommand):
    """Make one step's resource exist: find it by its marks (plan, step) or create it, then wait for
    its terminal state. Answered by StepProgressedV1 events."""

    TYPE = "io.dcostack.planner.step.apply.v1"


@register
class DestroyStepV1(_StepCommand):
    """Delete one step's resource if it exists and wait until it is gone. Answered by StepProgressedV1."""

    TYPE = "io.dcostack.planner.step.destroy.v1"


@register
class StepProgressedV1(EventData):
    """A domain service reports a step's transition: ``running`` with what it last saw in the cloud,
    ``succeeded`` with the resource's outputs, ``failed`` with the cloud's own error and a hint."""

    TYPE = "io.dcostack.cloud.step.progressed.v1"
    LANE = Lane.CONTROL
    dispatch_id: UUID
    run_id: UUID
    step_key: str
    service: str
    state: Literal["running", "succeeded", "failed"]
    message: str = ""
    outputs: dict[str, Any] = Field(default_factory=dict)
    error: dict[str, Any] | None = None
    at: datetime


@register
class RunChangedV1(EventData):
    """A plan run changed state (pending, running, succeeded, failed); for integrations and dashboards."""

    TYPE = "io.dcostack.planner.run.changed.v1"
    LANE = Lane.CONTROL
    run_id: UUID
    plan_id: UUID
    plan_version: int
    action: Literal["apply", "destroy"]
    state: str
    message: str = ""
    at: datetime
