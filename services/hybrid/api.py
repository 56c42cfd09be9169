"""Hybrid HTTP API. Endpoints whose capability is not built yet answer 501."""

from __future__ import annotations

from fastapi import APIRouter

from shared.http import errors, not_implemented

router = APIRouter(prefix="/v1/hybrid", tags=["hybrid"])
ARRIVES_WITH = "the hybrid-cloud issue (not filed yet)"


@router.get("/providers", responses=errors(501))
async def list_providers() -> None:
    """List public-cloud providers (not implemented yet: answers 501)."""
    not_implemented("public-cloud providers", ARRIVES_WITH)


@router.get("/inventory", responses=errors(501))
async def list_inventory() -> None:
    """List the unified inventory (not implemented yet: answers 501)."""
    not_implemented("the unified inventory", ARRIVES_WITH)
