"""Every query of the ``operations`` table (shared/migrations/0003-0005): the steps a domain service
has accepted, their leases, and how each ended."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any
from uuid import UUID

import asyncpg

from shared.events.steps import ApplyStepV1, ApplyStepV2, DestroyStepV1, DestroyStepV2


async def insert(
    tx: asyncpg.Connection,
    cmd: ApplyStepV1 | DestroyStepV1 | ApplyStepV2 | DestroyStepV2,
    action: str,
    correlation_id: str | None,
    project_id: str | None,
) -> bool:
    """Record ``cmd`` as a pending operation; False when its dispatch id is already known."""
    inserted = await tx.fetchval(
        """INSERT INTO operations (dispatch_id, action, run_id, plan_id, step_key, kind, path, params,
                                   deadline, correlation_id, project_id, trust_id)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() + make_interval(secs => $9), $10, $11, $12)
           ON CONFLICT (dispatch_id) DO NOTHING
           RETURNING true""",
        cmd.dispatch_id,
        action,
        cmd.run_id,
        cmd.plan_id,
        cmd.step_key,
        cmd.kind,
        cmd.path,
        json.dumps(cmd.params if isinstance(cmd, ApplyStepV1 | DestroyStepV1) else cmd.params.as_dict()),
        cmd.timeout_seconds,
        correlation_id,
        project_id,
        cmd.trust_id,
    )
    return bool(inserted)


async def by_dispatch(tx: asyncpg.Connection, dispatch_id: UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await tx.fetchrow("SELECT * FROM operations WHERE dispatch_id = $1", dispatch_id)
    return row


async def claim(pool: asyncpg.Pool, limit: int, lease: timedelta) -> list[asyncpg.Record]:
    """Up to ``limit`` operations that are due or whose lease expired, leased to this process."""
    rows: list[asyncpg.Record] = await pool.fetch(
        """UPDATE operations SET state = 'running', tries = tries + 1,
                  lease_until = now() + $2::interval, updated_at = now()
           WHERE id IN (SELECT id FROM operations
                        WHERE (state = 'pending' AND not_before <= now())
                           OR (state = 'running' AND lease_until < now())
                        ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
           RETURNING *""",
        limit,
        lease,
    )
    return rows


async def extend_lease(pool: asyncpg.Pool, op_id: int, lease: timedelta) -> None:
    await pool.execute(
        "UPDATE operations SET lease_until = now() + $2::interval WHERE id = $1 AND state = 'running'", op_id, lease
    )


async def record_message(tx: asyncpg.Connection, op_id: int, message: str) -> None:
    await tx.execute("UPDATE operations SET last_message = $2, updated_at = now() WHERE id = $1", op_id, message)


async def retry_later(tx: asyncpg.Connection, op_id: int, delay: float, message: str) -> None:
    await tx.execute(
        """UPDATE operations SET state = 'pending', lease_until = NULL, last_message = $3,
                  not_before = now() + make_interval(secs => $2), updated_at = now()
           WHERE id = $1""",
        op_id,
        delay,
        message,
    )


async def finish(
    tx: asyncpg.Connection,
    op_id: int,
    outcome: str,
    message: str,
    outputs: dict[str, Any] | None,
    error: dict[str, Any] | None,
) -> None:
    await tx.execute(
        """UPDATE operations SET state = 'done', lease_until = NULL, last_message = $2, outcome = $3,
                  outputs = $4, error = $5, updated_at = now()
           WHERE id = $1""",
        op_id,
        message,
        outcome,
        None if outputs is None else json.dumps(outputs),
        None if error is None else json.dumps(error),
    )
