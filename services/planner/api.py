"""Planner HTTP API."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Path, Query, Request, Response

from services.planner import preview, runs, service
from services.planner.documents import MAX_DOCUMENT_BYTES, format_of, parse_document, too_large
from services.planner.domain import ProbeStatus
from services.planner.schemas import (
    PlanCheckView,
    PlanInvalidView,
    PlanList,
    PlanSummaryView,
    PlanVersionList,
    PlanVersionView,
    PlanView,
    ProbeRequest,
    ProbeView,
    ResumeRequest,
    RunList,
    RunRequest,
    RunView,
)
from services.planner.settings import PlannerSettings
from services.planner.spec import plan_json_schema
from services.planner.trusts import Delegation
from shared.auth import Caller, Reader, Writer
from shared.errors import Conflict, DependencyUnavailable, InvalidInput
from shared.http import checked_beyond_schema, errors
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
        if not await runs.applied_steps(runtime.pool, plan_id):
            return None  # nothing built yet: nothing to keep
        try:
            found = await preview.compute_preview(
                runtime.pool, preview.DomainServices.of(runtime.settings, who), who.project_id, plan_id, version
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


def _view(s: ProbeStatus) -> ProbeView:
    return ProbeView(
        probe_id=s.probe_id,
        targets=s.targets,
        count=s.count,
        answered=s.answered,
        complete=s.complete,
        missing=s.missing,
    )


@router.post("/v1/probes", status_code=202, response_model=ProbeView, tags=["self-check"], responses=errors(429))
async def start_probe(body: ProbeRequest, request: Request, who: Reader) -> ProbeView:
    """Ask domain services to answer through Kafka; poll GET /v1/probes/{id} until ``complete``.

    Accepted even while Kafka is down: the commands wait in the outbox and go out when it is back.
    """
    return _view(await service.start_probe(request.app.state.runtime.pool, body.targets, body.count))


@router.get("/v1/probes/{probe_id}", response_model=ProbeView, tags=["self-check"])
async def get_probe(probe_id: UUID, request: Request, who: Reader) -> ProbeView:
    """How many answers each target service has sent for a probe."""
    return _view(await service.probe_status(request.app.state.runtime.pool, probe_id))


# --- plans ---------------------------------------------------------------------------------------

_DOCUMENT_BODY: dict[str, Any] = {
    **checked_beyond_schema(
        "references between entries, overlapping CIDRs, dependency cycles, parameter values and the plan's size",
        "flavors and images against the cloud (when the compute service answers)",
    ),
    "requestBody": {
        "required": True,
        "description": f"A plan document as JSON or YAML, at most {MAX_DOCUMENT_BYTES} bytes; "
        "its JSON Schema is served at GET /v1/plan-schema",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/yaml": {"schema": {"type": "object"}},
        },
    },
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "The body is not a readable JSON or YAML document"},
    413: {"description": f"The body is larger than {MAX_DOCUMENT_BYTES} bytes"},
    415: {"description": "The Content-Type is neither JSON nor YAML"},
    422: {"model": PlanInvalidView, "description": "The plan breaks the spec: every error with its JSON path"},
}


async def _document(request: Request) -> Any:
    """The body as plain JSON values: JSON or YAML by Content-Type, refused (4xx) when too large or unreadable."""
    fmt = format_of(request.headers.get("content-type"))
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_DOCUMENT_BYTES:
        raise too_large(int(declared))
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_DOCUMENT_BYTES:
            raise too_large()
    # Parsing takes CPU time (measured: 2 s for 1 MiB of YAML); the event loop keeps serving meanwhile.
    return await asyncio.to_thread(parse_document, bytes(body), fmt)


@router.get("/v1/plan-schema", tags=["plans"])
async def get_plan_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of a plan document as written: any constrained value may be a ``{{ template }}``.

    Templates are checked after substitution, so a document that matches this schema can still be refused
    by POST /v1/plans/validate (references, overlapping CIDRs, cycles, parameter values).
    """
    return plan_json_schema()


@router.post(
    "/v1/plans/validate", response_model=PlanCheckView, tags=["plans"], openapi_extra=_DOCUMENT_BODY, responses=_ERRORS
)
async def validate_plan(request: Request, who: Reader) -> PlanCheckView:
    """Check a plan document without storing it: the normalised plan and the steps it compiles to, in an
    order that respects every dependency, or 422 with every error and its JSON path.

    Parameters take their defaults; a parameter without a default is reported as an error. Flavors and
    images are checked against the cloud (422 with the available names) when the compute service answers;
    when it does not, ``warnings`` says the check was not run.
    """
    checked, warnings = await preview.check_live(request.app.state.runtime.settings, await _document(request), who)
    return PlanCheckView.of(checked, warnings)


@router.post(
    "/v1/plans",
    status_code=201,
    response_model=PlanView,
    tags=["plans"],
    openapi_extra=_DOCUMENT_BODY,
    responses={**_ERRORS, 409: {"description": "The project already has a plan of that name"}},
)
async def create_plan(request: Request, response: Response, who: Writer) -> PlanView:
    """Store a valid plan document as version 1 of a new plan, named by the document's ``name``.

    Names are unique among the project's plans that are not deleted. The project is the token's (under
    noauth, the ``X-Project-Id`` header's, ``default`` when absent); the version records the Keystone user.
    A flavor or image the cloud lacks is refused (422); without an answer from the compute service the
    plan is stored and ``warnings`` says the check was not run.
    """
    document = await _document(request)
    _, warnings = await preview.check_live(request.app.state.runtime.settings, document, who)
    plan, version = await service.create_plan(
        request.app.state.runtime.pool, who.project_id, document, created_by=who.user_id
    )
    response.headers["Location"] = f"/v1/plans/{plan.id}"
    return PlanView.of_version(plan, version, warnings)


