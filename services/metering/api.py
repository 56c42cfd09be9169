"""Metering HTTP API. Endpoints whose capability is not built yet answer 501."""

from __future__ import annotations

from fastapi import APIRouter

from shared.http import errors, not_implemented

router = APIRouter(prefix="/v1/metering", tags=["metering"])
ARRIVES_WITH = "the metering issue (not filed yet)"


@router.get("/usage", responses=errors(501))
async def list_usage() -> None:
    """List usage records (not implemented yet: answers 501)."""
    not_implemented("usage records", ARRIVES_WITH)


@router.get("/assets", responses=errors(501))
async def list_assets() -> None:
    """List asset records (not implemented yet: answers 501)."""
    not_implemented("asset records", ARRIVES_WITH)
