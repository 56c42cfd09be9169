"""Every query on the runs, run_steps, applied_steps and retired_trusts tables."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from services.planner.runs.machine import (
    ACTIVE,
    IN_FLIGHT,
    AppliedStep,
    PlannedStep,
    Run,
    RunFacts,
    RunState,
    RunStep,
    StepFacts,
    StepState,
    UndoStep,
)

# --- the ledger ----------------------------------------------------------------------------------------


async def applied_steps(conn: asyncpg.Pool | asyncpg.Connection, plan_id: UUID) -> list[AppliedStep]:
    """What the plan has built, per the ledger (oldest first)."""
    rows = await conn.fetch("SELECT * FROM applied_steps WHERE plan_id = $1 ORDER BY created_at, key", plan_id)
    return [
        AppliedStep(
            key=r["key"],
            service=r["service"],
            kind=r["kind"],
            path=r["path"],
            params=json.loads(r["params"]),
            outputs=json.loads(r["outputs"]),
            run_id=r["run_id"],
            plan_version=r["plan_version"],
            created_at=r["created_at"],
        )
        for r in rows
    ]


async def has_applied(conn: asyncpg.Pool | asyncpg.Connection, plan_id: UUID) -> bool:
    """Whether the plan has built anything, per the ledger."""
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM applied_steps WHERE plan_id = $1)", plan_id))


async def ledger_creators(conn: asyncpg.Connection, plan_id: UUID) -> dict[str, UUID]:
    """Each key of the plan's ledger, and the run that created it."""
    rows = await conn.fetch("SELECT key, run_id FROM applied_steps WHERE plan_id = $1", plan_id)
    return {r["key"]: r["run_id"] for r in rows}


async def record_applied(
    conn: asyncpg.Connection, run: asyncpg.Record, step: asyncpg.Record, outputs: dict[str, Any]
) -> None:
    """A step succeeded: an apply adds (or refreshes) its ledger row, a destroy removes it."""
    if step["action"] == "apply":
        # An existing row keeps the run that created it: a re-apply finds the resource, it does not make it.
        await conn.execute(
            """INSERT INTO applied_steps (plan_id, key, service, kind, path, params, outputs, run_id, plan_version)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
               ON CONFLICT (plan_id, key) DO UPDATE SET service = excluded.service, kind = excluded.kind,
                   path = excluded.path, params = excluded.params, outputs = excluded.outputs,
                   plan_version = excluded.plan_version, updated_at = now()""",
            run["plan_id"],
            step["key"],
            step["service"],
            step["kind"],
            step["path"],
            step["params"],
            json.dumps(outputs),
            run["id"],
            run["plan_version"],
        )
    else:
        await conn.execute("DELETE FROM applied_steps WHERE plan_id = $1 AND key = $2", run["plan_id"], step["key"])


# --- runs ----------------------------------------------------------------------------------------------


async def busy_run(conn: asyncpg.Connection, plan_id: UUID, but: UUID | None = None) -> asyncpg.Record | None:
    """A run of the plan in progress (other than ``but``), if any."""
    return await conn.fetchrow(
        "SELECT id, state FROM runs WHERE plan_id = $1 AND state = ANY($2::text[]) AND id IS DISTINCT FROM $3 LIMIT 1",
        plan_id,
        sorted(ACTIVE),
        but,
    )


async def insert_run(
    conn: asyncpg.Connection,
    run_id: UUID,
    plan_id: UUID,
    version: int,
    project_id: str,
    action: str,
    max_parallel: int,
    on_failure: str,
    preview_id: UUID | None,
    trust_id: str | None,
) -> None:
    await conn.execute(
        """INSERT INTO runs (id, plan_id, plan_version, project_id, action, state, max_parallel, on_failure,
                             preview_id, trust_id)
           VALUES ($1, $2, $3, $4, $5, 'running', $6, $7, $8, $9)""",
        run_id,
        plan_id,
        version,
        project_id,
        action,
        max_parallel,
        on_failure,
        preview_id,
        trust_id,
    )