@router.get("/v1/plans", response_model=PlanList, tags=["plans"])
async def list_plans(
    request: Request,
    who: Reader,
    name: Annotated[str | None, Query(description="Only the plan of this name")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> PlanList:
    """The project's plans, newest first, each with its latest version number."""
    plans = await service.list_plans(request.app.state.runtime.pool, who.project_id, name, limit)
    return PlanList(plans=[PlanSummaryView.of(p) for p in plans])


@router.get("/v1/plans/{plan_id}", response_model=PlanView, tags=["plans"])
async def get_plan(plan_id: UUID, request: Request, who: Reader) -> PlanView:
    """A plan with its latest version's document."""
    return PlanView.of_version(*await service.get_plan(request.app.state.runtime.pool, who.project_id, plan_id))


@router.put(
    "/v1/plans/{plan_id}",
    response_model=PlanView,
    tags=["plans"],
    openapi_extra=_DOCUMENT_BODY,
    responses={**_ERRORS, 404: {"description": "No such plan in the project"}},
)
async def update_plan(plan_id: UUID, request: Request, who: Writer) -> PlanView:
    """Store a valid document as the plan's next version; earlier versions stay readable.

    The document must keep the plan's name. Sending the same document as the latest version again
    changes nothing and answers that version, so a retried PUT does not add versions.
    """
    document = await _document(request)
    _, warnings = await preview.check_live(request.app.state.runtime.settings, document, who)
    plan, version = await service.update_plan(
        request.app.state.runtime.pool, who.project_id, plan_id, document, created_by=who.user_id
    )
    return PlanView.of_version(plan, version, warnings)


@router.delete("/v1/plans/{plan_id}", status_code=204, tags=["plans"])
async def delete_plan(plan_id: UUID, request: Request, who: Writer) -> Response:
    """Delete the plan record (its versions are kept, its name becomes free); nothing in the cloud changes.

    Deleting a plan that has runs will be refused once runs exist; destroying what a plan built will be a run.
    """
    await service.delete_plan(request.app.state.runtime.pool, who.project_id, plan_id)
    return Response(status_code=204)


@router.get("/v1/plans/{plan_id}/versions", response_model=PlanVersionList, tags=["plans"])
async def list_plan_versions(plan_id: UUID, request: Request, who: Reader) -> PlanVersionList:
    """Every version of a plan, oldest first, without documents."""
    plan, versions = await service.list_versions(request.app.state.runtime.pool, who.project_id, plan_id)
    return PlanVersionList(plan_id=plan.id, name=plan.name, versions=[PlanVersionView.of(v) for v in versions])


@router.get("/v1/plans/{plan_id}/versions/{version}", response_model=PlanView, tags=["plans"])
async def get_plan_version(
    plan_id: UUID,
    version: Annotated[int, Path(ge=1)],
    request: Request,
    who: Reader,
) -> PlanView:
    """A plan with the document of one of its versions."""
    return PlanView.of_version(
        *await service.get_plan(request.app.state.runtime.pool, who.project_id, plan_id, version)
    )


# --- plan runs -----------------------------------------------------------------------------------------


@router.post(
    "/v1/plans/{plan_id}/runs",
    status_code=202,
    response_model=RunView,
    tags=["runs"],
    responses={
        **errors(429),
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
    if body.preview_id is not None and body.action != "apply":
        raise InvalidInput("preview_id applies to an apply; leave it out for a destroy", field="preview_id")
    # 404 for another project's plan (or a missing version) before anything is read or delegated
    version = (await service.get_plan(runtime.pool, who.project_id, plan_id, body.version))[1].version
    fresh: dict[str, Any] | None = None
    if body.preview_id is not None:
        fresh = await preview.ensure_preview_current(
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
        run_id = await runs.start_run(
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
    return RunView.of(await runs.get_run(runtime.pool, who.project_id, run_id))


@router.get("/v1/plans/{plan_id}/runs", response_model=RunList, tags=["runs"])
async def list_plan_runs(
    plan_id: UUID,
    request: Request,
    who: Reader,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> RunList:
    """A plan's runs, newest first (without their steps)."""
    found = await runs.list_runs(request.app.state.runtime.pool, who.project_id, plan_id, limit)
    return RunList(runs=[RunView.of(r) for r in found])


@router.get("/v1/runs/{run_id}", response_model=RunView, tags=["runs"])
async def get_run(run_id: UUID, request: Request, who: Reader) -> RunView:
    """A run and every step: state, what the cloud last said, outputs, and the cloud's error with a hint."""
    return RunView.of(await runs.get_run(request.app.state.runtime.pool, who.project_id, run_id))


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
    await runs.cancel_run(runtime.pool, who.project_id, run_id, runtime.settings.step_timeout_seconds)
    return RunView.of(await runs.get_run(runtime.pool, who.project_id, run_id))


@router.post(
    "/v1/runs/{run_id}/resume",
    status_code=202,
    response_model=RunView,
    tags=["runs"],
    responses={
        **errors(429),
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
    version = body.version if body else None
    delegation = _delegation(request)
    await runs.get_run(runtime.pool, who.project_id, run_id)  # 404 before anything is delegated
    trust_id = await delegation.delegate(who, f"resuming run {run_id}")
    try:
        await runs.resume_run(
            runtime.pool, who.project_id, run_id, version, runtime.settings.step_timeout_seconds, trust_id
        )
    except BaseException:
        if trust_id is not None:
            await delegation.revoke(trust_id)
        raise
    return RunView.of(await runs.get_run(runtime.pool, who.project_id, run_id))
