"""Every query on the ``previews`` table, and the plan versions a preview reads."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg


async def earlier_versions(conn: Any, plan_id: UUID, version: int, limit: int) -> list[asyncpg.Record]:
    """The newest ``limit`` versions of the plan other than ``version``, newest first, with their documents."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT version, document::text AS document FROM plan_versions"
        " WHERE plan_id = $1 AND version <> $2 ORDER BY version DESC LIMIT $3",
        plan_id,
        version,
        limit,
    )
    return rows


async def insert_preview(
    conn: Any,
    preview_id: UUID,
    plan_id: UUID,
    version: int,
    project_id: str,
    ok: bool,
    result: dict[str, Any],
    plan_fingerprint: str,
    live_fingerprint: str,
    live_values: dict[str, Any],
) -> datetime:
    """Store a preview; when it was stored."""
    created_at: datetime = await conn.fetchval(
        "INSERT INTO previews (id, plan_id, version, project_id, ok, result, plan_fingerprint, live_fingerprint,"
        " live_values) VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9::jsonb) RETURNING created_at",
        preview_id,
        plan_id,
        version,
        project_id,
        ok,
        json.dumps(result),
        plan_fingerprint,
        live_fingerprint,
        json.dumps(live_values, default=str),
    )
    return created_at


async def get_preview(conn: Any, project_id: str, preview_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT id, plan_id, version, project_id, ok, result::text AS result, plan_fingerprint, live_fingerprint,"
        " live_values::text AS live_values, created_at FROM previews WHERE id = $1 AND project_id = $2",
        preview_id,
        project_id,
    )