async def lock_run(conn: asyncpg.Connection, run_id: UUID, project_id: str | None = None) -> asyncpg.Record | None:
    """The run's row, locked for this transaction (in ``project_id`` when given)."""
    if project_id is None:
        return await conn.fetchrow("SELECT * FROM runs WHERE id = $1 FOR UPDATE", run_id)
    return await conn.fetchrow("SELECT * FROM runs WHERE id = $1 AND project_id = $2 FOR UPDATE", run_id, project_id)


async def run_plan_id(conn: asyncpg.Pool | asyncpg.Connection, project_id: str, run_id: UUID) -> UUID | None:
    found: UUID | None = await conn.fetchval(
        "SELECT plan_id FROM runs WHERE id = $1 AND project_id = $2", run_id, project_id
    )
    return found


async def later_run(conn: asyncpg.Connection, plan_id: UUID, created_at: datetime) -> UUID | None:
    """The first run of the plan started after ``created_at``, if any."""
    found: UUID | None = await conn.fetchval(
        "SELECT id FROM runs WHERE plan_id = $1 AND created_at > $2 ORDER BY created_at LIMIT 1", plan_id, created_at
    )
    return found


async def set_run_state(conn: asyncpg.Connection, run_id: UUID, state: RunState, message: str) -> None:
    await conn.execute(
        "UPDATE runs SET state = $2, message = $3, updated_at = now() WHERE id = $1", run_id, state, message
    )


async def finish_run(conn: asyncpg.Connection, run_id: UUID, state: RunState, message: str) -> None:
    await conn.execute(
        "UPDATE runs SET state = $2, message = $3, finished_at = now(), updated_at = now() WHERE id = $1",
        run_id,
        state,
        message,
    )


async def resume_run(
    conn: asyncpg.Connection,
    run_id: UUID,
    version: int,
    on_failure: str,
    max_parallel: int,
    message: str,
    trust_id: str | None,
) -> None:
    await conn.execute(
        """UPDATE runs SET state = 'running', plan_version = $2, on_failure = $3,
                  max_parallel = $4, resumed = resumed + 1, message = $5, finished_at = NULL, updated_at = now(),
                  trust_id = $6
           WHERE id = $1""",
        run_id,
        version,
        on_failure,
        max_parallel,
        message,
        trust_id,
    )


async def retire_trust(conn: asyncpg.Connection, trust_id: str) -> None:
    """A trust no run uses any more, to be deleted in Keystone by the trust reaper."""
    await conn.execute("INSERT INTO retired_trusts (trust_id) VALUES ($1) ON CONFLICT DO NOTHING", trust_id)


async def get_run(conn: asyncpg.Pool | asyncpg.Connection, project_id: str, run_id: UUID) -> Run | None:
    row = await conn.fetchrow("SELECT * FROM runs WHERE id = $1 AND project_id = $2", run_id, project_id)
    if row is None:
        return None
    steps = await conn.fetch("SELECT * FROM run_steps WHERE run_id = $1 ORDER BY seq", run_id)
    return _run(row, steps)


async def plan_known(conn: asyncpg.Pool | asyncpg.Connection, project_id: str, plan_id: UUID) -> bool:
    """Whether the project has (or had: a deleted plan keeps its runs) the plan."""
    return bool(await conn.fetchval("SELECT 1 FROM plans WHERE id = $1 AND project_id = $2", plan_id, project_id))


async def list_runs(conn: asyncpg.Pool | asyncpg.Connection, project_id: str, plan_id: UUID, limit: int) -> list[Run]:
    rows = await conn.fetch(
        "SELECT * FROM runs WHERE plan_id = $1 AND project_id = $2 ORDER BY created_at DESC LIMIT $3",
        plan_id,
        project_id,
        limit,
    )
    return [_run(r, []) for r in rows]


