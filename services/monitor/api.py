"""Monitor HTTP API. Endpoints whose capability is not built yet answer 501."""

from __future__ import annotations

from fastapi import APIRouter

from shared.http import errors, not_implemented

router = APIRouter(prefix="/v1/monitor", tags=["monitor"])
ARRIVES_WITH = "the monitoring issue (not filed yet)"


@router.get("/alarms", responses=errors(501))
async def list_alarms() -> None:
    """List alarms (not implemented yet: answers 501)."""
    not_implemented("alarms", ARRIVES_WITH)


@router.get("/events", responses=errors(501))
async def list_events() -> None:
    """List event search (not implemented yet: answers 501)."""
    not_implemented("event search", ARRIVES_WITH)


@router.get("/logs", responses=errors(501))
async def list_logs() -> None:
    """List log search (not implemented yet: answers 501)."""
    not_implemented("log search", ARRIVES_WITH)
