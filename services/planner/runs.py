"""Plan runs: a compiled plan executed as persisted steps, dispatched to the domain services.

A run's steps live in ``run_steps``; each transition is written in one transaction with the commands
and events it causes (outbox), under a lock on the run's row, so concurrent progress events of one run
advance it one at a time and a restarted planner continues exactly where it was.

- The applied-state ledger (``applied_steps``) holds, per plan, every step key that exists in the cloud
  because an apply step succeeded; a succeeded destroy step removes it. Both in the step's transaction.
- apply: the version's steps, each dispatched once every step it comes ``after`` has succeeded, with at
  most ``rollout.max_parallel`` in flight; plus a destroy step for every ledger key the version no
  longer has (scale-in), ordered by the dependencies they had, reversed, newest instance first.
- destroy: the version's steps and every ledger key, the graph reversed.
- cancel: ``cancelling`` at once; nothing more is dispatched; once nothing is in flight, steps not
  started end ``cancelled`` and so does the run.
- a failed step stops dispatching. Once nothing is in flight: with ``on_failure: rollback`` (apply runs)
  the run goes ``rolling_back`` and destroys, in reverse dependency order, what this run created (ledger
  rows of this run, and failed steps whose key the ledger did not have), then ends ``rolled_back``, or
  ``failed`` naming each step it could not undo (marked ``error``). With ``hold`` (and for destroy runs)
  the run ends ``failed`` and keeps everything; steps never started end ``skipped``.
- resume: a failed or cancelled run continues with its (or another) plan version; succeeded steps whose
  params did not change are kept, the others start again.
No step stays pending or in flight forever: overdue steps fail with what was last seen.
"""

from __future__ import annotations

import asyncio
import graphlib
import json
import re
import uuid
from collections.abc import Iterable, Mapping
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
#: A run in one of these states is in progress: no other run of its plan may start.
ACTIVE = ("running", "cancelling", "rolling_back")
FINISHED = ("succeeded", "failed", "cancelled", "rolled_back")
RESUMABLE = ("failed", "cancelled")
#: Creation order of kinds, for ordering the removal of a resource no compiled version explains.
KIND_ORDER = (
    "network",
    "subnet",
    "router",
    "router_interface",
    "security_group",
    "security_group_rule",
    "volume",
    "object_container",
    "server_group",
    "server",
    "volume_attachment",
    "floating_ip",
    "load_balancer",
    "listener",
    "pool",
    "member",
    "health_monitor",
)


@dataclass(frozen=True)
class RunStep:
    key: str
    action: str
    rollback: bool
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
    on_failure: str
    resumed: int
    message: str
    created_at: datetime
    finished_at: datetime | None
    steps: list[RunStep]
    preview_id: UUID | None = None

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for step in self.steps:
            out[step.state] = out.get(step.state, 0) + 1
        return out


@dataclass(frozen=True)
class AppliedStep:
    """A ledger row: a step key that exists in the cloud because an apply of the plan succeeded."""

    key: str
    service: str
    kind: str
    path: str
    params: dict[str, Any]
    outputs: dict[str, Any]
    run_id: UUID
    plan_version: int
    created_at: datetime


@dataclass(frozen=True)
class PlannedStep:
    key: str
    action: str  # apply or destroy
    service: str
    kind: str
    path: str
    params: dict[str, Any]
    after: frozenset[str]


# --- ordering (pure) ---------------------------------------------------------------------------------


def collapse(after: Mapping[str, Iterable[str]], keep: set[str]) -> dict[str, set[str]]:
    """For each kept key, the kept keys it depends on, directly or through keys that are not kept."""
    through: dict[str, frozenset[str]] = {}
    sorter = graphlib.TopologicalSorter({k: set(v) for k, v in after.items()})
    for key in sorter.static_order():
        nearest: set[str] = set()
        for dep in after.get(key, ()):
            if dep in keep:
                nearest.add(dep)
            else:
                nearest |= through.get(dep, frozenset())
        through[key] = frozenset(nearest)
    return {k: set(through.get(k, frozenset())) for k in keep}


def reverse_edges(after: Mapping[str, Iterable[str]]) -> dict[str, frozenset[str]]:
    """Dependencies for undoing: a key waits for every key that depended on it."""
    out: dict[str, set[str]] = {k: set() for k in after}
    for key, deps in after.items():
        for dep in deps:
            out.setdefault(dep, set()).add(key)
    return {k: frozenset(v) for k, v in out.items()}