def run_facts(row: asyncpg.Record) -> RunFacts:
    return RunFacts(
        id=row["id"],
        action=row["action"],
        state=RunState(row["state"]),
        on_failure=row["on_failure"],
        max_parallel=row["max_parallel"],
    )


def _run(row: asyncpg.Record, steps: list[asyncpg.Record]) -> Run:
    return Run(
        id=row["id"],
        plan_id=row["plan_id"],
        plan_version=row["plan_version"],
        project_id=row["project_id"],
        action=row["action"],
        state=row["state"],
        on_failure=row["on_failure"],
        preview_id=row["preview_id"],
        resumed=row["resumed"],
        message=row["message"],
        created_at=row["created_at"],
        finished_at=row["finished_at"],
        steps=[
            RunStep(
                key=s["key"],
                action=s["action"],
                rollback=s["rollback"],
                service=s["service"],
                kind=s["kind"],
                path=s["path"],
                state=s["state"],
                message=s["message"],
                outputs=json.loads(s["outputs"]),
                error=json.loads(s["error"]) if s["error"] is not None else None,
                started_at=s["started_at"],
                finished_at=s["finished_at"],
                reasks=s["reasks"],
            )
            for s in steps
        ],
    )


# --- steps ---------------------------------------------------------------------------------------------


