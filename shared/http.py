"""What every service's FastAPI app has: health, readiness, metrics, one error format, and an OpenAPI
document that says what the API really answers.

Every 4xx and 5xx body is :class:`~shared.errors.ErrorBody`: a :class:`DcostackError`, a request that
breaks the schema (422, with every field path), an unknown path (404) and a method the path does not take
(405, with ``Allow`` listing every method the path does take). :func:`declare_responses` writes that into
the document for every route of the app, whenever its router was included: what each route answers is
inferred from the operation (one that needs a caller: 401, 403, 422, 503; parameters or a body: 422; a
body: 400) plus
what the route itself declares with :func:`errors` (404, 409, 429, ...)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.auth import PROJECT_HEADER, PROJECT_ID_PATTERN, TOKEN_HEADER
from shared.config import AuthStrategy
from shared.errors import DcostackError, ErrorBody, NotImplementedYet
from shared.metrics import HTTP_DURATION, HTTP_REQUESTS

if TYPE_CHECKING:
    from shared.runtime import Runtime

#: What each error status means in every DCOSTACK API; a route's own description may be more precise.
ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "The body cannot be read (not JSON or YAML, not UTF-8, empty, too deep)",
    401: f"No Keystone token in {TOKEN_HEADER}, or one Keystone does not accept (expired, revoked, another cloud)",
    403: "The token's roles do not allow this call, or the token is not scoped to a project",
    404: "Not found in the caller's project",
    409: "Conflicts with the current state of what it changes",
    413: "The body is too large",
    415: "The Content-Type is not one this operation reads",
    422: "A value breaks a constraint, or a check the schema cannot express; `errors` names every field path",
    429: "A per-project rate or concurrency limit was reached; `detail` names the limit and Retry-After says "
    "when to try again",
    501: "The capability is not implemented yet; `detail` says which release brings it",
    502: "The cloud answered with an error: `detail` has its own words and what to change",
    503: "A dependency (PostgreSQL, Kafka, Keystone, the cloud or another DCOSTACK service) did not answer; "
    "`detail` names it, and retrying later may help",
}
#: The statuses every route that needs a caller (``shared.auth.Reader``/``Writer``) may answer: no or a bad
#: token, a token without the roles or a project scope, an invalid X-Project-Id (noauth), Keystone down.
CALLER_ERRORS = (401, 403, 422, 503)
_RETRY_AFTER_HEADER = {
    "Retry-After": {"description": "Seconds to wait before trying again", "schema": {"type": "integer", "minimum": 0}}
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status answered with :class:`ErrorBody` and its usual meaning.

    Where a status means something more precise on a route, add its own description:
    ``{**errors(404, 429), 409: {"description": "The run already ended"}}`` (the body becomes ErrorBody)."""
    return {status: {"model": ErrorBody, "description": ERROR_DESCRIPTIONS.get(status, "")} for status in statuses}


#: The OpenAPI extension listing what an operation checks beyond its schema (references between fields,
#: live checks against the cloud): a request the schema accepts may still be refused with 422 for these.
BEYOND_SCHEMA = "x-dcostack-checked-beyond-schema"


def checked_beyond_schema(*checks: str) -> dict[str, Any]:
    """``openapi_extra=`` for a route that refuses (422) some schema-valid requests: each check, in words."""
    return {BEYOND_SCHEMA: list(checks)}


class Health(BaseModel):
    status: str = Field(description="ok")
    service: str


