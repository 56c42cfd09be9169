"""What every service's FastAPI app has: health, readiness, metrics, and one error format."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared.errors import DcostackError, NotImplementedYet
from shared.metrics import HTTP_DURATION, HTTP_REQUESTS

if TYPE_CHECKING:
    from shared.runtime import Runtime


def create_base_app(runtime: Runtime, *, title: str, description: str) -> FastAPI:
    app = FastAPI(title=title, description=description, version="0.1.0")
    app.state.runtime = runtime
    service = runtime.name

    @app.exception_handler(DcostackError)
    async def _dcostack_error(_: Request, exc: DcostackError) -> JSONResponse:
        headers = dict(getattr(exc, "headers", None) or {})  # e.g. Retry-After of a 429 (shared/limits.py)
        keystone = getattr(runtime.settings, "keystone_url", None)
        if exc.status_code == 401 and keystone:  # where to get a token, as Keystone's own middleware says
            headers["WWW-Authenticate"] = f'Keystone uri="{keystone}"'
        return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"path": ".".join(str(p) for p in e["loc"]), "message": e["msg"], "type": e["type"]} for e in exc.errors()
        ]
        return JSONResponse(
            {"error": "InvalidInput", "detail": f"{len(errors)} invalid field(s)", "errors": errors},
            status_code=422,
        )

    @app.middleware("http")
    async def _metrics(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        # The router records the matched route in the scope; its template keeps label cardinality low.
        route = str(getattr(request.scope.get("route"), "path", "unmatched"))
        HTTP_REQUESTS.labels(service, request.method, route, str(response.status_code)).inc()
        HTTP_DURATION.labels(service, request.method, route).observe(time.perf_counter() - started)
        return response

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process runs and its event loop answers."""
        return {"status": "ok", "service": service}

    @app.get("/readyz", tags=["operations"])
    async def readyz() -> JSONResponse:
        """Readiness: 200 only when PostgreSQL and Kafka both answer, else 503 with what failed."""
        checks = await runtime.readiness()
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "service": service, "checks": checks},
            status_code=200 if ok else 503,
        )

    @app.get("/metrics", tags=["operations"], include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def not_implemented(capability: str, arrives_with: str) -> Any:
    """Raise the 501 an endpoint answers until its capability is built; it names what is missing."""
    raise NotImplementedYet(
        f"{capability} is not implemented yet; it arrives with {arrives_with}",
        capability=capability,
    )