async def insert_steps(conn: asyncpg.Connection, run_id: UUID, planned: Iterable[tuple[int, PlannedStep]]) -> None:
    await conn.executemany(
        """INSERT INTO run_steps (run_id, key, seq, action, service, kind, path, params, after_keys)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
        [
            (run_id, p.key, seq, p.action, p.service, p.kind, p.path, json.dumps(p.params), sorted(p.after))
            for seq, p in planned
        ],
    )


async def keep_unchanged(conn: asyncpg.Connection, run_id: UUID, plan_id: UUID, keys: list[str]) -> None:
    """Mark steps succeeded without dispatching them, with the outputs the ledger has of them."""
    await conn.execute(
        """UPDATE run_steps s SET state = 'succeeded', started_at = now(), finished_at = now(), updated_at = now(),
                  message = 'unchanged: live in the cloud as the plan wants it (checked at start); not redone',
                  outputs = a.outputs
           FROM applied_steps a
           WHERE s.run_id = $1 AND s.key = ANY($2::text[]) AND a.plan_id = $3 AND a.key = s.key""",
        run_id,
        keys,
        plan_id,
    )


async def all_steps(conn: asyncpg.Connection, run_id: UUID) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch("SELECT * FROM run_steps WHERE run_id = $1", run_id)
    return rows


async def reset_steps(conn: asyncpg.Connection, run_id: UUID, planned: Sequence[PlannedStep], kept: set[str]) -> None:
    """Make the run's steps ``planned``, keeping the rows of ``kept``; succeeded steps the plan no longer
    has (e.g. removals already done) stay as history, listed first."""
    await conn.execute(
        "DELETE FROM run_steps WHERE run_id = $1 AND (key = ANY($2::text[]) OR state <> 'succeeded') "
        "AND NOT (key = ANY($3::text[]))",
        run_id,
        [p.key for p in planned],
        sorted(kept),
    )
    history = await conn.fetchval(
        "SELECT coalesce(max(seq), -1) + 1 FROM run_steps WHERE run_id = $1 AND NOT (key = ANY($2::text[]))",
        run_id,
        sorted(kept),
    )
    await conn.executemany(
        "UPDATE run_steps SET seq = $3, after_keys = $4, path = $5, updated_at = now() WHERE run_id = $1 AND key = $2",
        [(run_id, p.key, history + i, sorted(p.after), p.path) for i, p in enumerate(planned) if p.key in kept],
    )
    await insert_steps(conn, run_id, [(history + i, p) for i, p in enumerate(planned) if p.key not in kept])


async def count_in_flight(conn: asyncpg.Connection, run_id: UUID) -> int:
    n: int = await conn.fetchval(
        "SELECT count(*) FROM run_steps WHERE run_id = $1 AND state = ANY($2::text[])", run_id, sorted(IN_FLIGHT)
    )
    return n


async def step_facts(conn: asyncpg.Connection, run_id: UUID) -> tuple[list[StepFacts], datetime]:
    """The run's steps as the machine reads them, in dispatch priority, and the database's clock."""
    rows = await conn.fetch(
        """SELECT key, state, after_keys, action, rollback, seq, error IS NOT NULL AS has_error, heard_at,
                  now() AS now
           FROM run_steps WHERE run_id = $1 ORDER BY seq""",
        run_id,
    )
    now: datetime = rows[0]["now"] if rows else await conn.fetchval("SELECT now()")
    return [
        StepFacts(
            key=r["key"],
            state=StepState(r["state"]),
            action=r["action"],
            after=tuple(r["after_keys"]),
            rollback=r["rollback"],
            seq=r["seq"],
            has_error=r["has_error"],
            heard_at=r["heard_at"],
        )
        for r in rows
    ], now


async def end_pending(conn: asyncpg.Connection, run_id: UUID, state: StepState, message: str) -> None:
    await conn.execute(
        """UPDATE run_steps SET state = $2, message = $3, updated_at = now()
           WHERE run_id = $1 AND state = 'pending'""",
        run_id,
        state,
        message,
    )


async def block_steps(conn: asyncpg.Connection, run_id: UUID, blocked: dict[str, str]) -> None:
    """Rollback steps that cannot be undone end ``error`` with why."""
    await conn.executemany(
        """UPDATE run_steps SET state = 'error', message = $3, finished_at = now(), updated_at = now()
           WHERE run_id = $1 AND key = $2""",
        [(run_id, key, why) for key, why in blocked.items()],
    )


async def turn_to_rollback(conn: asyncpg.Connection, run_id: UUID, undo: Sequence[UndoStep]) -> None:
    await conn.executemany(
        """UPDATE run_steps SET action = 'destroy', rollback = true, state = 'pending', seq = $3, after_keys = $4,
                  dispatch_id = NULL, deadline = NULL, started_at = NULL, finished_at = NULL, message = $5,
                  updated_at = now()
           WHERE run_id = $1 AND key = $2""",
        [(run_id, u.key, u.seq, list(u.after), "to be rolled back") for u in undo],
    )


async def dispatch_steps(
    conn: asyncpg.Connection, run_id: UUID, keys: Sequence[str], step_timeout: float
) -> list[asyncpg.Record]:
    """Mark the steps dispatched under a new dispatch id and deadline; their rows, in ``seq`` order."""
    rows = await conn.fetch(
        """UPDATE run_steps SET state = 'dispatched', dispatch_id = gen_random_uuid(),
                  deadline = now() + make_interval(secs => $3), started_at = coalesce(started_at, now()),
                  heard_at = now(), message = 'dispatched', updated_at = now()
           WHERE run_id = $1 AND key = ANY($2::text[])
           RETURNING *""",
        run_id,
        list(keys),
        step_timeout,
    )
    return sorted(rows, key=lambda s: s["seq"])


async def reask_steps(conn: asyncpg.Connection, run_id: UUID, keys: Sequence[str]) -> list[asyncpg.Record]:
    """Count one more ask of steps in flight (same dispatch id); their rows, in ``seq`` order."""
    rows = await conn.fetch(
        """UPDATE run_steps SET reasks = reasks + 1, heard_at = now(), updated_at = now()
           WHERE run_id = $1 AND key = ANY($2::text[]) AND state = ANY($3::text[])
           RETURNING *""",
        run_id,
        list(keys),
        sorted(IN_FLIGHT),
    )
    return sorted(rows, key=lambda s: s["seq"])


async def lock_step(conn: asyncpg.Connection, run_id: UUID, key: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM run_steps WHERE run_id = $1 AND key = $2 FOR UPDATE", run_id, key)


async def step_running(conn: asyncpg.Connection, run_id: UUID, key: str, message: str) -> None:
    await conn.execute(
        """UPDATE run_steps SET state = 'running', message = $3, heard_at = now(), updated_at = now()
           WHERE run_id = $1 AND key = $2""",
        run_id,
        key,
        message,
    )


async def step_ended(
    conn: asyncpg.Connection,
    run_id: UUID,
    key: str,
    state: StepState,
    message: str,
    outputs: dict[str, Any],
    error: dict[str, Any] | None,
) -> None:
    await conn.execute(
        """UPDATE run_steps SET state = $3, message = $4, outputs = $5, error = coalesce($6, error),
                  finished_at = now(), heard_at = now(), updated_at = now()
           WHERE run_id = $1 AND key = $2""",
        run_id,
        key,
        state,
        message,
        json.dumps(outputs),
        json.dumps(error) if error is not None else None,
    )


_OVERDUE = "state IN ('dispatched', 'running') AND deadline < now() - interval '30 seconds'"


async def runs_with_overdue_steps(conn: asyncpg.Connection) -> list[UUID]:
    rows = await conn.fetch(f"SELECT DISTINCT run_id FROM run_steps WHERE {_OVERDUE}")
    return sorted(r["run_id"] for r in rows)


async def fail_overdue_steps(conn: asyncpg.Connection, run_id: UUID) -> list[str]:
    """Fail the run's steps whose deadline passed, with what was last seen; their keys."""
    rows = await conn.fetch(
        f"""UPDATE run_steps SET state = CASE WHEN rollback THEN 'error' ELSE 'failed' END,
                  finished_at = now(), updated_at = now(),
                  error = jsonb_build_object(
                      'message', 'no result from the ' || service || ' service before the deadline; '
                                 || 'last seen: ' || coalesce(nullif(message, ''), 'nothing'),
                      'hint', 'check that the ' || service || ' service runs; raise the step timeout if '
                              || 'the cloud is slow',
                      'retriable', true)
           WHERE run_id = $1 AND {_OVERDUE}
           RETURNING key""",
        run_id,
    )
    return [r["key"] for r in rows]


async def runs_with_quiet_steps(conn: asyncpg.Connection, quiet_seconds: float) -> list[UUID]:
    """Runs with a step in flight nothing was heard from (nor asked) for ``quiet_seconds``."""
    rows = await conn.fetch(
        """SELECT DISTINCT run_id FROM run_steps
           WHERE state IN ('dispatched', 'running') AND heard_at < now() - make_interval(secs => $1)""",
        quiet_seconds,
    )
    return sorted(r["run_id"] for r in rows)


# --- trusts --------------------------------------------------------------------------------------------


async def ended_run_trusts(pool: asyncpg.Pool | asyncpg.Connection) -> list[asyncpg.Record]:
    """Runs that ended and still hold a trust (at most 100)."""
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT id, trust_id FROM runs WHERE trust_id IS NOT NULL AND finished_at IS NOT NULL LIMIT 100"
    )
    return rows


async def retired_trusts(pool: asyncpg.Pool | asyncpg.Connection) -> list[str]:
    return [r["trust_id"] for r in await pool.fetch("SELECT trust_id FROM retired_trusts LIMIT 100")]


async def forget_run_trust(pool: asyncpg.Pool | asyncpg.Connection, run_id: UUID, trust_id: str) -> None:
    await pool.execute(
        "UPDATE runs SET trust_id = NULL WHERE id = $1 AND trust_id = $2 AND finished_at IS NOT NULL",
        run_id,
        trust_id,
    )


async def forget_retired_trust(pool: asyncpg.Pool | asyncpg.Connection, trust_id: str) -> None:
    await pool.execute("DELETE FROM retired_trusts WHERE trust_id = $1", trust_id)