class Readiness(BaseModel):
    status: str = Field(description="ready, or not ready")
    service: str
    checks: dict[str, str] = Field(description="Each dependency and background task: ok, or what failed")


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
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            headers["Retry-After"] = str(max(0, int(retry_after + 0.999)))
        return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        literal = literal_methods(request.app, request.url.path)
        if literal and request.method not in literal:  # e.g. PUT /v1/plans/validate is not PUT /v1/plans/{id}
            return http_error(request, StarletteHTTPException(405, headers={"Allow": ", ".join(sorted(literal))}))
        return JSONResponse(validation_body(exc.errors()), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return http_error(request, exc)

    @app.middleware("http")
    async def _metrics(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        # The router records the matched route in the scope; its template keeps label cardinality low.
        route = str(getattr(request.scope.get("route"), "path", "unmatched"))
        HTTP_REQUESTS.labels(service, request.method, route, str(response.status_code)).inc()
        HTTP_DURATION.labels(service, request.method, route).observe(time.perf_counter() - started)
        return response

    @app.get("/healthz", tags=["operations"], response_model=Health)
    async def healthz() -> dict[str, str]:
        """Liveness: the process runs and its event loop answers."""
        return {"status": "ok", "service": service}

    @app.get(
        "/readyz",
        tags=["operations"],
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "PostgreSQL, Kafka or a task is not ok: which one"}},
    )
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

    declare_responses(app)
    return app


def validation_body(found: Any) -> dict[str, Any]:
    """The :class:`ErrorBody` of a request that breaks the schema: every error with its field path."""
    items = [
        {"path": ".".join(str(p) for p in e["loc"]), "message": e["msg"], "type": e["type"]}
        for e in found  # pydantic's error list
    ]
    body: dict[str, Any] = {"error": "InvalidInput", "detail": _validation_detail(items), "errors": items}
    if items:
        body["field"] = items[0]["path"]
    return body


def _validation_detail(items: list[dict[str, Any]]) -> str:
    if len(items) == 1:
        return f"{items[0]['path']}: {items[0]['message']}"
    return f"{len(items)} invalid fields: " + "; ".join(f"{i['path']}: {i['message']}" for i in items[:5])


def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """404 and 405 from the router (and any other HTTPException) as :class:`ErrorBody`. A 405 lists in
    ``Allow`` every method the path takes: Starlette's own lists only those of the first route matched."""
    headers = dict(exc.headers or {})
    path = request.url.path
    if exc.status_code == 405:
        given = {m.strip() for m in headers.get("Allow", "").split(",") if m.strip()}
        # a path of its own (/v1/plans/validate) takes only its methods, not those of /v1/plans/{plan_id}
        allowed = sorted(literal_methods(request.app, path) or given | methods_of(request.app, path))
        headers["Allow"] = ", ".join(allowed)
        body = {
            "error": "MethodNotAllowed",
            "detail": f"{path} does not take {request.method}; it takes {', '.join(allowed)}",
        }
    elif exc.status_code == 404:
        body = {"error": "NotFound", "detail": f"no operation at {path}; the API is described at /openapi.json"}
    else:  # e.g. FastAPI's 400 for a body it cannot decode
        body = {"error": HTTPStatus(exc.status_code).phrase.replace(" ", ""), "detail": str(exc.detail)}
    return JSONResponse(body, status_code=exc.status_code, headers=headers)


def methods_of(app: FastAPI, path: str) -> set[str]:
    """Every method the OpenAPI document gives ``path`` (HEAD with GET, as Starlette serves it)."""
    found: set[str] = set()
    for template, item in app.openapi().get("paths", {}).items():
        pattern = "^" + re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path):
            found.update(m.upper() for m in item if m in _METHODS)
    if "GET" in found:
        found.add("HEAD")
    return found


def literal_methods(app: FastAPI, path: str) -> set[str]:
    """The methods of the document's path that is exactly ``path`` (no parameters); empty when none is."""
    item = app.openapi().get("paths", {}).get(path, {})
    found = {m.upper() for m in item if m in _METHODS}
    return found | {"HEAD"} if "GET" in found else found


