"""Read APIs over what a domain service owns in the cloud: the same adapter the service acts with,
called in a thread. With Keystone (``DCOSTACK_AUTH_STRATEGY=keystone``) a read acts as its caller: the
caller's validated token (shared/auth.py) is the credential, so it sees the caller's project and nothing
else. Under noauth it reads in the project of the service's cloud (clouds.yaml entry ``DCOSTACK_CLOUD``).

Each read is a method of the service's adapter Protocol (``{"flavors": ComputeCloud.list_flavors}``): mypy
checks that it exists, its docstring is the endpoint's description, and its return type (frozen models of
shared/executor/models.py) is the response model. The JSON is ``{<path>: <what the method returned>}``,
with only the keys the adapter set. A read may take query parameters: those the method names as keyword
arguments are passed on as strings (``GET /v1/compute/plan-resources?plan_id=...`` calls
``plan_resources(plan_id=...)``). A read may
use another clouds.yaml entry than ``DCOSTACK_CLOUD`` (``cloud_setting``), e.g. an admin credential for
Placement; when that setting is unset the read answers ``{<path>: null, "not_run": <why>}`` instead of
guessing, so a caller can say the check was not run and why."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, get_type_hints
from uuid import UUID

from cachetools import TTLCache
from fastapi import APIRouter, Request
from pydantic import ConfigDict, Field, create_model

from shared.auth import TOKEN_CACHE_SECONDS, Caller, Reader, v3_url
from shared.config import ENV_PREFIX, ServiceSettings
from shared.errors import DcostackError, DependencyUnavailable, InvalidInput
from shared.http import errors

#: Reads run on threads of their own: the default executor's few threads (cpu count + 4) are held by step
#: work waiting on the cloud while a run is in flight, and a preview's reads must not queue behind it
#: (measured during a 100-server destroy: 23 s for Nova's limits on the default executor).
_READ_THREADS = ThreadPoolExecutor(max_workers=16, thread_name_prefix="cloud-read")


#: The schema of each query parameter an adapter's read may take (any other is a plain string).
QUERY_SCHEMAS: dict[str, dict[str, Any]] = {
    "plan_id": {"type": "string", "format": "uuid", "description": "Only what this plan built"},
}


def cloud_read_router(
    service: str,
    adapter: Callable[[Any], Any],
    reads: dict[str, Callable[..., Any]],
    *,
    cloud_setting: str = "cloud",
    unset_reason: str = "",
    optional: bool = False,
) -> APIRouter:
    """``GET /v1/<service>/<path>`` for each ``path → Protocol method`` in ``reads``, called on ``adapter``
    (the implementation, built from an openstacksdk connection).

        ``cloud_setting`` names the settings field holding the clouds.yaml entry the adapter connects to;
        ``unset_reason`` is what an unset one means for the caller. An ``optional`` read that fails (e.g. the
        entry's credential may not read Placement) answers ``{<path>: null, "not_run": <the error>}``."""
    router = APIRouter(prefix=f"/v1/{service}", tags=[service])
    lock = threading.Lock()
    variable = ENV_PREFIX + cloud_setting.upper()

    def connected(request: Request, cloud: str, caller: Caller | None) -> Any:
        if caller is not None and caller.token is not None:
            return as_caller(request, caller)
        key = (getattr(adapter, "__qualname__", repr(adapter)), cloud)
        with lock:
            readers: dict[tuple[str, str], Any] = getattr(request.app.state, "cloud_readers", None) or {}
            request.app.state.cloud_readers = readers
            found = readers.get(key)
            if found is None:
                import openstack

                try:
                    found = adapter(openstack.connect(cloud=cloud))
                except Exception as exc:
                    raise DependencyUnavailable(
                        f"cannot connect to cloud {cloud!r}: {exc}; check clouds.yaml and {variable}"
                    ) from exc
                readers[key] = found
            return found

    def as_caller(request: Request, caller: Caller) -> Any:
        assert caller.token is not None
        key = (getattr(adapter, "__qualname__", repr(adapter)), hashlib.sha256(caller.token.encode()).hexdigest())
        with lock:
            mine: TTLCache[tuple[str, str], Any] | None = getattr(request.app.state, "caller_readers", None)
            if mine is None:
                mine = TTLCache(maxsize=1024, ttl=TOKEN_CACHE_SECONDS)
                request.app.state.caller_readers = mine
            found = mine.get(key)
            if found is None:
                found = adapter(connect_as(caller, request.app.state.runtime.settings))
                mine[key] = found
            return found

    def add(path: str, method: Callable[..., Any]) -> None:
        name = method.__name__
        if not callable(getattr(adapter, name, None)):
            raise TypeError(f"{adapter!r} does not implement {method.__qualname__}")
        accepted = _parameters(method)

        async def read(request: Request, who: Reader) -> dict[str, Any]:
            cloud = getattr(request.app.state.runtime.settings, cloud_setting, None)
            # a read of the project acts as the caller; one with a setting of its own (an admin entry
            # for Placement's host capacity, which is not project data) keeps that credential
            caller = who if cloud_setting == "cloud" else None
            if not cloud:
                return {path: None, "not_run": f"{variable} is not set: {unset_reason}".rstrip(": ")}
            kwargs = {k: v for k, v in request.query_params.items() if k in accepted}
            missing = [k for k, required in accepted.items() if required and k not in kwargs]
            if missing:
                raise InvalidInput(f"query parameter {missing[0]!r} is required", field=missing[0])
            if "plan_id" in kwargs:  # a tag value the cloud is asked for: a UUID, as QUERY_SCHEMAS says
                try:
                    kwargs["plan_id"] = str(UUID(kwargs["plan_id"]))
                except ValueError:
                    raise InvalidInput(
                        f"query parameter 'plan_id' is not a plan id (a UUID): {kwargs['plan_id']!r}", field="plan_id"
                    ) from None

            def call() -> Any:
                try:
                    return getattr(connected(request, cloud, caller), name)(**kwargs)
                except DcostackError:
                    raise
                except Exception as exc:
                    raise DependencyUnavailable(f"the cloud did not answer: {exc}") from exc

            try:
                return {path: await asyncio.get_running_loop().run_in_executor(_READ_THREADS, call)}
            except DcostackError as exc:
                if not optional:
                    raise
                return {path: None, "not_run": f"reading it with {variable}={cloud!r} failed: {exc.detail}"}

        doc = inspect.getdoc(method)
        read.__name__ = f"read_{path.replace('-', '_')}"
        read.__doc__ = doc or f"The {path.replace('-', ' ')} in the service's project, read from OpenStack."
        parameters = [
            {"name": k, "in": "query", "required": required, "schema": QUERY_SCHEMAS.get(k, {"type": "string"})}
            for k, required in accepted.items()
        ]  # read from the query string by hand (any adapter's keywords), so declared here
        router.add_api_route(
            f"/{path}",
            read,
            methods=["GET"],
            name=read.__name__,
            response_model=_response_model(service, path, method),
            response_model_exclude_unset=True,
            responses=errors(502),
            openapi_extra={"parameters": parameters},
        )

    for path, method in reads.items():
        add(path, method)
    return router


def connect_as(caller: Caller, settings: ServiceSettings) -> Any:
    """An openstacksdk connection whose credential is the caller's own validated token (no Keystone call:
    Keystone's validation answer has the catalog); region and interface from ``DCOSTACK_SERVICE_CLOUD``."""
    from keystoneauth1 import access, session
    from keystoneauth1.identity.access import AccessInfoPlugin
    from openstack.connection import Connection

    assert caller.token is not None
    assert caller.token_body is not None
    assert settings.keystone_url
    ref = access.create(body={"token": caller.token_body}, auth_token=caller.token)
    region, interface = None, "public"
    if settings.service_cloud:
        import openstack.config

        entry = openstack.config.OpenStackConfig().get_one(cloud=settings.service_cloud)
        region, interface = entry.region_name or None, entry.interface or "public"
    sess = session.Session(auth=AccessInfoPlugin(ref, auth_url=v3_url(settings.keystone_url)))
    return Connection(session=sess, region_name=region, interface=interface)


def _parameters(method: Callable[..., Any]) -> dict[str, bool]:
    """Keyword parameters of ``method`` (name → required), the query parameters a read takes."""
    out: dict[str, bool] = {}
    for name, p in list(inspect.signature(method).parameters.items())[1:]:
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            out[name] = p.default is inspect.Parameter.empty
    return out


def _response_model(service: str, path: str, method: Callable[..., Any]) -> Any:
    """``{<path>: <the method's return type> | null, "not_run": <why>}``: the read's response model."""
    returns = get_type_hints(method)["return"]
    title = "".join(part.title() for part in [service, *path.split("-")])
    return create_model(
        f"{title}Read",
        __config__=ConfigDict(frozen=True, populate_by_name=True),
        value=(returns | None, Field(alias=path)),
        not_run=(str | None, Field(None, description="Why the read was not run (its credential is missing)")),
    )