def _index(key: str) -> int:
    """The instance index a step key belongs to (server/web-4, member/lb/web-4 → 4), else -1."""
    for part in key.split("/")[1:]:
        found = re.search(r"-(\d+)$", part)
        if found:
            return int(found.group(1))
    return -1


def _natural(key: str) -> tuple[tuple[int, str], ...]:
    return tuple((int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"(\d+)", key))


def destroy_order(after: Mapping[str, Iterable[str]]) -> list[str]:
    """An order that respects ``after`` (destroy direction), newest instance first within each level."""
    sorter = graphlib.TopologicalSorter({k: set(v) for k, v in after.items()})
    sorter.prepare()
    out: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=lambda k: (-_index(k), _natural(k)))
        out += ready
        sorter.done(*ready)
    return out


def destroy_after(keys: set[str], graphs: list[Graph], kinds: Mapping[str, str]) -> dict[str, frozenset[str]]:
    """What each key to destroy waits for: the reverse of the dependencies the compiled ``graphs`` gave
    them (the first graph wins where versions disagree), restricted to ``keys``. A key no graph has is
    ordered by its kind (``kinds``): destroyed after everything created later, before everything earlier."""
    merged: dict[str, set[str]] = {}
    for graph in graphs:
        candidate = {k: set(v) for k, v in merged.items()}
        for key, step in graph.steps.items():
            candidate.setdefault(key, set()).update(step.after)
        try:
            graphlib.TopologicalSorter(candidate).prepare()
        except graphlib.CycleError:
            log.warning("run.destroy_order.version_skipped", reason="its dependencies contradict a newer version")
            continue
        merged = candidate
    out = {k: set(v) for k, v in reverse_edges(collapse(merged, keys)).items()}
    rank = {kind: i for i, kind in enumerate(KIND_ORDER)}
    for lost in sorted(k for k in keys if k not in merged):
        mine = rank.get(kinds.get(lost, ""), len(rank))
        for other in keys - {lost}:
            theirs = rank.get(kinds.get(other, ""), len(rank))
            if theirs > mine:
                out[lost].add(other)
            elif theirs < mine and other in merged:
                out[other].add(lost)
    return {k: frozenset(out.get(k, set())) for k in keys}


# --- the ledger ----------------------------------------------------------------------------------------


async def applied_steps(conn: asyncpg.Connection | asyncpg.Pool, plan_id: UUID) -> list[AppliedStep]:
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


async def _record(conn: asyncpg.Connection, run: asyncpg.Record, step: asyncpg.Record, outputs: dict[str, Any]) -> None:
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


async def _compile(conn: asyncpg.Connection, plan_id: UUID, version: int) -> Graph | None:
    row = await conn.fetchrow(
        "SELECT document FROM plan_versions WHERE plan_id = $1 AND version = $2", plan_id, version
    )
    if row is None:
        return None
    try:
        return (await asyncio.to_thread(check_plan, json.loads(row["document"]))).graph
    except Exception as exc:  # an old version the current spec refuses: order its keys by kind instead
        log.warning("run.old_version_not_compiled", plan_id=str(plan_id), version=version, error=str(exc))
        return None


async def _plan_steps(
    conn: asyncpg.Connection, plan_id: UUID, action: str, graph: Graph, version: int
) -> list[PlannedStep]:
    """The steps of a run, in dispatch priority: the version's graph, and the ledger's keys it lacks."""
    ledger = {a.key: a for a in await applied_steps(conn, plan_id)}
    extra = {k for k in ledger if k not in graph.steps}
    if action == "apply":
        planned = [
            PlannedStep(s.key, "apply", s.service, s.kind, s.path, s.params, s.after)
            for s in (graph.steps[k] for k in graph.order())
        ]
        keys = extra
    else:
        planned = []
        keys = set(graph.steps) | extra
    if not keys:
        return planned
    graphs = [graph]
    for number in sorted({ledger[k].plan_version for k in keys if k in ledger} - {version}, reverse=True):
        old = await _compile(conn, plan_id, number)
        if old is not None:
            graphs.append(old)
    kinds = {k: (ledger[k].kind if k in ledger else graph.steps[k].kind) for k in keys}
    after = destroy_after(keys, graphs, kinds)
    for key in destroy_order(after):
        if key in ledger:  # what the resource was made with, which is what finds it
            a = ledger[key]
            planned.append(PlannedStep(key, "destroy", a.service, a.kind, a.path, a.params, after[key]))
        else:
            s = graph.steps[key]
            planned.append(PlannedStep(key, "destroy", s.service, s.kind, s.path, s.params, after[key]))
    return planned


