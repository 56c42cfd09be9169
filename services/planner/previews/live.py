"""The client of the domain services' read APIs: the live cloud a preview (and the plan checks at
validation) compare the plan with."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import httpx

from services.planner.plans import service as plans_service
from services.planner.plans.domain import CheckedPlan, PlanInvalid
from services.planner.plans.spec import Plan, PlanError
from services.planner.previews.diff import Live
from services.planner.settings import PlannerSettings
from shared.auth import Caller
from shared.errors import DependencyUnavailable
from shared.logging import get_logger

log = get_logger(__name__)

DOMAIN_SERVICES = ("compute", "network", "storage")


def url_setting(name: str) -> str:
    return f"DCOSTACK_{name.upper()}_URL"


# --- asking the domain services ------------------------------------------------------------------


@dataclass(frozen=True)
class DomainServices:
    """Where the compute, network and storage read APIs are, and how long to wait for them."""

    urls: dict[str, str]
    timeout: float = 20.0
    #: who asks: the caller's token (or, under noauth, project), so the services read as the caller
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, settings: PlannerSettings, caller: Caller | None = None) -> DomainServices:
        return cls(
            {"compute": settings.compute_url, "network": settings.network_url, "storage": settings.storage_url},
            settings.domain_timeout_seconds,
            caller.forward_headers if caller else {},
        )

    async def get(self, client: httpx.AsyncClient, name: str, path: str, **params: str) -> dict[str, Any]:
        """``GET <service>/v1/<service>/<path>``; any failure is a 503 naming the service and its URL setting."""
        base = self.urls[name].rstrip("/")
        url = f"{base}/v1/{name}/{path}"
        where = f"the {name} service at {base} ({url_setting(name)})"
        try:
            r = await client.get(url, params=params, timeout=self.timeout, headers=self.headers)
        except httpx.TimeoutException as exc:
            raise DependencyUnavailable(
                f"{where} did not answer GET /v1/{name}/{path} within {self.timeout:.0f}s ({type(exc).__name__})",
                service=name,
            ) from exc
        except httpx.HTTPError as exc:
            raise DependencyUnavailable(
                f"{where} is not reachable: {exc or type(exc).__name__}; start it or point {url_setting(name)} at it",
                service=name,
            ) from exc
        try:
            body = r.json()
        except ValueError:
            body = None
        if r.status_code != 200 or not isinstance(body, dict):
            detail = body.get("detail") if isinstance(body, dict) else r.text[:200]
            raise DependencyUnavailable(
                f"{where} answered HTTP {r.status_code} to GET /v1/{name}/{path}: {detail}", service=name
            )
        return body


async def fetch_live(services: DomainServices, client: httpx.AsyncClient, plan_id: UUID) -> Live:
    """Every read a preview needs, all at once (each domain service answers from a thread per read)."""
    pid = str(plan_id)
    reads = {
        "limits": ("compute", "limits", {}),
        "flavors": ("compute", "flavors", {}),
        "images": ("compute", "images", {}),
        "capacity": ("compute", "capacity", {}),
        "compute_resources": ("compute", "plan-resources", {"plan_id": pid}),
        "network_quota": ("network", "quota", {}),
        "external_networks": ("network", "external-networks", {}),
        "network_resources": ("network", "plan-resources", {"plan_id": pid}),
        "storage_quota": ("storage", "quota", {}),
        "storage_resources": ("storage", "plan-resources", {"plan_id": pid}),
    }
    timings: dict[str, float] = {}

    async def timed(name: str, path: str, params: dict[str, str]) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            return await services.get(client, name, path, **params)
        finally:
            timings[f"{name}/{path}"] = round((time.perf_counter() - started) * 1000, 1)

    tasks = {key: asyncio.create_task(timed(*read)) for key, read in reads.items()}
    try:
        await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks.values():
            task.cancel()
    for task in tasks.values():
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]  # the first failure: it names its service
    bodies = {}
    for key, (_, path, _) in reads.items():
        body = tasks[key].result()
        bodies[key] = (body.get(path), body.get("not_run"))
    return Live(
        limits=bodies["limits"][0] or {},
        flavors=bodies["flavors"][0] or [],
        images=bodies["images"][0] or [],
        capacity=bodies["capacity"][0],
        capacity_not_run=bodies["capacity"][1],
        compute_resources=bodies["compute_resources"][0] or [],
        network_quota=bodies["network_quota"][0] or {},
        external_networks=bodies["external_networks"][0] or [],
        network_resources=bodies["network_resources"][0] or [],
        storage_quota=bodies["storage_quota"][0] or {},
        storage_resources=bodies["storage_resources"][0] or [],
        timings_ms=timings,
    )


# --- live names at validate, create and update (flavors and images) ------------------------------------


@dataclass(frozen=True)
class CatalogError(PlanError):
    """A plan error about a name the cloud does not know, with the names it does know."""

    available: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "available": list(self.available)}


#: Validation waits this long for the compute service; without an answer the plan is kept with a warning.
CATALOG_TIMEOUT_SECONDS = 5.0


async def check_catalog(
    settings: PlannerSettings, plan: Plan, client: httpx.AsyncClient | None = None, caller: Caller | None = None
) -> list[str]:
    """Refuse a plan naming a flavor or image the cloud does not have (:class:`PlanInvalid`, 422, each error
    with its JSON path and the available names). When the compute service cannot be asked, return a
    warning saying the live check was not run; the plan is still accepted."""
    if not plan.instance_groups:
        return []
    services = DomainServices(
        {"compute": settings.compute_url},
        min(settings.domain_timeout_seconds, CATALOG_TIMEOUT_SECONDS),
        caller.forward_headers if caller else {},
    )
    http = client or httpx.AsyncClient()
    try:
        flavors_body, images_body = await asyncio.gather(
            services.get(http, "compute", "flavors"), services.get(http, "compute", "images")
        )
    except DependencyUnavailable as exc:
        return [f"flavors and images were not checked against the cloud: {exc.detail}"]
    finally:
        if client is None:
            await http.aclose()
    flavors = flavors_body.get("flavors") or []
    images = images_body.get("images") or []
    flavor_names = {f["name"] for f in flavors} | {str(f["id"]) for f in flavors}
    image_names = {i["name"] for i in images if i.get("status") == "active"} | {
        i["id"] for i in images if i.get("status") == "active"
    }
    shown_flavors = tuple(sorted({f["name"] for f in flavors}))
    shown_images = tuple(sorted({i["name"] for i in images if i.get("status") == "active" and i.get("name")}))
    errors: list[PlanError] = []
    for i, g in enumerate(plan.instance_groups):
        if g.flavor not in flavor_names:
            errors.append(
                CatalogError(
                    f"$.instance_groups[{i}].flavor",
                    f"flavor {g.flavor!r} does not exist in the cloud; available: {', '.join(shown_flavors) or 'none'}",
                    shown_flavors,
                )
            )
        if g.image not in image_names:
            errors.append(
                CatalogError(
                    f"$.instance_groups[{i}].image",
                    f"image {g.image!r} is not an active image in the cloud; "
                    f"available: {', '.join(shown_images) or 'none'}",
                    shown_images,
                )
            )
    if errors:
        raise PlanInvalid(errors)
    return []


async def check_live(
    settings: PlannerSettings, document: Any, caller: Caller | None = None
) -> tuple[CheckedPlan, list[str]]:
    """Validate a document (:class:`PlanInvalid` with every error's path) and then its flavors and images
    against the cloud (:func:`check_catalog`); the checked plan and the warnings about checks not run."""
    checked = await plans_service.check_document(document)
    return checked, await check_catalog(settings, checked.plan, caller=caller)
