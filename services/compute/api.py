"""Compute HTTP API. Endpoints whose capability is not built yet answer 501."""

from __future__ import annotations

from fastapi import APIRouter

from shared.http import not_implemented

router = APIRouter(prefix="/v1/compute", tags=["compute"])
ARRIVES_WITH = "issue #4 (plans run on real OpenStack)"


@router.get("/servers")
async def list_servers() -> None:
    """List servers (not implemented yet: answers 501)."""
    not_implemented("servers", ARRIVES_WITH)


@router.get("/flavors")
async def list_flavors() -> None:
    """List flavors (not implemented yet: answers 501)."""
    not_implemented("flavors", ARRIVES_WITH)


@router.get("/images")
async def list_images() -> None:
    """List images (not implemented yet: answers 501)."""
    not_implemented("images", ARRIVES_WITH)