# --- starting, cancelling, resuming ------------------------------------------------------------------


async def _locked_plan(conn: asyncpg.Connection, project_id: str, plan_id: UUID) -> asyncpg.Record:
    plan = await conn.fetchrow(
        "SELECT * FROM plans WHERE id = $1 AND project_id = $2 AND deleted_at IS NULL FOR UPDATE",
        plan_id,
        project_id,
    )
    if plan is None:
        raise NotFound(f"plan {plan_id} does not exist in project {project_id!r}", field="plan_id")
    return plan


async def _refuse_if_busy(conn: asyncpg.Connection, plan_id: UUID, but: UUID | None = None) -> None:
    busy = await conn.fetchrow(
        "SELECT id, state FROM runs WHERE plan_id = $1 AND state = ANY($2::text[]) AND id IS DISTINCT FROM $3 LIMIT 1",
        plan_id,
        list(ACTIVE),
        but,
    )
    if busy is not None:
        raise Conflict(
            f"run {busy['id']} of this plan is still {busy['state'].replace('_', ' ')}; wait for it "
            f"(dcostack run watch {busy['id']}) or cancel it (dcostack run cancel {busy['id']}) first",
            run_id=busy["id"],
        )


async def _checked_version(conn: asyncpg.Connection, plan_id: UUID, number: int) -> Any:
    row = await conn.fetchrow("SELECT document FROM plan_versions WHERE plan_id = $1 AND version = $2", plan_id, number)
    if row is None:
        raise NotFound(f"plan {plan_id} has no version {number}", field="version")
    return await asyncio.to_thread(check_plan, json.loads(row["document"]))


