"""Who is calling: the cloud's own identity. Every API call carries a Keystone token (``X-Auth-Token``);
the token's project scopes what the caller sees and changes, and its roles say what the caller may do.

- ``reader`` (or any role in the project) may read: list and show plans, runs, previews, resources.
- ``member``, ``manager`` or ``admin`` may also change: create, update and delete plans, preview, apply,
  destroy, scale, cancel and resume runs.

Tokens are validated by Keystone itself (``GET /v3/auth/tokens``, the token validating itself, so no
service credential is needed for it) and the answer is cached for ``TOKEN_CACHE_SECONDS`` (Keystone's
own middleware caches for 300 s by default; a revoked token stays usable here for at most that long).

Under ``DCOSTACK_AUTH_STRATEGY=noauth`` (development and tests only; refused in production by the
settings) callers name their project with ``X-Project-Id`` and may do everything: a project is then a
namespace, not a boundary."""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

import httpx
from cachetools import TTLCache
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from shared.config import AuthStrategy, ServiceSettings
from shared.errors import DcostackError, DependencyUnavailable, InvalidInput
from shared.identity import DEFAULT_PROJECT

TOKEN_HEADER = "X-Auth-Token"
PROJECT_HEADER = "X-Project-Id"
PROJECT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
#: Roles that may change things; any role in the project may read.
WRITER_ROLES = frozenset({"admin", "member", "manager"})
TOKEN_CACHE_SECONDS = 60.0
KEYSTONE_TIMEOUT_SECONDS = 10.0


class Unauthenticated(DcostackError):
    """No token, or a token Keystone does not accept."""

    status_code = 401


class Forbidden(DcostackError):
    """A valid token whose roles or scope do not allow the call."""

    status_code = 403


@dataclass(frozen=True)
class Caller:
    """The caller of one request: the project it acts in, who it is and what roles it has there."""

    project_id: str
    roles: frozenset[str]
    user_id: str | None = None
    user_name: str | None = None
    project_name: str | None = None
    #: The Keystone token (None under noauth)
    token: str | None = field(default=None, repr=False)
    expires_at: datetime | None = None
    #: Keystone's validation answer (``token`` object: catalog, methods, ...), for acting as the caller
    token_body: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def can_write(self) -> bool:
        return bool(self.roles & WRITER_ROLES)

    @property
    def forward_headers(self) -> dict[str, str]:
        """Headers that let another DCOSTACK service act as this caller."""
        if self.token is not None:
            return {TOKEN_HEADER: self.token}
        return {PROJECT_HEADER: self.project_id}


def v3_url(keystone_url: str) -> str:
    """Keystone's v3 root from a configured URL, with or without the ``/v3``."""
    base = keystone_url.rstrip("/")
    return base if re.search(r"/v3$", base) else base + "/v3"


class TokenValidator:
    """Validates Keystone tokens and caches the answers; one per process."""

    def __init__(self, keystone_url: str, cache_seconds: float = TOKEN_CACHE_SECONDS, size: int = 10_000) -> None:
        self.url = v3_url(keystone_url)
        self._cache: TTLCache[str, Caller] = TTLCache(maxsize=size, ttl=cache_seconds)
        self._client: httpx.AsyncClient | None = None
        self._pending: dict[str, asyncio.Future[Caller]] = {}

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def validate(self, token: str) -> Caller:
        key = hashlib.sha256(token.encode()).hexdigest()
        found = self._cache.get(key)
        if found is not None and (found.expires_at is None or found.expires_at > datetime.now(UTC)):
            return found
        pending = self._pending.get(key)
        if pending is not None:  # the same token asked for by concurrent requests: one call to Keystone
            return await asyncio.shield(pending)
        future: asyncio.Future[Caller] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            caller = await self._ask(token)
            self._cache[key] = caller
            future.set_result(caller)
            return caller
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it themselves
            raise
        finally:
            del self._pending[key]

    async def _ask(self, token: str) -> Caller:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=KEYSTONE_TIMEOUT_SECONDS)
        try:
            r = await self._client.get(
                f"{self.url}/auth/tokens", headers={TOKEN_HEADER: token, "X-Subject-Token": token}
            )
        except httpx.HTTPError as exc:
            raise DependencyUnavailable(
                f"Keystone at {self.url} did not answer while validating the token: {exc or type(exc).__name__}; "
                "check DCOSTACK_KEYSTONE_URL"
            ) from exc
        if r.status_code in (401, 404):
            raise Unauthenticated(
                "Keystone does not accept this token (expired, revoked or from another cloud); get a new one, "
                "e.g. `openstack token issue`, or let the CLI log in from clouds.yaml (--os-cloud)"
            )
        if r.status_code != 200:
            raise DependencyUnavailable(f"Keystone at {self.url} answered HTTP {r.status_code} validating a token")
        return caller_of(token, r.json()["token"])


