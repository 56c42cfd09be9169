"""Storage HTTP API. Endpoints whose capability is not built yet answer 501."""

from __future__ import annotations

from fastapi import APIRouter

from shared.http import not_implemented

router = APIRouter(prefix="/v1/storage", tags=["storage"])
ARRIVES_WITH = "issue #4 (plans run on real OpenStack)"


@router.get("/volumes")
async def list_volumes() -> None:
    """List volumes (not implemented yet: answers 501)."""
    not_implemented("volumes", ARRIVES_WITH)


@router.get("/containers")
async def list_containers() -> None:
    """List object containers (not implemented yet: answers 501)."""
    not_implemented("object containers", ARRIVES_WITH)
