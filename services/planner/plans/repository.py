"""Every query on the plans and plan_versions tables."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import asyncpg

# --- plans: documents are stored as jsonb, sent and read back as JSON text ----------------------------

_PLAN_COLUMNS = "id, project_id, name, latest_version, created_at, updated_at"


async def insert_plan(conn: asyncpg.Connection, plan_id: UUID, project_id: str, name: str) -> asyncpg.Record | None:
    """Insert a plan at version 1; None when the project already has a live plan of that name."""
    return await conn.fetchrow(
        "INSERT INTO plans (id, project_id, name, latest_version) VALUES ($1, $2, $3, 1)"
        " ON CONFLICT (project_id, name) WHERE deleted_at IS NULL DO NOTHING"
        f" RETURNING {_PLAN_COLUMNS}",
        plan_id,
        project_id,
        name,
    )


async def insert_version(
    conn: asyncpg.Connection, plan_id: UUID, version: int, document: Any, created_by: str | None
) -> asyncpg.Record:
    row: asyncpg.Record = await conn.fetchrow(
        "INSERT INTO plan_versions (plan_id, version, document, created_by) VALUES ($1, $2, $3::jsonb, $4)"
        " RETURNING plan_id, version, created_at, created_by, document::text AS document",
        plan_id,
        version,
        json.dumps(document),
        created_by,
    )
    return row


async def get_plan(
    conn: asyncpg.Pool | asyncpg.Connection, project_id: str, plan_id: UUID, *, for_update: bool = False
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_PLAN_COLUMNS} FROM plans WHERE id = $1 AND project_id = $2 AND deleted_at IS NULL"
        + (" FOR UPDATE" if for_update else ""),
        plan_id,
        project_id,
    )


async def list_plans(
    conn: asyncpg.Pool | asyncpg.Connection, project_id: str, name: str | None, limit: int
) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        f"SELECT {_PLAN_COLUMNS} FROM plans WHERE project_id = $1 AND deleted_at IS NULL"
        " AND ($2::text IS NULL OR name = $2) ORDER BY created_at DESC, id LIMIT $3",
        project_id,
        name,
        limit,
    )
    return rows


async def set_latest_version(conn: asyncpg.Connection, plan_id: UUID, version: int) -> asyncpg.Record:
    row: asyncpg.Record = await conn.fetchrow(
        f"UPDATE plans SET latest_version = $2, updated_at = now() WHERE id = $1 RETURNING {_PLAN_COLUMNS}",
        plan_id,
        version,
    )
    return row


async def same_document(conn: asyncpg.Connection, plan_id: UUID, version: int, document: Any) -> bool:
    """Whether ``version`` holds this document (jsonb equality: key order and spacing do not count)."""
    same: bool = await conn.fetchval(
        "SELECT document = $3::jsonb FROM plan_versions WHERE plan_id = $1 AND version = $2",
        plan_id,
        version,
        json.dumps(document),
    )
    return same


async def get_version(conn: asyncpg.Pool | asyncpg.Connection, plan_id: UUID, version: int) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT plan_id, version, created_at, created_by, document::text AS document"
        " FROM plan_versions WHERE plan_id = $1 AND version = $2",
        plan_id,
        version,
    )


async def list_versions(conn: asyncpg.Pool | asyncpg.Connection, plan_id: UUID) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT plan_id, version, created_at, created_by FROM plan_versions WHERE plan_id = $1 ORDER BY version",
        plan_id,
    )
    return rows


async def soft_delete_plan(conn: asyncpg.Connection, project_id: str, plan_id: UUID) -> bool:
    done = await conn.fetchval(
        "UPDATE plans SET deleted_at = now() WHERE id = $1 AND project_id = $2 AND deleted_at IS NULL RETURNING id",
        plan_id,
        project_id,
    )
    return done is not None
