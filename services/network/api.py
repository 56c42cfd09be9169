"""Network HTTP API. Endpoints whose capability is not built yet answer 501."""

from __future__ import annotations

from fastapi import APIRouter

from shared.http import not_implemented

router = APIRouter(prefix="/v1/network", tags=["network"])
ARRIVES_WITH = "issue #4 (plans run on real OpenStack)"


@router.get("/networks")
async def list_networks() -> None:
    """List networks (not implemented yet: answers 501)."""
    not_implemented("networks", ARRIVES_WITH)


@router.get("/routers")
async def list_routers() -> None:
    """List routers (not implemented yet: answers 501)."""
    not_implemented("routers", ARRIVES_WITH)


@router.get("/security-groups")
async def list_security_groups() -> None:
    """List security groups (not implemented yet: answers 501)."""
    not_implemented("security groups", ARRIVES_WITH)


@router.get("/floating-ips")
async def list_floating_ips() -> None:
    """List floating IPs (not implemented yet: answers 501)."""
    not_implemented("floating IPs", ARRIVES_WITH)


@router.get("/load-balancers")
async def list_load_balancers() -> None:
    """List load balancers (not implemented yet: answers 501)."""
    not_implemented("load balancers", ARRIVES_WITH)
