"""The contract between the executor engine and each domain's cloud adapter: the adapter's Protocol and
the progress events an operation is reported with."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from shared.events.steps import StepProgressedV1
from shared.executor.marks import StepWork

#: How an adapter reports what it sees in the cloud while it works (called from its thread).
Progress = Callable[[str], None]


class StepAdapter(Protocol):
    """A domain's cloud adapter as the engine drives it: synchronous (run in a thread) and idempotent by
    the marks in shared.executor.marks."""

    def apply(self, work: StepWork, progress: Progress) -> dict[str, Any]:
        """Create the step's resource unless its marks find it; wait until usable; return its outputs.

        :raises CloudError: the cloud refused or failed (``retriable`` when trying again may help; a
            reference to another step's resource that does not exist yet is retriable)."""
        ...

    def destroy(self, work: StepWork, progress: Progress) -> bool:
        """Delete the step's resource if its marks find it and wait until it is gone.

        :returns: False when nothing was there.
        :raises CloudError: as ``apply``."""
        ...


def step_progressed(
    op: Mapping[str, Any],
    service: str,
    state: Literal["running", "succeeded", "failed"],
    message: str,
    *,
    outputs: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> StepProgressedV1:
    """The StepProgressedV1 of operation ``op`` (an ``operations`` row)."""
    return StepProgressedV1(
        dispatch_id=op["dispatch_id"],
        run_id=op["run_id"],
        step_key=op["step_key"],
        service=service,
        state=state,
        message=message[:2000],
        outputs=outputs or {},
        error=error,
        at=datetime.now(UTC),
    )


def latest_progress(op: Mapping[str, Any], service: str) -> StepProgressedV1:
    """What is known of operation ``op`` now: its final event when it is done (the same outputs or error
    it first reported), else ``running`` with what it last saw."""
    if op["state"] == "done" and op["outcome"] is not None:
        outputs = json.loads(op["outputs"]) if op["outputs"] is not None else None
        error = json.loads(op["error"]) if op["error"] is not None else None
        return step_progressed(op, service, op["outcome"], op["last_message"], outputs=outputs, error=error)
    seen = op["last_message"] or ("accepted; waiting for a worker" if op["state"] == "pending" else "working")
    return step_progressed(op, service, "running", seen)
