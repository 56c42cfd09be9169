"""Per-project limits on expensive endpoints: how often (a rate) and how many at once (concurrency).

An endpoint that makes the platform work far beyond its own request (a self-check that sends thousands
of commands, a preview that reads every domain service, a run that acts in the cloud) declares a limit
as a FastAPI dependency, so the OpenAPI document shows it and a refusal is the same everywhere:

    @router.post("/v1/probes", dependencies=[limited("probe")], responses=RATE_LIMITED)

A refused call answers 429 with ``Retry-After`` and a message naming the limit and the setting that
raises it. The rate is counted with the ``limits`` library (moving window), the concurrency with a
counter; both live in the process, so each replica enforces them on its own: with N replicas behind a
load balancer a project gets up to N times the configured values.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter
from pydantic import BaseModel, Field, field_validator

from shared.auth import Caller, Forbidden, authenticate
from shared.errors import DcostackError, InvalidInput

#: What each limited action is called in settings (``DCOSTACK_LIMIT_<NAME>_RATE`` / ``_CONCURRENCY``)
#: and in messages.
ACTIONS: Mapping[str, str] = {
    "probe": "self-checks (POST /v1/probes)",
    "preview": "previews (POST /v1/plans/{id}/preview)",
    "run": "run starts and resumes (POST /v1/plans/{id}/runs, POST /v1/runs/{id}/resume)",
}
#: A busy slot frees when a request ends; a client that waits this long finds one free in most cases.
CONCURRENCY_RETRY_SECONDS = 1


class LimitSettings(BaseModel):
    """The limits' settings; a service's settings class inherits them (``DCOSTACK_LIMIT_*``)."""

    limit_probe_rate: str = Field(
        default="30/minute", description="Self-checks a project may start per period ('N/second|minute|hour')"
    )
    limit_probe_concurrency: int = Field(default=2, ge=1, description="Self-check requests of a project at once")
    limit_probe_max_count: int = Field(
        default=1000,
        ge=1,
        le=10000,
        description="Largest count of one self-check (commands per target service); count > 1 needs admin",
    )
    limit_preview_rate: str = Field(default="60/minute", description="Previews a project may ask for per period")
    limit_preview_concurrency: int = Field(default=4, ge=1, description="Previews of a project computed at once")
    limit_run_rate: str = Field(default="60/minute", description="Run starts and resumes of a project per period")
    limit_run_concurrency: int = Field(default=4, ge=1, description="Run starts and resumes of a project at once")

    @field_validator("limit_probe_rate", "limit_preview_rate", "limit_run_rate")
    @classmethod
    def _rate(cls, value: str) -> str:
        try:
            parse(value)
        except ValueError:
            raise ValueError(
                f"{value!r} is not a rate; write it as N/second, N/minute or N/hour, e.g. 30/minute"
            ) from None
        return value


class RateLimited(DcostackError):
    """Too many expensive requests of one project: retry after ``Retry-After`` seconds."""

    status_code = 429
    retriable = True

    def __init__(self, detail: str, *, retry_after: int, limit: str, setting: str) -> None:
        super().__init__(detail, limit=limit, setting=setting, retry_after=retry_after)
        self.retry_after = retry_after
        self.headers = {"Retry-After": str(retry_after)}


#: OpenAPI ``responses`` entry of a limited endpoint.
RATE_LIMITED: dict[int | str, dict[str, Any]] = {
    429: {
        "description": "The project reached a rate or concurrency limit of this endpoint (per replica); the "
        "detail names the limit and the DCOSTACK_LIMIT_* setting that raises it",
        "headers": {"Retry-After": {"description": "Seconds until a retry can succeed", "schema": {"type": "integer"}}},
    }
}


@dataclass(frozen=True)
class Rule:
    setting: str  # the rate as configured, e.g. 30/minute
    concurrency: int

    @property
    def rate(self) -> RateLimitItem:
        return parse(self.setting)


class Limiter:
    """The rate and concurrency limits of one process, per project and action."""

    def __init__(self, rules: Mapping[str, Rule]) -> None:
        self.rules = dict(rules)
        self._storage = MemoryStorage()
        self._window = MovingWindowRateLimiter(self._storage)
        self._running: dict[tuple[str, str], int] = {}

    @classmethod
    def of(cls, settings: LimitSettings) -> Limiter:
        return cls(
            {
                name: Rule(getattr(settings, f"limit_{name}_rate"), getattr(settings, f"limit_{name}_concurrency"))
                for name in ACTIONS
            }
        )

    async def enter(self, action: str, project: str) -> None:
        """Take a slot for one request of ``project``, or raise RateLimited naming the limit."""
        rule = self.rules[action]
        rate = rule.rate
        running = self._running.get((action, project), 0)
        if running >= rule.concurrency:
            raise RateLimited(
                f"project {project} already has {running} {ACTIONS[action]} in progress, the most this replica "
                f"runs at once; retry when one ends, or raise DCOSTACK_LIMIT_{action.upper()}_CONCURRENCY "
                f"(now {rule.concurrency})",
                retry_after=CONCURRENCY_RETRY_SECONDS,
                limit=f"{action} concurrency",
                setting=f"DCOSTACK_LIMIT_{action.upper()}_CONCURRENCY",
            )
        self._running[(action, project)] = running + 1  # before any await: concurrent requests see it
        try:
            allowed = await self._window.hit(rate, action, project)
            if not allowed:
                stats = await self._window.get_window_stats(rate, action, project)
        except BaseException:
            self.leave(action, project)
            raise
        if not allowed:
            self.leave(action, project)
            wait = max(1, math.ceil(stats.reset_time - time.time()))
            raise RateLimited(
                f"project {project} reached the limit of {rate.amount} {ACTIONS[action]} per "
                f"{_period(rate)}; retry in {wait} s, or raise DCOSTACK_LIMIT_{action.upper()}_RATE "
                f"(now {rule.setting})",
                retry_after=wait,
                limit=f"{action} rate",
                setting=f"DCOSTACK_LIMIT_{action.upper()}_RATE",
            )

    def leave(self, action: str, project: str) -> None:
        left = self._running.get((action, project), 0) - 1
        if left > 0:
            self._running[(action, project)] = left
        else:
            self._running.pop((action, project), None)


def _period(rate: RateLimitItem) -> str:
    unit = rate.GRANULARITY.name
    return unit if rate.multiples == 1 else f"{rate.multiples} {unit}s"


def limiter_of(request: Request) -> Limiter:
    """The process's limiter, made from the service's settings on first use."""
    found: Limiter | None = getattr(request.app.state, "limiter", None)
    if found is None:
        settings = request.app.state.runtime.settings
        if not isinstance(settings, LimitSettings):
            raise TypeError(f"{type(settings).__name__} must inherit shared.limits.LimitSettings to limit endpoints")
        found = Limiter.of(settings)
        request.app.state.limiter = found
    return found


def limited(action: str) -> Any:
    """A dependency that holds one of the caller's project's slots for ``action`` while the endpoint runs,
    and refuses with 429 beyond the action's rate or concurrency."""
    if action not in ACTIONS:
        raise ValueError(f"unknown limited action {action!r}; one of {', '.join(ACTIONS)}")

    async def limit(request: Request, caller: Annotated[Caller, Depends(authenticate)]) -> AsyncIterator[None]:
        limiter = limiter_of(request)
        await limiter.enter(action, caller.project_id)
        try:
            yield
        finally:
            limiter.leave(action, caller.project_id)

    limit.__name__ = f"limit_{action}"
    return Depends(limit)


def check_probe_count(caller: Caller, count: int, settings: LimitSettings) -> None:
    """A self-check of more than one command per target is an admin's load test: 403 for other roles, and
    never more than ``DCOSTACK_LIMIT_PROBE_MAX_COUNT`` commands per target."""
    if count > 1 and "admin" not in caller.roles:
        raise Forbidden(
            f"a self-check with count {count} sends {count} commands to each target service and needs the admin "
            f"role in project {caller.project_name or caller.project_id} (your roles: "
            f"{', '.join(sorted(caller.roles)) or 'none'}); ask with count 1, or as an admin",
            field="count",
            role_needed="admin",
        )
    if count > settings.limit_probe_max_count:
        raise InvalidInput(
            f"count {count} is above the largest self-check this deployment allows, "
            f"{settings.limit_probe_max_count} commands per target; ask for less, or raise "
            "DCOSTACK_LIMIT_PROBE_MAX_COUNT",
            field="count",
        )
