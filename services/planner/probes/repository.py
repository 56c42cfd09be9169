"""Every query on the probes and probe_replies tables."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import asyncpg


async def insert_probe(conn: asyncpg.Connection, probe_id: UUID, targets: list[str], count: int) -> None:
    await conn.execute("INSERT INTO probes (id, targets, count) VALUES ($1, $2, $3)", probe_id, targets, count)


async def get_probe(conn: asyncpg.Pool | asyncpg.Connection, probe_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT id, targets, count FROM probes WHERE id = $1", probe_id)


async def count_replies(conn: asyncpg.Pool | asyncpg.Connection, probe_id: UUID) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT service, count(*) AS n FROM probe_replies WHERE probe_id = $1 GROUP BY service", probe_id
    )
    return {r["service"]: r["n"] for r in rows}


async def insert_reply(
    conn: asyncpg.Connection, probe_id: UUID, service: str, seq: int, event_id: str, answered_at: datetime
) -> None:
    await conn.execute(
        "INSERT INTO probe_replies (probe_id, service, seq, event_id, answered_at) VALUES ($1, $2, $3, $4, $5)",
        probe_id,
        service,
        seq,
        event_id,
        answered_at,
    )
