"""Planner use cases; each owns its transaction and writes its events to the outbox."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
from cachetools import LRUCache

from services.planner.plans import repository
from services.planner.plans.compiler import Graph
from services.planner.plans.domain import (
    CheckedPlan,
    PlanInvalid,
    PlanNameTaken,
    PlanNotFound,
    PlanRecord,
    PlanVersion,
    PlanVersionNotFound,
    check_plan,
    check_same_name,
)

SOURCE = "/dcostack/planner"


# --- plans -----------------------------------------------------------------------------------------
# Plan changes publish no events: nothing consumes them, and an event type is a contract kept for good,
# so it is added with its first consumer. (Runs publish RunChangedV2.)


def _record(row: asyncpg.Record) -> PlanRecord:
    return PlanRecord(
        id=row["id"],
        project_id=row["project_id"],
        name=row["name"],
        latest_version=row["latest_version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _version(row: asyncpg.Record) -> PlanVersion:
    raw = row.get("document")
    return PlanVersion(
        plan_id=row["plan_id"],
        version=row["version"],
        created_at=row["created_at"],
        created_by=row["created_by"],
        document=json.loads(raw) if raw is not None else None,
    )


async def check_document(document: Any) -> CheckedPlan:
    """Validate and compile off the event loop: a large plan takes CPU time that other requests should not wait on."""
    return await asyncio.to_thread(check_plan, document)


#: Plan versions never change, so what each compiles to is kept: runs ordering removals and previews
#: naming what an earlier version made both compile old versions. The newest 256 are kept.
_COMPILED: LRUCache[tuple[UUID, int], Graph | None] = LRUCache(maxsize=256)


async def compiled_version(plan_id: UUID, version: int, document: Any) -> Graph | None:
    """What a stored plan version compiles to; None when today's rules refuse it (stored under older ones)."""
    key = (plan_id, version)
    if key in _COMPILED:
        return _COMPILED[key]
    try:
        graph: Graph | None = (await check_document(document)).graph
    except PlanInvalid:
        graph = None
    _COMPILED[key] = graph
    return graph


async def create_plan(
    pool: asyncpg.Pool, project_id: str, document: Any, created_by: str | None = None
) -> tuple[PlanRecord, PlanVersion]:
    """Store a valid document as version 1 of a new plan named by the document's ``name``."""
    checked = await check_document(document)
    async with pool.acquire() as conn, conn.transaction():
        row = await repository.insert_plan(conn, uuid.uuid4(), project_id, checked.name)
        if row is None:
            raise PlanNameTaken(checked.name, project_id)
        version = await repository.insert_version(conn, row["id"], 1, document, created_by)
    return _record(row), _version(version)


async def update_plan(
    pool: asyncpg.Pool, project_id: str, plan_id: UUID, document: Any, created_by: str | None = None
) -> tuple[PlanRecord, PlanVersion]:
    """Store a valid document as the plan's next version; the same document as the latest changes nothing."""
    checked = await check_document(document)
    async with pool.acquire() as conn, conn.transaction():
        # The row lock orders concurrent updates of one plan, so each gets its own version number.
        row = await repository.get_plan(conn, project_id, plan_id, for_update=True)
        if row is None:
            raise PlanNotFound(plan_id, project_id)
        check_same_name(row["name"], checked)
        latest = row["latest_version"]
        if await repository.same_document(conn, plan_id, latest, document):
            version = await repository.get_version(conn, plan_id, latest)
        else:
            version = await repository.insert_version(conn, plan_id, latest + 1, document, created_by)
            row = await repository.set_latest_version(conn, plan_id, latest + 1)
    assert version is not None
    return _record(row), _version(version)


async def list_plans(pool: asyncpg.Pool, project_id: str, name: str | None, limit: int) -> list[PlanRecord]:
    return [_record(r) for r in await repository.list_plans(pool, project_id, name, limit)]


async def _plan(pool: asyncpg.Pool, project_id: str, plan_id: UUID) -> PlanRecord:
    row = await repository.get_plan(pool, project_id, plan_id)
    if row is None:
        raise PlanNotFound(plan_id, project_id)
    return _record(row)


async def get_plan(
    pool: asyncpg.Pool, project_id: str, plan_id: UUID, version: int | None = None
) -> tuple[PlanRecord, PlanVersion]:
    """The plan and one of its versions, the latest unless ``version`` is given."""
    plan = await _plan(pool, project_id, plan_id)
    row = await repository.get_version(pool, plan_id, plan.latest_version if version is None else version)
    if row is None:
        raise PlanVersionNotFound(plan_id, version or 0, plan.latest_version)
    return plan, _version(row)


@dataclass(frozen=True)
class Subject:
    """A plan version read and compiled once, handed on from one use case to the next (a run's start hands
    it to the preview it checks, so neither reads nor compiles the plan again)."""

    plan: PlanRecord
    version: PlanVersion
    checked: CheckedPlan


async def read_checked(pool: asyncpg.Pool, project_id: str, plan_id: UUID, version: int | None = None) -> Subject:
    """The plan and one of its versions (the latest unless ``version``), compiled; 404 when either is missing."""
    plan, found = await get_plan(pool, project_id, plan_id, version)
    return Subject(plan, found, await check_document(found.document))


async def list_versions(pool: asyncpg.Pool, project_id: str, plan_id: UUID) -> tuple[PlanRecord, list[PlanVersion]]:
    plan = await _plan(pool, project_id, plan_id)
    return plan, [_version(r) for r in await repository.list_versions(pool, plan_id)]


async def delete_plan(pool: asyncpg.Pool, project_id: str, plan_id: UUID) -> None:
    """Soft-delete the plan record: its versions stay in the database, its name is free again.

    Its runs stay readable (they are listed by plan id). Nothing in the cloud is touched: destroying what a
    plan built is a destroy run, not a delete.
    """
    async with pool.acquire() as conn, conn.transaction():
        if not await repository.soft_delete_plan(conn, project_id, plan_id):
            raise PlanNotFound(plan_id, project_id)