_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def declare_responses(app: FastAPI) -> None:
    """Make ``app.openapi()`` declare, for every operation of the app (whenever its router was included),
    every error status it answers, each with :class:`ErrorBody` (see the module docstring)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            settings = app.state.runtime.settings
            app.openapi_schema = declared(generate(), noauth=settings.auth_strategy == AuthStrategy.NOAUTH)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def declared(schema: dict[str, Any], *, noauth: bool = False) -> dict[str, Any]:
    """``schema`` with every error response of every operation as :class:`ErrorBody`: those the route
        declared, plus 401/403/422/503 where a caller is needed (the operation has ``security``) and 422 where
        there are parameters or a body, and 404 where a caller names a thing by a path parameter (it is looked up in
    the caller's project). FastAPI's own ``HTTPValidationError`` is gone: 422 is ErrorBody too.

    A service running ``noauth`` (development and tests) serves the document of what it then is: no token, and
    the optional ``X-Project-Id`` header naming the project; the published documents are those of Keystone."""
    components = schema.setdefault("components", {})
    models = components.setdefault("schemas", {})
    error_schema = ErrorBody.model_json_schema(ref_template=REF + "{model}")
    models.update(error_schema.pop("$defs", {}))
    models["ErrorBody"] = error_schema
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            if method not in _METHODS:
                continue
            statuses = {int(s) for s in operation.get("responses", {}) if s.isdigit() and int(s) >= 400}
            if operation.get("security"):
                statuses.update(CALLER_ERRORS)
                if any(p.get("in") == "path" for p in operation.get("parameters", [])):
                    statuses.add(404)
                if noauth:
                    del operation["security"]
                    operation.setdefault("parameters", []).append(_PROJECT_PARAMETER)
            if operation.get("parameters") or operation.get("requestBody"):
                statuses.add(422)
            if operation.get("requestBody"):
                statuses.add(400)  # bytes that are not text in the body's encoding: FastAPI cannot parse them
            beyond = operation.get(BEYOND_SCHEMA)
            if beyond:
                statuses.add(422)
                operation["description"] = (
                    operation.get("description", "") + "\n\nChecked beyond the schema (422): " + "; ".join(beyond) + "."
                ).strip()
            responses = operation.setdefault("responses", {})
            for status in sorted(statuses):
                if path == "/readyz" and status == 503:
                    continue  # readiness answers its own body, which says what is not ready
                found = responses.get(str(status), {})
                described = found.get("description")
                if not described or described in _FASTAPI_DESCRIPTIONS or described == HTTPStatus(status).phrase:
                    described = ERROR_DESCRIPTIONS.get(status, HTTPStatus(status).phrase)
                response: dict[str, Any] = {
                    "description": described,
                    "content": {"application/json": {"schema": {"$ref": REF + "ErrorBody"}}},
                }
                if status == 429:
                    response["headers"] = {**_RETRY_AFTER_HEADER, **found.get("headers", {})}
                responses[str(status)] = response
            operation["responses"] = dict(sorted(responses.items()))
    if noauth:
        components.pop("securitySchemes", None)
    candidates = ["HTTPValidationError", *_replaced_models(models)]
    while candidates:  # drop what nothing refers to any more, then what only those referred to
        text = json.dumps(schema)
        unused = [name for name in candidates if name in models and f'"{REF}{name}"' not in text]
        for name in unused:
            models.pop(name)
        candidates = [name for name in models if name not in _KEPT] if unused else []
    components["schemas"] = dict(sorted(models.items()))
    return schema


def _replaced_models(models: dict[str, Any]) -> list[str]:
    """Error models a route named that :class:`ErrorBody` replaced (dropped when nothing else uses them)."""
    return [name for name, model in models.items() if set(model.get("properties", {})) >= {"error", "detail"}
            and name != "ErrorBody"]  # fmt: skip


REF = "#/components/schemas/"
_PROJECT_PARAMETER = {
    "name": PROJECT_HEADER,
    "in": "header",
    "required": False,
    "description": "The project to act in (noauth only; `default` when absent)",
    "schema": {"type": "string", "pattern": PROJECT_ID_PATTERN},
}
#: Models a service may publish without referring to them itself.
_KEPT = {"ErrorBody", "FieldError"}
_FASTAPI_DESCRIPTIONS = {"Validation Error", "Additional Response"}


def not_implemented(capability: str, arrives_with: str) -> Any:
    """Raise the 501 an endpoint answers until its capability is built; it names what is missing."""
    raise NotImplementedYet(
        f"{capability} is not implemented yet; it arrives with {arrives_with}",
        capability=capability,
    )