def caller_of(token: str, body: dict[str, Any]) -> Caller:
    """The caller a validated token describes; only project-scoped tokens may call DCOSTACK."""
    project = body.get("project")
    if not project:
        scope = "a domain" if body.get("domain") else "the system" if body.get("system") else "no project"
        raise Forbidden(
            f"the token is scoped to {scope}; DCOSTACK works in a project: get a token scoped to one "
            "(clouds.yaml project_name, or OS_PROJECT_NAME)",
            field=TOKEN_HEADER,
        )
    expires = body.get("expires_at")
    return Caller(
        project_id=project["id"],
        project_name=project.get("name"),
        roles=frozenset(r["name"] for r in body.get("roles") or []),
        user_id=(body.get("user") or {}).get("id"),
        user_name=(body.get("user") or {}).get("name"),
        token=token,
        expires_at=datetime.fromisoformat(expires.replace("Z", "+00:00")) if expires else None,
        token_body=body,
    )


def validator_of(request: Request, settings: ServiceSettings) -> TokenValidator:
    validator: TokenValidator | None = getattr(request.app.state, "token_validator", None)
    if validator is None:
        assert settings.keystone_url  # the settings refuse keystone without it
        validator = TokenValidator(settings.keystone_url)
        request.app.state.token_validator = validator
    return validator


#: The token as the OpenAPI security scheme of every operation that needs a caller (not enforced by it:
#: :func:`authenticate` does, and under noauth there is no token).
KEYSTONE_TOKEN = APIKeyHeader(
    name=TOKEN_HEADER,
    scheme_name="keystone",
    auto_error=False,
    description="A Keystone token scoped to a project (`openstack token issue`). Under "
    f"DCOSTACK_AUTH_STRATEGY=noauth (development and tests only) no token is needed: the {PROJECT_HEADER} "
    "header names the project instead (`default` when absent).",
)


async def authenticate(request: Request, _: Annotated[str | None, Security(KEYSTONE_TOKEN)] = None) -> Caller:
    """The caller of a request (FastAPI dependency): 401 without a token Keystone accepts."""
    settings: ServiceSettings = request.app.state.runtime.settings
    if settings.auth_strategy == AuthStrategy.NOAUTH:
        project = request.headers.get(PROJECT_HEADER, DEFAULT_PROJECT)
        if not re.fullmatch(PROJECT_ID_PATTERN, project):
            raise InvalidInput(
                f"{PROJECT_HEADER} {project!r} is not a project id: letters, digits, '_', '.', '-', at most 64",
                field=PROJECT_HEADER,
            )
        return Caller(project_id=project, roles=WRITER_ROLES | {"reader"})
    token = request.headers.get(TOKEN_HEADER)
    if not token:
        raise Unauthenticated(
            f"this API needs a Keystone token in {TOKEN_HEADER}; get one with `openstack token issue` "
            "(the dcostack CLI logs in itself from clouds.yaml: --os-cloud or OS_CLOUD)",
            field=TOKEN_HEADER,
        )
    return await validator_of(request, settings).validate(token)


async def writer(caller: Annotated[Caller, Depends(authenticate)]) -> Caller:
    """The caller of a request that changes something: 403 for a reader."""
    if not caller.can_write:
        raise Forbidden(
            f"your roles in project {caller.project_name or caller.project_id} ({', '.join(sorted(caller.roles))}) "
            f"only allow reading; changing plans and runs needs one of {', '.join(sorted(WRITER_ROLES))}",
            roles=",".join(sorted(caller.roles)),
        )
    return caller


#: Annotate an endpoint's parameter with these to get its caller.
Reader = Annotated[Caller, Depends(authenticate)]
Writer = Annotated[Caller, Depends(writer)]