async def _insert_steps(conn: asyncpg.Connection, run_id: UUID, planned: list[tuple[int, PlannedStep]]) -> None:
    await conn.executemany(
        """INSERT INTO run_steps (run_id, key, seq, action, service, kind, path, params, after_keys)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
        [
            (run_id, p.key, seq, p.action, p.service, p.kind, p.path, json.dumps(p.params), sorted(p.after))
            for seq, p in planned
        ],
    )


async def _keep_unchanged(
    conn: asyncpg.Connection, run_id: UUID, plan_id: UUID, planned: list[PlannedStep], live: set[str]
) -> int:
    """Mark as succeeded, without dispatching them, the apply steps that are live and unchanged in the
    cloud and that the ledger says were applied with exactly these parameters (a scale-out from 50 to 100
    then dispatches 50 servers, not 100); returns how many."""
    if not live:
        return 0
    ledger = {a.key: a for a in await applied_steps(conn, plan_id)}
    keep = [
        p.key
        for p in planned
        if p.action == "apply" and p.key in live and p.key in ledger and ledger[p.key].params == p.params
    ]
    if keep:
        await conn.execute(
            """UPDATE run_steps SET state = 'succeeded', started_at = now(), finished_at = now(), updated_at = now(),
                      message = 'unchanged: live in the cloud as the plan wants it (checked at start); not redone'
               WHERE run_id = $1 AND key = ANY($2::text[])""",
            run_id,
            keep,
        )
    return len(keep)


def _describe(planned: list[PlannedStep], kept: int = 0) -> str:
    removals = sum(1 for p in planned if p.action == "destroy")
    unchanged = f", {kept} unchanged" if kept else ""
    if removals and removals < len(planned):
        return f"{len(planned)} steps ({len(planned) - removals - kept} to apply{unchanged}, {removals} to remove)"
    if kept:
        return f"{len(planned)} steps ({len(planned) - kept} to apply{unchanged})"
    return f"{len(planned)} steps"


async def start_run(
    pool: asyncpg.Pool,
    project_id: str,
    plan_id: UUID,
    action: str,
    version: int | None,
    step_timeout: float,
    preview_id: UUID | None = None,
    trust_id: str | None = None,
    live_unchanged: set[str] | None = None,
) -> UUID:
    """Create a run of the plan's version (the latest by default) and dispatch its first steps.

    ``preview_id`` records the preview the run was started from (the caller checked it is current);
    ``trust_id`` is the Keystone trust its steps act through (services/planner/trusts.py).
    ``live_unchanged``: step keys the caller saw in the cloud, as the plan wants them (a preview's
    ``unchanged``); those an earlier run applied with the same parameters are kept, not dispatched again."""
    async with pool.acquire() as conn, conn.transaction():
        plan = await _locked_plan(conn, project_id, plan_id)
        await _refuse_if_busy(conn, plan_id)
        number = version or plan["latest_version"]
        checked = await _checked_version(conn, plan_id, number)
        planned = await _plan_steps(conn, plan_id, action, checked.graph, number)
        run_id = uuid.uuid4()
        await conn.execute(
            """INSERT INTO runs (id, plan_id, plan_version, project_id, action, state, max_parallel, on_failure,
                                 preview_id, trust_id)
               VALUES ($1, $2, $3, $4, $5, 'running', $6, $7, $8, $9)""",
            run_id,
            plan_id,
            number,
            project_id,
            action,
            checked.plan.rollout.max_parallel,
            checked.plan.on_failure,
            preview_id,
            trust_id,
        )
        await _insert_steps(conn, run_id, list(enumerate(planned)))
        kept = await _keep_unchanged(conn, run_id, plan_id, planned, live_unchanged or set())
        rows = [_run_event(run_id, plan_id, number, action, "running", _describe(planned, kept))]
        rows += await advance(conn, run_id, step_timeout)
        await write_outbox(conn, rows)
    log.info("run.started", run_id=str(run_id), plan_id=str(plan_id), action=action, steps=len(planned))
    return run_id


async def _locked_run(conn: asyncpg.Connection, project_id: str, run_id: UUID) -> asyncpg.Record:
    run = await conn.fetchrow("SELECT * FROM runs WHERE id = $1 AND project_id = $2 FOR UPDATE", run_id, project_id)
    if run is None:
        raise NotFound(f"run {run_id} does not exist in project {project_id!r}", field="run_id")
    return run


async def cancel_run(pool: asyncpg.Pool, project_id: str, run_id: UUID, step_timeout: float) -> None:
    """Stop dispatching: the run is ``cancelling`` until what is in flight ends, then ``cancelled``."""
    async with pool.acquire() as conn, conn.transaction():
        run = await _locked_run(conn, project_id, run_id)
        if run["state"] == "cancelling":
            return  # asked twice: the first request already does it
        if run["state"] == "rolling_back":
            raise Conflict(
                f"run {run_id} is rolling back what it created; cancelling would leave part of it in the cloud. "
                f"Wait for it to end (dcostack run watch {run_id})",
                run_id=run_id,
            )
        if run["state"] in FINISHED:
            hint = f"; continue it with dcostack run resume {run_id}" if run["state"] in RESUMABLE else ""
            raise Conflict(f"run {run_id} already ended {run['state']}: nothing to cancel{hint}", run_id=run_id)
        in_flight = await conn.fetchval(
            "SELECT count(*) FROM run_steps WHERE run_id = $1 AND state = ANY($2::text[])", run_id, list(IN_FLIGHT)
        )
        message = f"cancelling: nothing more is dispatched; waiting for {in_flight} step(s) in flight"
        await conn.execute(
            "UPDATE runs SET state = 'cancelling', message = $2, updated_at = now() WHERE id = $1", run_id, message
        )
        rows = [_run_event(run_id, run["plan_id"], run["plan_version"], run["action"], "cancelling", message)]
        rows += await advance(conn, run_id, step_timeout)
        await write_outbox(conn, rows)
    log.info("run.cancelling", run_id=str(run_id))


async def resume_run(
    pool: asyncpg.Pool,
    project_id: str,
    run_id: UUID,
    version: int | None,
    step_timeout: float,
    trust_id: str | None = None,
) -> None:
    """Continue a failed or cancelled run with its plan version (or ``version``): succeeded steps whose
    params did not change are kept, every other step starts again. ``trust_id`` replaces the run's trust
    (the old one is deleted in Keystone by the planner's trust reaper)."""
    async with pool.acquire() as conn, conn.transaction():
        found = await conn.fetchrow("SELECT plan_id FROM runs WHERE id = $1 AND project_id = $2", run_id, project_id)
        if found is None:
            raise NotFound(f"run {run_id} does not exist in project {project_id!r}", field="run_id")
        plan_id = found["plan_id"]
        await _locked_plan(conn, project_id, plan_id)
        run = await _locked_run(conn, project_id, run_id)
        if run["state"] not in RESUMABLE:
            what = "is still in progress" if run["state"] in ACTIVE else f"ended {run['state']}"
            raise Conflict(
                f"run {run_id} {what}; only a failed or cancelled run can be resumed"
                + ("" if run["state"] in ACTIVE else "; start a new run with dcostack plan apply"),
                run_id=run_id,
            )
        await _refuse_if_busy(conn, plan_id, but=run_id)
        later = await conn.fetchval(
            "SELECT id FROM runs WHERE plan_id = $1 AND created_at > $2 ORDER BY created_at LIMIT 1",
            plan_id,
            run["created_at"],
        )
        if later is not None:
            raise Conflict(
                f"run {later} of this plan started after run {run_id}; resuming an older run would undo it. "
                "Start a new run instead (dcostack plan apply)",
                run_id=later,
            )
        number = version or run["plan_version"]
        checked = await _checked_version(conn, plan_id, number)
        planned = await _plan_steps(conn, plan_id, run["action"], checked.graph, number)
        kept = await _reset_steps(conn, run_id, planned)
        todo = len(planned) - kept
        message = f"resumed with plan version {number}: {kept} succeeded step(s) kept, {todo} to do"
        if run["trust_id"] is not None and run["trust_id"] != trust_id:
            await conn.execute(
                "INSERT INTO retired_trusts (trust_id) VALUES ($1) ON CONFLICT DO NOTHING", run["trust_id"]
            )
        await conn.execute(
            """UPDATE runs SET state = 'running', plan_version = $2, on_failure = $3,
                      max_parallel = $4, resumed = resumed + 1, message = $5, finished_at = NULL, updated_at = now(),
                      trust_id = $6
               WHERE id = $1""",
            run_id,
            number,
            checked.plan.on_failure,
            checked.plan.rollout.max_parallel,
            message,
            trust_id,
        )
        rows = [_run_event(run_id, plan_id, number, run["action"], "running", message)]
        rows += await advance(conn, run_id, step_timeout)
        await write_outbox(conn, rows)
    log.info("run.resumed", run_id=str(run_id), version=number, kept=kept)


async def _reset_steps(conn: asyncpg.Connection, run_id: UUID, planned: list[PlannedStep]) -> int:
    """Make the run's steps ``planned``; returns how many succeeded steps are kept as they are."""
    existing = {r["key"]: r for r in await conn.fetch("SELECT * FROM run_steps WHERE run_id = $1", run_id)}

    def done(p: PlannedStep) -> bool:
        old = existing.get(p.key)
        return (
            old is not None
            and old["state"] == "succeeded"
            and not old["rollback"]
            and old["action"] == p.action
            and json.loads(old["params"]) == json.loads(json.dumps(p.params))
        )

    kept = {p.key for p in planned if done(p)}
    # Succeeded steps the plan no longer has (e.g. removals already done) stay as history, listed first.
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
    await _insert_steps(conn, run_id, [(history + i, p) for i, p in enumerate(planned) if p.key not in kept])
    return len(kept)


# --- advancing -------------------------------------------------------------------------------------


async def advance(conn: asyncpg.Connection, run_id: UUID, step_timeout: float) -> list[OutboxRow]:
    """Dispatch what is ready, or move the run on. Call inside a transaction; returns outbox rows to write."""
    run = await conn.fetchrow("SELECT * FROM runs WHERE id = $1 FOR UPDATE", run_id)
    if run is None or run["state"] not in ACTIVE:
        return []
    steps = await conn.fetch(
        """SELECT key, state, after_keys, action, rollback, seq, error IS NOT NULL AS has_error
           FROM run_steps WHERE run_id = $1 ORDER BY seq""",
        run_id,
    )
    in_flight = sum(1 for s in steps if s["state"] in IN_FLIGHT)
    if run["state"] == "cancelling":
        if in_flight:
            return []  # what is in flight finishes (or times out); nothing new starts
        await _end_pending(conn, run_id, "cancelled", "cancelled before it started")
        failed = sorted(s["key"] for s in steps if s["state"] == "failed")
        done = sum(1 for s in steps if s["state"] == "succeeded")
        message = f"cancelled: {done} step(s) done, the others not started"
        if failed:
            message += f"; {len(failed)} failed: {', '.join(failed[:5])}"
        return [await _finish(conn, run, "cancelled", message + f". Continue with: dcostack run resume {run_id}")]
    if run["state"] == "rolling_back":
        return await _advance_rollback(conn, run, steps, step_timeout)
    failed = sorted(s["key"] for s in steps if s["state"] == "failed")
    if failed:
        if in_flight:
            return []  # wait for what is in flight to finish, so nothing is left half-done
        names = ", ".join(failed[:5]) + (", ..." if len(failed) > 5 else "")
        if run["action"] == "apply" and run["on_failure"] == "rollback":
            return await _start_rollback(conn, run, steps, failed, step_timeout)
        await _end_pending(conn, run_id, "skipped", f"not started: {', '.join(failed[:3])} failed")
        kept = "everything built so far is kept" if run["action"] == "apply" else "what is not destroyed yet is kept"
        reason = "on_failure: hold" if run["action"] == "apply" else "a destroy is never rolled back"
        return [
            await _finish(
                conn,
                run,
                "failed",
                f"held: {len(failed)} step(s) failed: {names}; {kept} ({reason}). Fix the plan, then "
                f"dcostack run resume {run_id} --version N",
            )
        ]
    if all(s["state"] == "succeeded" for s in steps):
        return [await _finish(conn, run, "succeeded", f"{_describe_done(steps)} succeeded")]
    state = {s["key"]: s["state"] for s in steps}
    ready = [
        s["key"]
        for s in steps
        if s["state"] == "pending" and all(state.get(dep) == "succeeded" for dep in s["after_keys"])
    ]
    return await _dispatch(conn, run, ready, run["max_parallel"] - in_flight, step_timeout)


def _describe_done(steps: list[asyncpg.Record]) -> str:
    removed = sum(1 for s in steps if s["action"] == "destroy")
    if removed and removed < len(steps):
        return f"{len(steps)} steps ({len(steps) - removed} applied, {removed} removed)"
    return f"{len(steps)} steps"


async def _end_pending(conn: asyncpg.Connection, run_id: UUID, state: str, message: str) -> None:
    await conn.execute(
        """UPDATE run_steps SET state = $2, message = $3, updated_at = now()
           WHERE run_id = $1 AND state = 'pending'""",
        run_id,
        state,
        message,
    )


async def _dispatch(
    conn: asyncpg.Connection, run: asyncpg.Record, ready: list[str], slots: int, step_timeout: float
) -> list[OutboxRow]:
    """Send the first ``slots`` of ``ready`` (in dispatch priority) to their services."""
    if slots <= 0 or not ready:
        return []
    chosen = await conn.fetch(
        """UPDATE run_steps SET state = 'dispatched', dispatch_id = gen_random_uuid(),
                  deadline = now() + make_interval(secs => $3), started_at = coalesce(started_at, now()),
                  message = 'dispatched', updated_at = now()
           WHERE run_id = $1 AND key = ANY($2::text[])
           RETURNING *""",
        run["id"],
        ready[:slots],
        step_timeout,
    )
    out: list[OutboxRow] = []
    for step in sorted(chosen, key=lambda s: s["seq"]):
        command = ApplyStepV1 if step["action"] == "apply" else DestroyStepV1
        data = command(
            dispatch_id=step["dispatch_id"],
            run_id=run["id"],
            plan_id=run["plan_id"],
            step_key=step["key"],
            kind=step["kind"],
            path=step["path"],
            params=json.loads(step["params"]),
            timeout_seconds=step_timeout,
            trust_id=run["trust_id"],
        )
        out.append(
            make_outbox_row(
                data,
                source=SOURCE,
                topic=commands_topic(step["service"]),
                key=str(run["id"]),
                subject=step["key"],
                correlation_id=str(run["id"]),
                project_id=run["project_id"],
            )
        )
    return out


async def _start_rollback(
    conn: asyncpg.Connection, run: asyncpg.Record, steps: list[asyncpg.Record], failed: list[str], step_timeout: float
) -> list[OutboxRow]:
    """Turn what this run created into destroy steps, ordered by the reverse of its dependencies."""
    run_id = run["id"]
    await _end_pending(conn, run_id, "skipped", f"not started: {', '.join(failed[:3])} failed; rolling back")
    ledger = await conn.fetch("SELECT key, run_id FROM applied_steps WHERE plan_id = $1", run["plan_id"])
    created = {r["key"] for r in ledger if r["run_id"] == run_id}
    known = {r["key"] for r in ledger}
    # A failed apply may have left a half-made resource (a server in ERROR); if the key existed before
    # this run, what is there is not this run's to remove.
    half_made = {s["key"] for s in steps if s["state"] == "failed" and s["action"] == "apply"} - known
    undo = (created | half_made) & {s["key"] for s in steps}
    names = ", ".join(failed[:5])
    if not undo:
        message = f"{names} failed; this run had created nothing to undo" + _removals_kept(steps)
        return [await _finish(conn, run, "rolled_back", message)]
    apply_after = {s["key"]: s["after_keys"] for s in steps if s["action"] == "apply"}
    after = reverse_edges(collapse(apply_after, undo))
    order = destroy_order({k: after.get(k, frozenset()) for k in undo})
    first = max(s["seq"] for s in steps) + 1
    await conn.executemany(
        """UPDATE run_steps SET action = 'destroy', rollback = true, state = 'pending', seq = $3, after_keys = $4,
                  dispatch_id = NULL, deadline = NULL, message = $5, updated_at = now()
           WHERE run_id = $1 AND key = $2""",
        [
            (run_id, key, first + i, sorted(after.get(key, frozenset())), "to be rolled back")
            for i, key in enumerate(order)
        ],
    )
    message = f"{len(failed)} step(s) failed: {names}; rolling back the {len(undo)} step(s) this run created"
    await conn.execute(
        "UPDATE runs SET state = 'rolling_back', message = $2, updated_at = now() WHERE id = $1", run_id, message
    )
    log.info("run.rolling_back", run_id=str(run_id), steps=len(undo))
    rows = [_run_event(run_id, run["plan_id"], run["plan_version"], run["action"], "rolling_back", message)]
    return rows + await advance(conn, run_id, step_timeout)


def _removals_kept(steps: list[asyncpg.Record]) -> str:
    """A rollback undoes creations only: say what the run had already removed (scale-in) for good."""
    removed = sorted(
        s["key"] for s in steps if s["action"] == "destroy" and not s["rollback"] and s["state"] == "succeeded"
    )
    if not removed:
        return ""
    return (
        f"; {len(removed)} removal(s) done before the failure stay done ({', '.join(removed[:3])}"
        + (", ..." if len(removed) > 3 else "")
        + "): apply the previous version to bring them back"
    )


async def _advance_rollback(
    conn: asyncpg.Connection, run: asyncpg.Record, steps: list[asyncpg.Record], step_timeout: float
) -> list[OutboxRow]:
    undo = [s for s in steps if s["rollback"]]
    state = {s["key"]: s["state"] for s in undo}
    # A step whose dependant could not be removed cannot be removed either (its resource is still in use).
    blocked: dict[str, str] = {}
    changed = True
    while changed:
        changed = False
        for s in undo:
            if state[s["key"]] == "pending":
                stuck = [d for d in s["after_keys"] if state.get(d) == "error"]
                if stuck:
                    state[s["key"]] = "error"
                    blocked[s["key"]] = stuck[0]
                    changed = True
    if blocked:
        await conn.executemany(
            """UPDATE run_steps SET state = 'error', message = $3, finished_at = now(), updated_at = now()
               WHERE run_id = $1 AND key = $2""",
            [(run["id"], k, f"not rolled back: {dep} could not be removed first") for k, dep in blocked.items()],
        )
    in_flight = sum(1 for v in state.values() if v in IN_FLIGHT)
    pending = [s["key"] for s in undo if state[s["key"]] == "pending"]
    if not in_flight and not pending:
        errors = sorted(k for k, v in state.items() if v == "error")
        # What failed: steps that stayed failed, and failed applies this rollback removed.
        failed = sorted(
            s["key"]
            for s in steps
            if s["state"] == "failed" or (s["rollback"] and s["has_error"] and state[s["key"]] == "rolled_back")
        )
        if errors:
            return [
                await _finish(
                    conn,
                    run,
                    "failed",
                    f"rollback incomplete: {len(errors)} resource(s) could not be removed and are left in the "
                    f"cloud: {', '.join(errors)} (see their errors); {len(undo) - len(errors)} removed"
                    + _removals_kept(steps),
                )
            ]
        return [
            await _finish(
                conn,
                run,
                "rolled_back",
                f"rolled back after {', '.join(failed[:5]) or 'a failure'} failed: removed the {len(undo)} "
                "resource(s) this run created; what existed before it is kept" + _removals_kept(steps),
            )
        ]
    after = {s["key"]: s["after_keys"] for s in undo}
    ready = [k for k in pending if all(state.get(d) == "rolled_back" for d in after[k])]
    return await _dispatch(conn, run, ready, run["max_parallel"] - in_flight, step_timeout)


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
    """Record a domain service's report on a step (and, when it succeeded, the ledger), then advance the run."""
    run = await conn.fetchrow("SELECT * FROM runs WHERE id = $1 FOR UPDATE", event.run_id)
    if run is None:
        return []
    step = await conn.fetchrow(
        "SELECT * FROM run_steps WHERE run_id = $1 AND key = $2 FOR UPDATE", event.run_id, event.step_key
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
    state: str = event.state
    message = event.message
    if step["rollback"]:
        state = "rolled_back" if event.state == "succeeded" else "error"
        message = "rolled back: removed" if event.state == "succeeded" else f"could not be rolled back: {message}"
    await conn.execute(
        """UPDATE run_steps SET state = $3, message = $4, outputs = $5, error = coalesce($6, error),
                  finished_at = now(), updated_at = now()
           WHERE run_id = $1 AND key = $2""",
        event.run_id,
        event.step_key,
        state,
        message,
        json.dumps(event.outputs),
        json.dumps(event.error) if event.error is not None else None,
    )
    if event.state == "succeeded":
        await _record(conn, run, step, event.outputs)
    return await advance(conn, event.run_id, step_timeout)


async def fail_overdue(pool: asyncpg.Pool, step_timeout: float) -> int:
    """Fail steps whose deadline passed (their service is down or stuck) and advance their runs."""
    overdue = "state IN ('dispatched', 'running') AND deadline < now() - interval '30 seconds'"
    failed = 0
    async with pool.acquire() as conn, conn.transaction():
        late = await conn.fetch(f"SELECT DISTINCT run_id FROM run_steps WHERE {overdue}")
        rows: list[OutboxRow] = []
        for run_id in sorted(r["run_id"] for r in late):
            # The run's row first, as on_progress does, so the two never wait for each other.
            await conn.execute("SELECT 1 FROM runs WHERE id = $1 FOR UPDATE", run_id)
            steps = await conn.fetch(
                f"""UPDATE run_steps SET state = CASE WHEN rollback THEN 'error' ELSE 'failed' END,
                          finished_at = now(), updated_at = now(),
                          error = jsonb_build_object(
                              'message', 'no result from the ' || service || ' service before the deadline; '
                                         || 'last seen: ' || coalesce(nullif(message, ''), 'nothing'),
                              'hint', 'check that the ' || service || ' service runs; raise the step timeout if '
                                      || 'the cloud is slow',
                              'retriable', true)
                   WHERE run_id = $1 AND {overdue}
                   RETURNING key""",
                run_id,
            )
            failed += len(steps)
            if steps:
                rows += await advance(conn, run_id, step_timeout)
        await write_outbox(conn, rows)
    return failed


async def watch_deadlines(pool: asyncpg.Pool, step_timeout: float, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            failed = await fail_overdue(pool, step_timeout)
            if failed:
                log.warning("run.steps_timed_out", count=failed)
        except Exception as exc:  # the database may be briefly away; try again next round
            log.warning("run.deadline_check_failed", error=str(exc) or type(exc).__name__)


# --- reading -----------------------------------------------------------------------------------------


async def get_run(pool: asyncpg.Pool | asyncpg.Connection, project_id: str, run_id: UUID) -> Run:
    row = await pool.fetchrow("SELECT * FROM runs WHERE id = $1 AND project_id = $2", run_id, project_id)
    if row is None:
        raise NotFound(f"run {run_id} does not exist in project {project_id!r}", field="run_id")
    steps = await pool.fetch("SELECT * FROM run_steps WHERE run_id = $1 ORDER BY seq", run_id)
    return _run(row, steps)


async def list_runs(pool: asyncpg.Pool, project_id: str, plan_id: UUID, limit: int = 50) -> list[Run]:
    """The plan's runs, newest first; 404 when the project has no such plan (a deleted one keeps its runs)."""
    if not await pool.fetchval("SELECT 1 FROM plans WHERE id = $1 AND project_id = $2", plan_id, project_id):
        raise NotFound(f"plan {plan_id} does not exist in project {project_id!r}", field="plan_id")
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
            )
            for s in steps
        ],
    )
