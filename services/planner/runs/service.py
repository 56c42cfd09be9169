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
- re-ask: a step in flight nothing was heard from for ``step_reask_seconds`` gets its command again (same
  dispatch id; the services' operations are idempotent), so a lost progress event costs seconds, not the
  step timeout.
No step stays pending or in flight forever: overdue steps fail with what was last seen.

What happens next is decided by the pure machine (``runs/machine.py``); this module reads what it needs,
applies its decision and writes the resulting commands and events to the outbox, in one transaction.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from uuid import UUID

import asyncpg
from pydantic import ValidationError

from services.planner.plans import repository as plans_repository
from services.planner.plans import service as plans_service
from services.planner.plans.compiler import Graph
from services.planner.plans.domain import CheckedPlan, check_plan
from services.planner.plans.service import Subject
from services.planner.previews import service as previews_service
from services.planner.previews.live import DomainServices
from services.planner.runs import repository
from services.planner.runs.machine import (
    ACTIVE,
    FINISHED,
    IN_FLIGHT,
    RESUMABLE,
    AppliedStep,
    Decided,
    Dispatch,
    Finish,
    PlannedStep,
    Run,
    RunState,
    StartRollback,
    StepState,
    decide,
    describe_planned,
    wants_ledger,
)
from services.planner.runs.ordering import destroy_after, destroy_order
from services.planner.runs.schemas import ResumeRequest, RunRequest
from services.planner.runs.trusts import Delegation
from services.planner.settings import PlannerSettings
from shared.auth import Caller
from shared.bus import OutboxRow, make_outbox_row, write_outbox
from shared.errors import Conflict, DependencyUnavailable, InvalidInput, NotFound
from shared.events.kinds import Kind, parse_params
from shared.events.steps import ApplyStepV1, ApplyStepV2, DestroyStepV1, DestroyStepV2, RunChangedV2, StepProgressedV1
from shared.logging import get_logger
from shared.topics import commands_topic, events_topic

log = get_logger(__name__)
SOURCE = "/dcostack/planner"

# --- what a run does -----------------------------------------------------------------------------------


async def _compile(conn: asyncpg.Connection, plan_id: UUID, version: int) -> Graph | None:
    row = await plans_repository.get_version(conn, plan_id, version)
    if row is None:
        return None
    try:
        graph = await plans_service.compiled_version(plan_id, version, json.loads(row["document"]))
    except Exception as exc:  # whatever an old version does to today's compiler, its keys are ordered by kind
        log.warning("run.old_version_not_compiled", plan_id=str(plan_id), version=version, error=str(exc))
        return None
    if graph is None:  # an old version the current spec refuses: order its keys by kind instead
        log.warning("run.old_version_not_compiled", plan_id=str(plan_id), version=version, error="refused by the spec")
    return graph


async def _plan_steps(
    conn: asyncpg.Connection,
    plan_id: UUID,
    action: str,
    graph: Graph,
    version: int,
    ledger: dict[str, AppliedStep],
) -> list[PlannedStep]:
    """The steps of a run, in dispatch priority: the version's graph, and the ledger's keys it lacks."""
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
    numbers = [version]
    for number in sorted({ledger[k].plan_version for k in keys if k in ledger} - {version}, reverse=True):
        old = await _compile(conn, plan_id, number)
        if old is not None:
            graphs.append(old)
            numbers.append(number)
    kinds = {k: (ledger[k].kind if k in ledger else graph.steps[k].kind) for k in keys}
    ordered = destroy_after(keys, graphs, kinds)
    for position in ordered.skipped:
        log.warning(
            "run.destroy_order.version_skipped",
            plan_id=str(plan_id),
            version=numbers[position],
            reason="its dependencies contradict a newer version",
        )
    after = ordered.after
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
    plan = await plans_repository.get_plan(conn, project_id, plan_id, for_update=True)
    if plan is None:
        raise NotFound(f"plan {plan_id} does not exist in project {project_id!r}", field="plan_id")
    return plan


async def _refuse_if_busy(conn: asyncpg.Connection, plan_id: UUID, but: UUID | None = None) -> None:
    busy = await repository.busy_run(conn, plan_id, but)
    if busy is not None:
        raise Conflict(
            f"run {busy['id']} of this plan is still {busy['state'].replace('_', ' ')}; wait for it "
            f"(dcostack run watch {busy['id']}) or cancel it (dcostack run cancel {busy['id']}) first",
            run_id=busy["id"],
        )


async def _checked_version(conn: asyncpg.Connection, plan_id: UUID, number: int) -> CheckedPlan:
    row = await plans_repository.get_version(conn, plan_id, number)
    if row is None:
        raise NotFound(f"plan {plan_id} has no version {number}", field="version")
    return await asyncio.to_thread(check_plan, json.loads(row["document"]))


def _unchanged(planned: list[PlannedStep], ledger: dict[str, AppliedStep], live: set[str]) -> list[str]:
    """The apply steps that are live and unchanged in the cloud and that the ledger says were applied with
    exactly these parameters: kept as succeeded without being dispatched (a scale-out from 50 to 100 then
    dispatches 50 servers, not 100)."""
    return [
        p.key
        for p in planned
        if p.action == "apply" and p.key in live and p.key in ledger and ledger[p.key].params == p.params
    ]


async def start_run(
    pool: asyncpg.Pool,
    settings: PlannerSettings,
    delegation: Delegation,
    caller: Caller,
    plan_id: UUID,
    request: RunRequest,
) -> Run:
    """Apply (or destroy) a plan version as a run: the plan is read and compiled once, the preview it starts
    from (or, for a re-apply without one, a preview computed now) says which steps are live and unchanged,
    the caller's roles are delegated to the run (a trust, revoked again if the run cannot start), and the
    first steps are dispatched."""
    if request.preview_id is not None and request.action != "apply":
        raise InvalidInput("preview_id applies to an apply; leave it out for a destroy", field="preview_id")
    # 404 for another project's plan (or a missing version) before anything is read or delegated
    subject = await plans_service.read_checked(pool, caller.project_id, plan_id, request.version)
    live_unchanged: set[str] | None = None
    if request.preview_id is not None:
        fresh, _ = await previews_service.current_preview(
            pool,
            request.preview_id,
            plan_id,
            subject.version.version,
            project_id=caller.project_id,
            settings=settings,
            caller=caller,
            subject=subject,
        )
        failed = [c for c in fresh.checks if c.status == "failed"]
        if failed and not request.force:
            reasons = "; ".join(f"{c.name}: {c.message}" + (f" ({c.fix})" if c.fix else "") for c in failed)
            raise Conflict(
                f"preview {request.preview_id} says this apply would fail: {reasons}. Change the plan or the cloud "
                "and preview again, or start with force=true to run it anyway",
                field="preview_id",
            )
        live_unchanged = fresh.unchanged
    elif request.action == "apply":
        live_unchanged = await _live_unchanged(pool, settings, caller, subject)
    trust_id = await delegation.delegate(caller, f"a {request.action} of plan {plan_id}")
    try:
        run_id = await _create_run(
            pool,
            caller.project_id,
            subject,
            request.action,
            settings.step_timeout_seconds,
            preview_id=request.preview_id,
            trust_id=trust_id,
            live_unchanged=live_unchanged,
        )
    except BaseException:
        if trust_id is not None:  # no run holds it: delete it now rather than let it wait for its expiry
            await delegation.revoke(trust_id)
        raise
    return await get_run(pool, caller.project_id, run_id)


async def _live_unchanged(
    pool: asyncpg.Pool, settings: PlannerSettings, caller: Caller, subject: Subject
) -> set[str] | None:
    """Keys of a re-apply's steps that are live and as the plan wants them, per a preview computed now when
    the plan has built something before. Without an answer from the domain services, None: every step is
    dispatched (and finds what exists by its marks)."""
    plan_id = subject.plan.id
    if not await repository.has_applied(pool, plan_id):
        return None  # nothing built yet: nothing to keep
    try:
        found = await previews_service.compute_preview(
            pool, DomainServices.of(settings, caller), caller.project_id, plan_id, subject=subject
        )
    except DependencyUnavailable as exc:
        log.info("run.live_state_unknown", plan_id=str(plan_id), reason=exc.detail)
        return None
    return found.unchanged


async def _create_run(
    pool: asyncpg.Pool,
    project_id: str,
    subject: Subject,
    action: str,
    step_timeout: float,
    preview_id: UUID | None = None,
    trust_id: str | None = None,
    live_unchanged: set[str] | None = None,
) -> UUID:
    """Create a run of the compiled plan version and dispatch its first steps.

    ``preview_id`` records the preview the run was started from (checked to be current);
    ``trust_id`` is the Keystone trust its steps act through (services/planner/runs/trusts.py).
    ``live_unchanged``: step keys seen in the cloud as the plan wants them (a preview's ``unchanged``);
    those an earlier run applied with the same parameters are kept, not dispatched again."""
    plan_id, number, checked = subject.plan.id, subject.version.version, subject.checked
    async with pool.acquire() as conn, conn.transaction():
        await _locked_plan(conn, project_id, plan_id)
        await _refuse_if_busy(conn, plan_id)
        # read under the plan's lock, with no other run in progress: no step can change it meanwhile
        ledger = {a.key: a for a in await repository.applied_steps(conn, plan_id)}
        planned = await _plan_steps(conn, plan_id, action, checked.graph, number, ledger)
        run_id = uuid.uuid4()
        await repository.insert_run(
            conn,
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
        await repository.insert_steps(conn, run_id, enumerate(planned))
        keep = _unchanged(planned, ledger, live_unchanged or set())
        if keep:
            await repository.keep_unchanged(conn, run_id, plan_id, keep)
        message = describe_planned([p.action for p in planned], len(keep))
        rows = [_run_event(run_id, plan_id, number, action, RunState.RUNNING, message)]
        rows += await advance(conn, run_id, step_timeout)
        await write_outbox(conn, rows)
    log.info("run.started", run_id=str(run_id), plan_id=str(plan_id), action=action, steps=len(planned))
    return run_id


async def _locked_run(conn: asyncpg.Connection, project_id: str, run_id: UUID) -> asyncpg.Record:
    run = await repository.lock_run(conn, run_id, project_id)
    if run is None:
        raise NotFound(f"run {run_id} does not exist in project {project_id!r}", field="run_id")
    return run


async def cancel_run(pool: asyncpg.Pool, project_id: str, run_id: UUID, step_timeout: float) -> Run:
    """Stop dispatching: the run is ``cancelling`` until what is in flight ends, then ``cancelled``."""
    await _cancel(pool, project_id, run_id, step_timeout)
    return await get_run(pool, project_id, run_id)


async def _cancel(pool: asyncpg.Pool, project_id: str, run_id: UUID, step_timeout: float) -> None:
    async with pool.acquire() as conn, conn.transaction():
        run = await _locked_run(conn, project_id, run_id)
        if run["state"] == RunState.CANCELLING:
            return  # asked twice: the first request already does it
        if run["state"] == RunState.ROLLING_BACK:
            raise Conflict(
                f"run {run_id} is rolling back what it created; cancelling would leave part of it in the cloud. "
                f"Wait for it to end (dcostack run watch {run_id})",
                run_id=run_id,
            )
        if run["state"] in FINISHED:
            hint = f"; continue it with dcostack run resume {run_id}" if run["state"] in RESUMABLE else ""
            raise Conflict(f"run {run_id} already ended {run['state']}: nothing to cancel{hint}", run_id=run_id)
        in_flight = await repository.count_in_flight(conn, run_id)
        message = f"cancelling: nothing more is dispatched; waiting for {in_flight} step(s) in flight"
        await repository.set_run_state(conn, run_id, RunState.CANCELLING, message)
        rows = [_run_event(run_id, run["plan_id"], run["plan_version"], run["action"], RunState.CANCELLING, message)]
        rows += await advance(conn, run_id, step_timeout)
        await write_outbox(conn, rows)
    log.info("run.cancelling", run_id=str(run_id))


async def resume_run(
    pool: asyncpg.Pool,
    settings: PlannerSettings,
    delegation: Delegation,
    caller: Caller,
    run_id: UUID,
    request: ResumeRequest | None,
) -> Run:
    """Continue a failed or cancelled run in place with its plan version (or the request's), acting through
    a new delegation of the caller's roles (revoked again if the run cannot resume)."""
    if await repository.run_plan_id(pool, caller.project_id, run_id) is None:  # 404 before anything is delegated
        raise NotFound(f"run {run_id} does not exist in project {caller.project_id!r}", field="run_id")
    trust_id = await delegation.delegate(caller, f"resuming run {run_id}")
    try:
        await _resume(
            pool,
            caller.project_id,
            run_id,
            request.version if request else None,
            settings.step_timeout_seconds,
            trust_id,
        )
    except BaseException:
        if trust_id is not None:
            await delegation.revoke(trust_id)
        raise
    return await get_run(pool, caller.project_id, run_id)


async def _resume(
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
        plan_id = await repository.run_plan_id(conn, project_id, run_id)
        if plan_id is None:
            raise NotFound(f"run {run_id} does not exist in project {project_id!r}", field="run_id")
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
        later = await repository.later_run(conn, plan_id, run["created_at"])
        if later is not None:
            raise Conflict(
                f"run {later} of this plan started after run {run_id}; resuming an older run would undo it. "
                "Start a new run instead (dcostack plan apply)",
                run_id=later,
            )
        number = version or run["plan_version"]
        checked = await _checked_version(conn, plan_id, number)
        ledger = {a.key: a for a in await repository.applied_steps(conn, plan_id)}
        planned = await _plan_steps(conn, plan_id, run["action"], checked.graph, number, ledger)
        kept = await _reset_steps(conn, run_id, planned)
        todo = len(planned) - kept
        message = f"resumed with plan version {number}: {kept} succeeded step(s) kept, {todo} to do"
        if run["trust_id"] is not None and run["trust_id"] != trust_id:
            await repository.retire_trust(conn, run["trust_id"])
        await repository.resume_run(
            conn, run_id, number, checked.plan.on_failure, checked.plan.rollout.max_parallel, message, trust_id
        )
        rows = [_run_event(run_id, plan_id, number, run["action"], RunState.RUNNING, message)]
        rows += await advance(conn, run_id, step_timeout)
        await write_outbox(conn, rows)
    log.info("run.resumed", run_id=str(run_id), version=number, kept=kept)


async def _reset_steps(conn: asyncpg.Connection, run_id: UUID, planned: list[PlannedStep]) -> int:
    """Make the run's steps ``planned``; returns how many succeeded steps are kept as they are."""
    existing = {r["key"]: r for r in await repository.all_steps(conn, run_id)}

    def done(p: PlannedStep) -> bool:
        old = existing.get(p.key)
        return (
            old is not None
            and old["state"] == StepState.SUCCEEDED
            and not old["rollback"]
            and old["action"] == p.action
            and json.loads(old["params"]) == json.loads(json.dumps(p.params))
        )

    kept = {p.key for p in planned if done(p)}
    await repository.reset_steps(conn, run_id, planned, kept)
    return len(kept)


# --- advancing -------------------------------------------------------------------------------------


async def advance(
    conn: asyncpg.Connection, run_id: UUID, step_timeout: float, reask_after: timedelta | None = None
) -> list[OutboxRow]:
    """Decide what happens next to the run and apply it. Call inside a transaction; returns outbox rows to
    write. With ``reask_after``, steps in flight nothing was heard from for that long are asked again."""
    run = await repository.lock_run(conn, run_id)
    if run is None or run["state"] not in ACTIVE:
        return []
    facts = repository.run_facts(run)
    steps, now = await repository.step_facts(conn, run_id)
    ledger = await repository.ledger_creators(conn, run["plan_id"]) if wants_ledger(facts, steps) else None
    decision = decide(facts, steps, ledger=ledger, now=now if reask_after else None, reask_after=reask_after)
    return await _apply(conn, run, decision, step_timeout)


async def _apply(
    conn: asyncpg.Connection, run: asyncpg.Record, decision: Decided, step_timeout: float
) -> list[OutboxRow]:
    """Write one decision of the machine: step and run rows, and the commands and events it sends."""
    run_id = run["id"]
    rows: list[OutboxRow] = []
    if decision.blocked:
        await repository.block_steps(conn, run_id, dict(decision.blocked))
    if decision.reask:
        asked = await repository.reask_steps(conn, run_id, decision.reask)
        rows += [_command(run, step, step_timeout) for step in asked]
        log.warning("run.steps_reasked", run_id=str(run_id), steps=[s["key"] for s in asked])
    if isinstance(decision, Finish):
        if decision.pending_to is not None:
            await repository.end_pending(conn, run_id, decision.pending_to, decision.pending_message)
        rows.append(await _finish(conn, run, decision.state, decision.message))
    elif isinstance(decision, StartRollback):
        await repository.end_pending(conn, run_id, StepState.SKIPPED, decision.skip_message)
        await repository.turn_to_rollback(conn, run_id, decision.undo)
        await repository.set_run_state(conn, run_id, RunState.ROLLING_BACK, decision.message)
        log.info("run.rolling_back", run_id=str(run_id), steps=len(decision.undo))
        rows.append(
            _run_event(
                run_id, run["plan_id"], run["plan_version"], run["action"], RunState.ROLLING_BACK, decision.message
            )
        )
        rows += await _apply(conn, run, decision.then, step_timeout)
    elif isinstance(decision, Dispatch):
        chosen = await repository.dispatch_steps(conn, run_id, decision.keys, step_timeout)
        rows += [_command(run, step, step_timeout) for step in chosen]
    return rows


def _command(run: asyncpg.Record, step: asyncpg.Record, step_timeout: float) -> OutboxRow:
    """The command that asks the step's service to do it, under the step's current dispatch id: V2 with
    typed params; V1 only for a step whose stored params no longer fit its kind's model (a ledger row
    older than the models), which the executors still accept."""
    fields: dict[str, Any] = {
        "dispatch_id": step["dispatch_id"],
        "run_id": run["id"],
        "plan_id": run["plan_id"],
        "step_key": step["key"],
        "path": step["path"],
        "timeout_seconds": step_timeout,
        "trust_id": run["trust_id"],
    }
    params = json.loads(step["params"])
    data: ApplyStepV1 | DestroyStepV1 | ApplyStepV2 | DestroyStepV2
    try:
        typed = parse_params(step["kind"], params)
    except (KeyError, ValidationError):
        v1 = ApplyStepV1 if step["action"] == "apply" else DestroyStepV1
        data = v1(**fields, kind=step["kind"], params=params)
    else:
        v2 = ApplyStepV2 if step["action"] == "apply" else DestroyStepV2
        data = v2(**fields, kind=Kind(step["kind"]), params=typed)
    return make_outbox_row(
        data,
        source=SOURCE,
        topic=commands_topic(step["service"]),
        key=str(run["id"]),
        subject=step["key"],
        correlation_id=str(run["id"]),
        project_id=run["project_id"],
    )


async def _finish(conn: asyncpg.Connection, run: asyncpg.Record, state: RunState, message: str) -> OutboxRow:
    await repository.finish_run(conn, run["id"], state, message)
    log.info("run.finished", run_id=str(run["id"]), state=state, message=message)
    return _run_event(run["id"], run["plan_id"], run["plan_version"], run["action"], state, message)


def _run_event(run_id: UUID, plan_id: UUID, version: int, action: str, state: RunState, message: str) -> OutboxRow:
    data = RunChangedV2(
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
    run = await repository.lock_run(conn, event.run_id)
    if run is None:
        return []
    step = await repository.lock_step(conn, event.run_id, event.step_key)
    if step is None or step["dispatch_id"] != event.dispatch_id or step["state"] not in IN_FLIGHT:
        return []  # a report on an older dispatch, or on a step already decided (e.g. timed out)
    if event.state == "running":
        await repository.step_running(conn, event.run_id, event.step_key, event.message)
        return []
    state = StepState(event.state)
    message = event.message
    if step["rollback"]:
        state = StepState.ROLLED_BACK if event.state == "succeeded" else StepState.ERROR
        message = "rolled back: removed" if event.state == "succeeded" else f"could not be rolled back: {message}"
    await repository.step_ended(conn, event.run_id, event.step_key, state, message, event.outputs, event.error)
    if event.state == "succeeded":
        await repository.record_applied(conn, run, step, event.outputs)
    return await advance(conn, event.run_id, step_timeout)


async def fail_overdue(pool: asyncpg.Pool, step_timeout: float) -> int:
    """Fail steps whose deadline passed (their service is down or stuck) and advance their runs."""
    failed = 0
    async with pool.acquire() as conn, conn.transaction():
        rows: list[OutboxRow] = []
        for run_id in await repository.runs_with_overdue_steps(conn):
            # The run's row first, as on_progress does, so the two never wait for each other.
            await repository.lock_run(conn, run_id)
            steps = await repository.fail_overdue_steps(conn, run_id)
            failed += len(steps)
            if steps:
                rows += await advance(conn, run_id, step_timeout)
        await write_outbox(conn, rows)
    return failed


async def reask_quiet(pool: asyncpg.Pool, step_timeout: float, reask_seconds: float) -> int:
    """Ask again for the steps in flight nothing was heard from for ``reask_seconds`` (at most once per that
    interval each): a lost command or progress event costs one interval, not the step timeout."""
    rows: list[OutboxRow] = []
    async with pool.acquire() as conn, conn.transaction():
        for run_id in await repository.runs_with_quiet_steps(conn, reask_seconds):
            rows += await advance(conn, run_id, step_timeout, reask_after=timedelta(seconds=reask_seconds))
        await write_outbox(conn, rows)
    return len(rows)


async def watch_deadlines(pool: asyncpg.Pool, step_timeout: float, every: float, reask_seconds: float) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            failed = await fail_overdue(pool, step_timeout)
            if failed:
                log.warning("run.steps_timed_out", count=failed)
            await reask_quiet(pool, step_timeout, reask_seconds)
        except Exception as exc:  # the database may be briefly away; try again next round
            log.warning("run.deadline_check_failed", error=str(exc) or type(exc).__name__)


# --- reading -----------------------------------------------------------------------------------------


async def get_run(pool: asyncpg.Pool | asyncpg.Connection, project_id: str, run_id: UUID) -> Run:
    found = await repository.get_run(pool, project_id, run_id)
    if found is None:
        raise NotFound(f"run {run_id} does not exist in project {project_id!r}", field="run_id")
    return found


async def list_runs(pool: asyncpg.Pool, project_id: str, plan_id: UUID, limit: int = 50) -> list[Run]:
    """The plan's runs, newest first; 404 when the project has no such plan (a deleted one keeps its runs)."""
    if not await repository.plan_known(pool, project_id, plan_id):
        raise NotFound(f"plan {plan_id} does not exist in project {project_id!r}", field="plan_id")
    return await repository.list_runs(pool, project_id, plan_id, limit)
