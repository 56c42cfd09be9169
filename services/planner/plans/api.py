"""Planner HTTP API for plans and their versions."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Path, Query, Request, Response

from services.planner.plans import service
from services.planner.plans.documents import MAX_DOCUMENT_BYTES, format_of, parse_document, too_large
from services.planner.plans.schemas import (
    PlanCheckView,
    PlanInvalidView,
    PlanList,
    PlanSummaryView,
    PlanVersionList,
    PlanVersionView,
    PlanView,
)
from services.planner.plans.spec import plan_json_schema
from services.planner.previews.live import check_live
from shared.auth import Reader, Writer
from shared.http import checked_beyond_schema
from shared.logging import get_logger

router = APIRouter()
log = get_logger(__name__)


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
    checked, warnings = await check_live(request.app.state.runtime.settings, await _document(request), who)
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
    _, warnings = await check_live(request.app.state.runtime.settings, document, who)
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
    _, warnings = await check_live(request.app.state.runtime.settings, document, who)
    plan, version = await service.update_plan(
        request.app.state.runtime.pool, who.project_id, plan_id, document, created_by=who.user_id
    )
    return PlanView.of_version(plan, version, warnings)


@router.delete("/v1/plans/{plan_id}", status_code=204, tags=["plans"])
async def delete_plan(plan_id: UUID, request: Request, who: Writer) -> Response:
    """Delete the plan record (its versions are kept, its name becomes free); nothing in the cloud changes.

    Its runs stay readable at GET /v1/plans/{plan_id}/runs. What the plan built stays in the cloud: remove
    it first with a destroy run (POST /v1/plans/{plan_id}/runs with ``action: destroy``).
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
