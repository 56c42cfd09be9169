"""Planner HTTP API for plan runs."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Request, Response

from services.planner.runs import service
from services.planner.runs.schemas import ResumeRequest, RunList, RunRequest, RunView
from services.planner.runs.trusts import Delegation
from services.planner.settings import PlannerSettings
from shared.auth import Reader, Writer
from shared.http import checked_beyond_schema
from shared.limits import RATE_LIMITED, limited
from shared.logging import get_logger

router = APIRouter()
log = get_logger(__name__)


def _delegation(request: Request) -> Delegation:
    found: Delegation | None = getattr(request.app.state, "delegation", None)
    if found is None:
        settings: PlannerSettings = request.app.state.runtime.settings
        found = Delegation(settings, settings.trust_lifetime_hours)
        request.app.state.delegation = found
    return found


# --- plan runs -----------------------------------------------------------------------------------------


@router.post(
    "/v1/plans/{plan_id}/runs",
    status_code=202,
    response_model=RunView,
    tags=["runs"],
    dependencies=[limited("run")],
    responses={
        **RATE_LIMITED,
        409: {"description": "Another run of the plan is in progress, or the preview is stale or failed its checks"},
    },
    openapi_extra=checked_beyond_schema("preview_id applies to an apply only"),
)
async def start_run(
    plan_id: UUID,
    body: RunRequest,
    request: Request,
    response: Response,
    who: Writer,
) -> RunView:
    """Apply (or destroy) a plan version in the cloud as a run of ordered steps; 409 while another run
    of the plan is in progress. Follow it at ``GET /v1/runs/{run_id}`` or with ``dcostack run watch``.

    An apply also removes what the plan built earlier and the version no longer has (a smaller count
    scales in, newest instances first); a destroy removes everything the plan built. Steps an earlier run
    applied that are live and unchanged (per the preview the run starts from, or one computed at start) are
    kept without being redone, so a scale-out dispatches only the new instances."""
    runtime = request.app.state.runtime
    run = await service.start_run(runtime.pool, runtime.settings, _delegation(request), who, plan_id, body)
    response.headers["Location"] = f"/v1/runs/{run.id}"
    return RunView.of(run)


@router.get("/v1/plans/{plan_id}/runs", response_model=RunList, tags=["runs"])
async def list_plan_runs(
    plan_id: UUID,
    request: Request,
    who: Reader,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> RunList:
    """A plan's runs, newest first (without their steps)."""
    found = await service.list_runs(request.app.state.runtime.pool, who.project_id, plan_id, limit)
    return RunList(runs=[RunView.of(r) for r in found])


@router.get("/v1/runs/{run_id}", response_model=RunView, tags=["runs"])
async def get_run(run_id: UUID, request: Request, who: Reader) -> RunView:
    """A run and every step: state, what the cloud last said, outputs, and the cloud's error with a hint."""
    return RunView.of(await service.get_run(request.app.state.runtime.pool, who.project_id, run_id))


@router.post(
    "/v1/runs/{run_id}/cancel",
    status_code=202,
    response_model=RunView,
    tags=["runs"],
    responses={404: {"description": "No such run in the project"}, 409: {"description": "The run already ended"}},
)
async def cancel_run(run_id: UUID, request: Request, who: Writer) -> RunView:
    """Cancel a run: it is ``cancelling`` at once and dispatches nothing more; steps in flight finish (or time
    out), then the run and its steps not started end ``cancelled``. Resume it later with POST .../resume.

    409 when the run already ended, or while it rolls back (stopping that would leave part of it behind)."""
    runtime = request.app.state.runtime
    return RunView.of(
        await service.cancel_run(runtime.pool, who.project_id, run_id, runtime.settings.step_timeout_seconds)
    )


@router.post(
    "/v1/runs/{run_id}/resume",
    status_code=202,
    response_model=RunView,
    tags=["runs"],
    dependencies=[limited("run")],
    responses={
        **RATE_LIMITED,
        404: {"description": "No such run or plan version"},
        409: {"description": "The run is not failed or cancelled, or another run of the plan is in progress"},
    },
    openapi_extra=checked_beyond_schema("the plan version must still be valid (as POST /v1/plans/validate checks)"),
)
async def resume_run(run_id: UUID, request: Request, who: Writer, body: ResumeRequest | None = None) -> RunView:
    """Continue a failed (held) or cancelled run in place, with its plan version or ``version`` (e.g. the
    fixed plan): succeeded steps whose parameters did not change are kept and not redone; every other step
    starts again, and what the version no longer has is removed."""
    runtime = request.app.state.runtime
    return RunView.of(await service.resume_run(runtime.pool, runtime.settings, _delegation(request), who, run_id, body))
