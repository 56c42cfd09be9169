"""Planner HTTP API for the platform self-check."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, Request

from services.planner.probes import service
from services.planner.probes.domain import ProbeStatus
from services.planner.probes.schemas import ProbeRequest, ProbeView
from shared.auth import Reader
from shared.limits import RATE_LIMITED, check_probe_count, limited

router = APIRouter()


def _view(s: ProbeStatus) -> ProbeView:
    return ProbeView(
        probe_id=s.probe_id,
        targets=s.targets,
        count=s.count,
        answered=s.answered,
        complete=s.complete,
        missing=s.missing,
    )


@router.post(
    "/v1/probes",
    status_code=202,
    response_model=ProbeView,
    tags=["self-check"],
    dependencies=[limited("probe")],
    responses=RATE_LIMITED,
)
async def start_probe(body: ProbeRequest, request: Request, who: Reader) -> ProbeView:
    """Ask domain services to answer through Kafka; poll GET /v1/probes/{id} until ``complete``.

    Accepted even while Kafka is down: the commands wait in the outbox and go out when it is back.
    ``count`` above 1 needs the admin role.
    """
    check_probe_count(who, body.count, request.app.state.runtime.settings)
    return _view(await service.start_probe(request.app.state.runtime.pool, body.targets, body.count))


@router.get("/v1/probes/{probe_id}", response_model=ProbeView, tags=["self-check"])
async def get_probe(probe_id: UUID, request: Request, who: Reader) -> ProbeView:
    """How many answers each target service has sent for a probe."""
    return _view(await service.probe_status(request.app.state.runtime.pool, probe_id))
