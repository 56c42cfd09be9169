"""Plan execution: the planner asks domain services to apply or destroy one step's resource, and
they report every transition of that step back.

All of them are control-lane events (what a run waits for). Commands go to ``dcostack.<domain>.commands``
keyed by run id; progress goes to ``dcostack.<domain>.events`` keyed by run id, so one run's events stay
in order per service.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal
from uuid import UUID

from pydantic import Field, model_validator

from shared.events.base import EventData, register
from shared.events.kinds import Kind, StepParams
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


class _TypedStepCommand(EventData):
    LANE = Lane.CONTROL
    dispatch_id: UUID = Field(description="Unique per dispatch; a redelivered command has the same id")
    run_id: UUID
    plan_id: UUID
    step_key: str = Field(description="Stable key of the step in the plan's graph, e.g. server/web-0")
    kind: Kind = Field(description="Resource kind, e.g. network, server, member; the same as params.kind")
    path: str = Field(description="JSON path in the plan the step comes from, for error messages")
    params: StepParams = Field(description="What the service needs to build or find the resource, by kind")
    timeout_seconds: float = Field(gt=0, description="How long the service may work on it before failing it")
    trust_id: str | None = Field(
        None,
        description="The Keystone trust the service acts through (trustor: the user who started the run; "
        "trustee: DCOSTACK's service user). None: the service acts with its own DCOSTACK_CLOUD entry "
        "(noauth deployments)",
    )

    @model_validator(mode="after")
    def _kind_matches_params(self) -> _TypedStepCommand:
        if self.params.kind != self.kind:
            raise ValueError(f"kind is '{self.kind}' but params are of kind '{self.params.kind}'; send one kind")
        return self


@register
class ApplyStepV2(_TypedStepCommand):
    """Make one step's resource exist: find it by its marks (plan, step) or create it, then wait for
    its terminal state. Answered by StepProgressedV1 events.

    Version history: v2 types ``params`` per kind (shared/events/kinds.py, told apart by
    ``params.kind``) and ``kind`` as an enum; v1 carries them as a free-form object and a string."""

    TYPE = "io.dcostack.planner.step.apply.v2"


@register
class DestroyStepV2(_TypedStepCommand):
    """Delete one step's resource if it exists and wait until it is gone. Answered by StepProgressedV1.

    Version history: v2 types ``params`` per kind (shared/events/kinds.py, told apart by
    ``params.kind``) and ``kind`` as an enum; v1 carries them as a free-form object and a string."""

    TYPE = "io.dcostack.planner.step.destroy.v2"


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


# Superseded by RunChangedV2: the planner emits only V2, and nothing in DCOSTACK consumes V1. It stays
# registered (its docstring, and so its pinned schema, unchanged) so records already written still decode.
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


class RunState(StrEnum):
    """The state of a plan run. In progress: ``running``, ``cancelling`` (nothing more is dispatched;
    steps in flight finish), ``rolling_back`` (removing what the run created after a step failed). Ended:
    ``succeeded``; ``failed`` (a step failed and the plan holds what was built, or a rollback could not
    remove everything); ``cancelled``; ``rolled_back``. A failed or cancelled run may be resumed, and is
    ``running`` again."""

    RUNNING = "running"
    CANCELLING = "cancelling"
    ROLLING_BACK = "rolling_back"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ROLLED_BACK = "rolled_back"


@register
class RunChangedV2(EventData):
    """A plan run started, was resumed or changed state (see ``state``); for integrations and dashboards.
    Emitted by the planner in the transaction that changed the run, keyed by run id.

    Version history: V1 had ``state`` as free text and documented states that do not exist (pending);
    V2 makes it the run state enum."""

    LANE = Lane.CONTROL

    TYPE = "io.dcostack.planner.run.changed.v2"
    run_id: UUID
    plan_id: UUID
    plan_version: int
    action: Literal["apply", "destroy"]
    state: RunState
    message: str = Field(default="", description="What happened, e.g. what failed and how to continue")
    at: datetime
