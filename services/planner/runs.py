"""Plan runs: a compiled plan executed as persisted steps, dispatched to the domain services.

A run's steps live in ``run_steps``; each transition is written in one transaction with the commands
and events it causes (outbox), under a lock on the run's row, so concurrent progress events of one run
advance it one at a time and a restarted planner continues exactly where it was.

- apply: a step is dispatched once every step it comes ``after`` has succeeded, with at most the plan's
  ``rollout.max_parallel`` steps in flight.
- destroy: the same graph reversed (a step waits for every step that depended on it).
- a failed step stops dispatching; the run fails once nothing is in flight, and steps never started are
  marked ``skipped`` with the reason. No step stays pending or in flight forever: overdue steps fail
  with what was last seen.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast
from uuid import UUID

import asyncpg

from services.planner.compiler import Graph
from services.planner.domain import check_plan
from shared.bus import OutboxRow, make_outbox_row, write_outbox
from shared.errors import Conflict, NotFound
from shared.events.steps import ApplyStepV1, DestroyStepV1, RunChangedV1, StepProgressedV1
from shared.logging import get_logger
from shared.topics import commands_topic, events_topic

log = get_logger(__name__)
SOURCE = "/dcostack/planner"
IN_FLIGHT = ("dispatched", "running")


@dataclass(frozen=True)
class RunStep:
    key: str
    service: str
    kind: str
    path: str
    state: str
    message: str
    outputs: dict[str, Any]
    error: dict[str, Any] | None
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class Run:
    id: UUID
    plan_id: UUID
    plan_version: int
    project_id: str
    action: str
    state: str
    message: str
    created_at: datetime
    finished_at: datetime | None
    steps: list[RunStep]

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for step in self.steps:
            out[step.state] = out.get(step.state, 0) + 1
        return out


def _after(graph: Graph, action: str) -> dict[str, frozenset[str]]:
    if action == "apply":
        return {key: step.after for key, step in graph.steps.items()}
    reverse: dict[str, set[str]] = {key: set() for key in graph.steps}
    for key, step in graph.steps.items():
        for dep in step.after:
            reverse[dep].add(key)
    return {key: frozenset(deps) for key, deps in reverse.items()}


async def start_run(
    pool: asyncpg.Pool, project_id: str, plan_id: UUID, action: str, version: int | None, step_timeout: float
) -> UUID:
    """Create a run of the plan's version (the latest by default) and dispatch its first steps."""
    async with pool.acquire() as conn, conn.transaction():
        plan = await conn.fetchrow(
            "SELECT * FROM plans WHERE id = $1 AND project_id = $2 AND deleted_at IS NULL FOR UPDATE",
            plan_id,
            project_id,
        )
        if plan is None:
            raise NotFound(f"plan {plan_id} does not exist in project {project_id!r}", field="plan_id")
        busy = await conn.fetchval("SELECT id FROM runs WHERE plan_id = $1 AND state = 'running' LIMIT 1", plan_id)
        if busy is not None:
            raise Conflict(
                f"run {busy} of this plan is still running; wait for it (dcostack run watch {busy}) before "
                f"starting another",
                run_id=busy,
            )
        number = version or plan["latest_version"]
        row = await conn.fetchrow(
            "SELECT document FROM plan_versions WHERE plan_id = $1 AND version = $2", plan_id, number
        )
        if row is None:
            raise NotFound(f"plan {plan_id} has no version {number}", field="version")
        checked = await asyncio.to_thread(check_plan, json.loads(row["document"]))
        graph = checked.graph
        after = _after(graph, action)
        order = graph.order() if action == "apply" else graph.reverse_order()
        run_id = uuid.uuid4()
        await conn.execute(
            """INSERT INTO runs (id, plan_id, plan_version, project_id, action, state, max_parallel)
               VALUES ($1, $2, $3, $4, $5, 'running', $6)""",
            run_id,
            plan_id,
            number,
            project_id,
            action,
            checked.plan.rollout.max_parallel,
        )
        await conn.executemany(
            """INSERT INTO run_steps (run_id, key, seq, service, kind, path, params, after_keys)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
            [
                (
                    run_id,
                    key,
                    seq,
                    graph.steps[key].service,
                    graph.steps[key].kind,
                    graph.steps[key].path,
                    json.dumps(graph.steps[key].params),
                    sorted(after[key]),
                )
                for seq, key in enumerate(order)
            ],  # fmt: skip
        )
        rows = [_run_event(run_id, plan_id, number, action, "running", f"{len(order)} steps")]
        rows += await advance(conn, run_id, step_timeout)
        await write_outbox(conn, rows)
    log.info("run.started", run_id=str(run_id), plan_id=str(plan_id), action=action, steps=len(order))
    return run_id


async def advance(conn: asyncpg.Connection, run_id: UUID, step_timeout: float) -> list[OutboxRow]:
    """Dispatch what is ready, or finish the run. Call inside a transaction; returns outbox rows to write."""
    run = await conn.fetchrow("SELECT * FROM runs WHERE id = $1 FOR UPDATE", run_id)
    if run is None or run["state"] != "running":
        return []
    steps = await conn.fetch("SELECT key, state, after_keys, service FROM run_steps WHERE run_id = $1", run_id)
    state = {s["key"]: s["state"] for s in steps}
    in_flight = sum(1 for s in steps if s["state"] in IN_FLIGHT)
    failed = [s["key"] for s in steps if s["state"] == "failed"]
    out: list[OutboxRow] = []
    if failed:
        if in_flight:
            return []  # wait for what is in flight to finish, so nothing is left half-done
        await conn.execute(
            """UPDATE run_steps SET state = 'skipped', message = $2, updated_at = now()
               WHERE run_id = $1 AND state = 'pending'""",
            run_id,
            f"not started: {', '.join(sorted(failed)[:3])} failed",
        )
        return [
            *out,
            await _finish(conn, run, "failed", f"{len(failed)} step(s) failed: {', '.join(sorted(failed)[:5])}"),
        ]
    if all(v == "succeeded" for v in state.values()):
        return [await _finish(conn, run, "succeeded", f"{len(steps)} steps succeeded")]
    slots = run["max_parallel"] - in_flight
    if slots <= 0:
        return []
    ready = [
        s["key"]
        for s in sorted(steps, key=lambda s: s["key"])
        if s["state"] == "pending" and all(state.get(dep) == "succeeded" for dep in s["after_keys"])
    ]
    if not ready:
        return []
    chosen = await conn.fetch(
        """UPDATE run_steps SET state = 'dispatched', dispatch_id = gen_random_uuid(),
                  deadline = now() + make_interval(secs => $3), started_at = coalesce(started_at, now()),
                  message = 'dispatched', updated_at = now()
           WHERE run_id = $1 AND key = ANY($2::text[])
           RETURNING *""",
        run_id,
        (await _by_seq(conn, run_id, ready))[:slots],
        step_timeout,
    )
    command = ApplyStepV1 if run["action"] == "apply" else DestroyStepV1
    for step in chosen:
        data = command(
            dispatch_id=step["dispatch_id"],
            run_id=run_id,
            plan_id=run["plan_id"],
            step_key=step["key"],
            kind=step["kind"],
            path=step["path"],
            params=json.loads(step["params"]),
            timeout_seconds=step_timeout,
        )
        out.append(
            make_outbox_row(
                data,
                source=SOURCE,
                topic=commands_topic(step["service"]),
                key=str(run_id),
                subject=step["key"],
                correlation_id=str(run_id),
                project_id=run["project_id"],
            )
        )
    return out


async def _by_seq(conn: asyncpg.Connection, run_id: UUID, keys: list[str]) -> list[str]:
    rows = await conn.fetch(
        "SELECT key FROM run_steps WHERE run_id = $1 AND key = ANY($2::text[]) ORDER BY seq", run_id, keys
    )
    return [r["key"] for r in rows]


async def _finish(conn: asyncpg.Connection, run: asyncpg.Record, state: str, message: str) -> OutboxRow:
    await conn.execute(
        "UPDATE runs SET state = $2, message = $3, finished_at = now(), updated_at = now() WHERE id = $1",
        run["id"],
        state,
        message,
    )
    log.info("run.finished", run_id=str(run["id"]), state=state, message=message)
    return _run_event(run["id"], run["plan_id"], run["plan_version"], run["action"], state, message)


def _run_event(run_id: UUID, plan_id: UUID, version: int, action: str, state: str, message: str) -> OutboxRow:
    data = RunChangedV1(
        run_id=run_id,
        plan_id=plan_id,
        plan_version=version,
        action=cast(Any, action),
        state=state,
        message=message,
        at=datetime.now(UTC),
    )
    return make_outbox_row(
        data, source=SOURCE, topic=events_topic("planner"), key=str(run_id), correlation_id=str(run_id)
    )


async def on_progress(conn: asyncpg.Connection, event: StepProgressedV1, step_timeout: float) -> list[OutboxRow]:
    """Record a domain service's report on a step, then advance the run."""
    step = await conn.fetchrow(
        "SELECT state, dispatch_id FROM run_steps WHERE run_id = $1 AND key = $2 FOR UPDATE",
        event.run_id,
        event.step_key,
    )
    if step is None or step["dispatch_id"] != event.dispatch_id or step["state"] not in IN_FLIGHT:
        return []  # a report on an older dispatch, or on a step already decided (e.g. timed out)
    if event.state == "running":
        await conn.execute(
            """UPDATE run_steps SET state = 'running', message = $3, updated_at = now()
               WHERE run_id = $1 AND key = $2""",
            event.run_id,
            event.step_key,
            event.message,
        )
        return []
    await conn.execute(
        """UPDATE run_steps SET state = $3, message = $4, outputs = $5, error = $6, finished_at = now(),
                  updated_at = now()
           WHERE run_id = $1 AND key = $2""",
        event.run_id,
        event.step_key,
        event.state,
        event.message,
        json.dumps(event.outputs),
        json.dumps(event.error) if event.error is not None else None,
    )
    return await advance(conn, event.run_id, step_timeout)


async def fail_overdue(pool: asyncpg.Pool, step_timeout: float) -> int:
    """Fail steps whose deadline passed (their service is down or stuck) and advance their runs."""
    async with pool.acquire() as conn, conn.transaction():
        overdue = await conn.fetch(
            """UPDATE run_steps SET state = 'failed', finished_at = now(), updated_at = now(),
                      error = jsonb_build_object(
                          'message', 'no result from the ' || service || ' service before the deadline; last seen: '
                                     || coalesce(nullif(message, ''), 'nothing'),
                          'hint', 'check that the ' || service || ' service runs; raise the step timeout if the '
                                  || 'cloud is slow',
                          'retriable', true)
               WHERE state IN ('dispatched', 'running') AND deadline < now() - interval '30 seconds'
               RETURNING run_id, key""",
        )
        rows: list[OutboxRow] = []
        for run_id in {r["run_id"] for r in overdue}:
            rows += await advance(conn, run_id, step_timeout)
        await write_outbox(conn, rows)
    return len(overdue)


async def watch_deadlines(pool: asyncpg.Pool, step_timeout: float, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            failed = await fail_overdue(pool, step_timeout)
            if failed:
                log.warning("run.steps_timed_out", count=failed)
        except Exception as exc:  # the database may be briefly away; try again next round
            log.warning("run.deadline_check_failed", error=str(exc) or type(exc).__name__)


async def get_run(pool: asyncpg.Pool | asyncpg.Connection, project_id: str, run_id: UUID) -> Run:
    row = await pool.fetchrow("SELECT * FROM runs WHERE id = $1 AND project_id = $2", run_id, project_id)
    if row is None:
        raise NotFound(f"run {run_id} does not exist in project {project_id!r}", field="run_id")
    steps = await pool.fetch("SELECT * FROM run_steps WHERE run_id = $1 ORDER BY seq", run_id)
    return _run(row, steps)


async def list_runs(pool: asyncpg.Pool, project_id: str, plan_id: UUID, limit: int = 50) -> list[Run]:
    rows = await pool.fetch(
        "SELECT * FROM runs WHERE plan_id = $1 AND project_id = $2 ORDER BY created_at DESC LIMIT $3",
        plan_id,
        project_id,
        limit,
    )
    return [_run(r, []) for r in rows]


def _run(row: asyncpg.Record, steps: list[asyncpg.Record]) -> Run:
    return Run(
        id=row["id"],
        plan_id=row["plan_id"],
        plan_version=row["plan_version"],
        project_id=row["project_id"],
        action=row["action"],
        state=row["state"],
        message=row["message"],
        created_at=row["created_at"],
        finished_at=row["finished_at"],
        steps=[
            RunStep(
                key=s["key"],
                service=s["service"],
                kind=s["kind"],
                path=s["path"],
                state=s["state"],
                message=s["message"],
                outputs=json.loads(s["outputs"]),
                error=json.loads(s["error"]) if s["error"] is not None else None,
                started_at=s["started_at"],
                finished_at=s["finished_at"],
            )
            for s in steps
        ],
    )
