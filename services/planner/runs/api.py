"""Planner HTTP API for plan runs."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Request, Response

from services.planner.plans import service as plans_service
from services.planner.previews import service as previews_service
from services.planner.previews.live import DomainServices
from services.planner.runs import service
from services.planner.runs.schemas import ResumeRequest, RunList, RunRequest, RunView
from services.planner.runs.trusts import Delegation
from services.planner.settings import PlannerSettings
from shared.auth import Caller, Reader, Writer
from shared.errors import Conflict, DependencyUnavailable, InvalidInput
from shared.logging import get_logger

router = APIRouter()
log = get_logger(__name__)


async def _live_unchanged(
    request: Request, who: Caller, plan_id: UUID, version: int | None, previewed: dict[str, Any] | None
) -> set[str] | None:
    """Keys of a re-apply's steps that are live and as the plan wants them: the preview the run starts from,
    or one computed now when the plan has built something before. Without an answer from the domain
    services, None: every step is dispatched (and finds what exists by its marks)."""
    runtime = request.app.state.runtime
    if previewed is None:
        if not await service.applied_steps(runtime.pool, plan_id):
            return None  # nothing built yet: nothing to keep
        try:
            found = await previews_service.compute_preview(
                runtime.pool, DomainServices.of(runtime.settings, who), who.project_id, plan_id, version
            )
        except DependencyUnavailable as exc:
            log.info("run.live_state_unknown", plan_id=str(plan_id), reason=exc.detail)
            return None
        previewed = found.result()
    return {e["key"] for e in previewed["diff"] if e["action"] == "unchanged"}


def _delegation(request: Request) -> Delegation:
    found: Delegation | None = getattr(request.app.state, "delegation", None)
    if found is None:
        settings: PlannerSettings = request.app.state.runtime.settings
        found = Delegation(settings, settings.trust_lifetime_hours)
        request.app.state.delegation = found
    return found


# --- plan runs -----------------------------------------------------------------------------------------


@router.post("/v1/plans/{plan_id}/runs", status_code=202, response_model=RunView, tags=["runs"])
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
    if body.preview_id is not None and body.action != "apply":
        raise InvalidInput("preview_id applies to an apply; leave it out for a destroy", field="preview_id")
    # 404 for another project's plan (or a missing version) before anything is read or delegated
    version = (await plans_service.get_plan(runtime.pool, who.project_id, plan_id, body.version))[1].version
    fresh: dict[str, Any] | None = None
    if body.preview_id is not None:
        fresh = await previews_service.ensure_preview_current(
            runtime.pool,
            body.preview_id,
            plan_id,
            version,
            project_id=who.project_id,
            settings=runtime.settings,
            caller=who,
        )
        failed = [c for c in fresh["checks"] if c["status"] == "failed"]
        if failed and not body.force:
            reasons = "; ".join(f"{c['name']}: {c['message']}" + (f" ({c['fix']})" if c.get("fix") else "")
                                for c in failed)  # fmt: skip
            raise Conflict(
                f"preview {body.preview_id} says this apply would fail: {reasons}. Change the plan or the cloud "
                "and preview again, or start with force=true to run it anyway",
                field="preview_id",
            )
    live_unchanged: set[str] | None = None
    if body.action == "apply":
        live_unchanged = await _live_unchanged(request, who, plan_id, version, fresh)
    delegation = _delegation(request)
    trust_id = await delegation.delegate(who, f"a {body.action} of plan {plan_id}")
    try:
        run_id = await service.start_run(
            runtime.pool,
            who.project_id,
            plan_id,
            body.action,
            version,
            runtime.settings.step_timeout_seconds,
            preview_id=body.preview_id,
            trust_id=trust_id,
            live_unchanged=live_unchanged,
        )
    except BaseException:
        if trust_id is not None:  # no run holds it: delete it now rather than let it wait for its expiry
            await delegation.revoke(trust_id)
        raise
    response.headers["Location"] = f"/v1/runs/{run_id}"
    return RunView.of(await service.get_run(runtime.pool, who.project_id, run_id))


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
    await service.cancel_run(runtime.pool, who.project_id, run_id, runtime.settings.step_timeout_seconds)
    return RunView.of(await service.get_run(runtime.pool, who.project_id, run_id))


@router.post(
    "/v1/runs/{run_id}/resume",
    status_code=202,
    response_model=RunView,
    tags=["runs"],
    responses={
        404: {"description": "No such run or plan version"},
        409: {"description": "The run is not failed or cancelled, or another run of the plan is in progress"},
        422: {"description": "The plan version is no longer valid"},
    },
)
async def resume_run(run_id: UUID, request: Request, who: Writer, body: ResumeRequest | None = None) -> RunView:
    """Continue a failed (held) or cancelled run in place, with its plan version or ``version`` (e.g. the
    fixed plan): succeeded steps whose parameters did not change are kept and not redone; every other step
    starts again, and what the version no longer has is removed."""
    runtime = request.app.state.runtime
    version = body.version if body else None
    delegation = _delegation(request)
    await service.get_run(runtime.pool, who.project_id, run_id)  # 404 before anything is delegated
    trust_id = await delegation.delegate(who, f"resuming run {run_id}")
    try:
        await service.resume_run(
            runtime.pool, who.project_id, run_id, version, runtime.settings.step_timeout_seconds, trust_id
        )
    except BaseException:
        if trust_id is not None:
            await delegation.revoke(trust_id)
        raise
    return RunView.of(await service.get_run(runtime.pool, who.project_id, run_id))
