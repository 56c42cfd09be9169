"""The run state machine (pure): given a run and its steps, what happens next. No I/O.

``decide`` returns one decision; ``runs/service.py`` applies it in the transaction that read the run:
- :class:`Wait`: nothing to start (steps in flight finish first, or nothing is ready);
- :class:`Dispatch`: send these pending steps to their services (at most ``max_parallel`` in flight);
- :class:`Finish`: the run ends in a state, with the steps never started ended as said;
- :class:`StartRollback`: a failed apply with ``on_failure: rollback`` turns what this run created into
  destroy steps, ordered by the reverse of their dependencies, and then dispatches the first of them.
Any decision may also carry ``blocked`` (rollback steps that cannot be undone because a dependant could
not be removed) and ``reask`` (steps in flight nothing was heard from for ``reask_after``: their command
is sent again with the same dispatch id; the services' operations are idempotent).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from uuid import UUID

from services.planner.runs.ordering import collapse, destroy_order, reverse_edges

# The run states are the published contract's (RunChangedV2), re-exported for the planner.
from shared.events.steps import RunState as RunState


class StepState(StrEnum):
    PENDING = "pending"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    ROLLED_BACK = "rolled_back"
    ERROR = "error"


#: A run in one of these states is in progress: no other run of its plan may start.
ACTIVE = frozenset({RunState.RUNNING, RunState.CANCELLING, RunState.ROLLING_BACK})
FINISHED = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.ROLLED_BACK})
RESUMABLE = frozenset({RunState.FAILED, RunState.CANCELLED})
IN_FLIGHT = frozenset({StepState.DISPATCHED, StepState.RUNNING})


# --- what the machine reads ------------------------------------------------------------------------


@dataclass(frozen=True)
class RunFacts:
    """What deciding needs of a run."""

    id: UUID
    action: str  # apply or destroy
    state: RunState
    on_failure: str  # rollback or hold
    max_parallel: int


@dataclass(frozen=True)
class StepFacts:
    """What deciding needs of a step, in dispatch priority (``seq``)."""

    key: str
    state: StepState
    action: str = "apply"
    after: tuple[str, ...] = ()
    rollback: bool = False
    seq: int = 0
    has_error: bool = False
    #: when the planner last heard from the step's service about it, or last asked it (dispatch, re-ask)
    heard_at: datetime | None = None


# --- what it decides -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Decision:
    #: rollback steps that cannot be undone, with why; they end ``error``
    blocked: Mapping[str, str] = field(default_factory=dict)
    #: steps in flight to ask again (same command, same dispatch id)
    reask: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Wait(Decision):
    """Nothing starts now."""


@dataclass(frozen=True, kw_only=True)
class Dispatch(Decision):
    keys: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Finish(Decision):
    state: RunState
    message: str
    #: what the steps still pending become (they never started), and their message
    pending_to: StepState | None = None
    pending_message: str = ""


@dataclass(frozen=True)
class UndoStep:
    """A step that becomes a rollback (destroy) step, at ``seq``, after the rollback steps in ``after``."""

    key: str
    seq: int
    after: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class StartRollback(Decision):
    #: the message of the steps still pending, which end ``skipped``
    skip_message: str
    undo: tuple[UndoStep, ...]
    message: str
    #: what the run does right after (dispatches the first rollback steps)
    then: Wait | Dispatch


Decided = Wait | Dispatch | Finish | StartRollback


def wants_ledger(run: RunFacts, steps: Sequence[StepFacts]) -> bool:
    """Whether :func:`decide` needs the ledger: only to start a rollback."""
    return (
        run.state == RunState.RUNNING
        and run.action == "apply"
        and run.on_failure == "rollback"
        and any(s.state == StepState.FAILED for s in steps)
    )


def decide(
    run: RunFacts,
    steps: Sequence[StepFacts],
    *,
    ledger: Mapping[str, UUID] | None = None,
    now: datetime | None = None,
    reask_after: timedelta | None = None,
) -> Decided:
    """What happens next to ``run``. ``ledger``: the plan's applied keys and the run that created each
    (needed when :func:`wants_ledger`). With ``now`` and ``reask_after``, steps in flight nothing was heard
    from for ``reask_after`` are to be asked again."""
    if run.state not in ACTIVE:
        return Wait()
    reask = _reask(steps, now, reask_after)
    in_flight = sum(1 for s in steps if s.state in IN_FLIGHT)
    if run.state == RunState.CANCELLING:
        if in_flight:
            return Wait(reask=reask)  # what is in flight finishes (or times out); nothing new starts
        failed = sorted(s.key for s in steps if s.state == StepState.FAILED)
        done = sum(1 for s in steps if s.state == StepState.SUCCEEDED)
        message = f"cancelled: {done} step(s) done, the others not started"
        if failed:
            message += f"; {len(failed)} failed: {', '.join(failed[:5])}"
        return Finish(
            state=RunState.CANCELLED,
            message=message + f". Continue with: dcostack run resume {run.id}",
            pending_to=StepState.CANCELLED,
            pending_message="cancelled before it started",
        )
    if run.state == RunState.ROLLING_BACK:
        return _advance_rollback(run, steps, reask)
    failed = sorted(s.key for s in steps if s.state == StepState.FAILED)
    if failed:
        if in_flight:
            return Wait(reask=reask)  # wait for what is in flight to finish, so nothing is left half-done
        names = ", ".join(failed[:5]) + (", ..." if len(failed) > 5 else "")
        if run.action == "apply" and run.on_failure == "rollback":
            if ledger is None:
                raise ValueError("starting a rollback needs the ledger (see wants_ledger)")
            return _start_rollback(run, steps, failed, ledger)
        kept = "everything built so far is kept" if run.action == "apply" else "what is not destroyed yet is kept"
        reason = "on_failure: hold" if run.action == "apply" else "a destroy is never rolled back"
        return Finish(
            state=RunState.FAILED,
            message=f"held: {len(failed)} step(s) failed: {names}; {kept} ({reason}). Fix the plan, then "
            f"dcostack run resume {run.id} --version N",
            pending_to=StepState.SKIPPED,
            pending_message=f"not started: {', '.join(failed[:3])} failed",
        )
    if all(s.state == StepState.SUCCEEDED for s in steps):
        return Finish(state=RunState.SUCCEEDED, message=f"{describe_done(steps)} succeeded")
    state = {s.key: s.state for s in steps}
    ready = [
        s.key
        for s in steps
        if s.state == StepState.PENDING and all(state.get(dep) == StepState.SUCCEEDED for dep in s.after)
    ]
    return _dispatch(ready, run.max_parallel - in_flight, reask=reask)


def _dispatch(ready: list[str], slots: int, **rest: Any) -> Wait | Dispatch:
    if slots <= 0 or not ready:
        return Wait(**rest)
    return Dispatch(keys=tuple(ready[:slots]), **rest)


def _reask(steps: Sequence[StepFacts], now: datetime | None, every: timedelta | None) -> tuple[str, ...]:
    if now is None or every is None:
        return ()
    return tuple(s.key for s in steps if s.state in IN_FLIGHT and (s.heard_at is None or now - s.heard_at >= every))


def _start_rollback(
    run: RunFacts, steps: Sequence[StepFacts], failed: list[str], ledger: Mapping[str, UUID]
) -> Finish | StartRollback:
    skip_message = f"not started: {', '.join(failed[:3])} failed; rolling back"
    created = {key for key, run_id in ledger.items() if run_id == run.id}
    # A failed apply may have left a half-made resource (a server in ERROR); if the key existed before
    # this run, what is there is not this run's to remove.
    half_made = {s.key for s in steps if s.state == StepState.FAILED and s.action == "apply"} - set(ledger)
    undo = (created | half_made) & {s.key for s in steps}
    names = ", ".join(failed[:5])
    if not undo:
        return Finish(
            state=RunState.ROLLED_BACK,
            message=f"{names} failed; this run had created nothing to undo" + removals_kept(steps),
            pending_to=StepState.SKIPPED,
            pending_message=skip_message,
        )
    apply_after = {s.key: s.after for s in steps if s.action == "apply"}
    after = reverse_edges(collapse(apply_after, undo))
    order = destroy_order({k: after.get(k, frozenset()) for k in undo})
    first = max(s.seq for s in steps) + 1
    undo_steps = tuple(
        UndoStep(key, first + i, tuple(sorted(after.get(key, frozenset())))) for i, key in enumerate(order)
    )
    message = f"{len(failed)} step(s) failed: {names}; rolling back the {len(undo)} step(s) this run created"
    return StartRollback(
        skip_message=skip_message,
        undo=undo_steps,
        message=message,
        then=_after_rollback_starts(run, steps, undo_steps),
    )


def _after_rollback_starts(run: RunFacts, steps: Sequence[StepFacts], undo: tuple[UndoStep, ...]) -> Wait | Dispatch:
    """The decision on the run as :class:`StartRollback` leaves it."""
    turned = {u.key: u for u in undo}
    now_steps = []
    for s in steps:
        if s.key in turned:
            u = turned[s.key]
            s = dataclasses.replace(
                s, action="destroy", rollback=True, state=StepState.PENDING, seq=u.seq, after=u.after
            )
        elif s.state == StepState.PENDING:
            s = dataclasses.replace(s, state=StepState.SKIPPED)
        now_steps.append(s)
    then = decide(dataclasses.replace(run, state=RunState.ROLLING_BACK), sorted(now_steps, key=lambda s: s.seq))
    assert isinstance(then, Wait | Dispatch)  # nothing is undone yet, so nothing can end
    return then


def _advance_rollback(run: RunFacts, steps: Sequence[StepFacts], reask: tuple[str, ...]) -> Decided:
    undo = [s for s in steps if s.rollback]
    state = {s.key: s.state for s in undo}
    # A step whose dependant could not be removed cannot be removed either (its resource is still in use).
    blocked: dict[str, str] = {}
    changed = True
    while changed:
        changed = False
        for s in undo:
            if state[s.key] == StepState.PENDING:
                stuck = [d for d in s.after if state.get(d) == StepState.ERROR]
                if stuck:
                    state[s.key] = StepState.ERROR
                    blocked[s.key] = f"not rolled back: {stuck[0]} could not be removed first"
                    changed = True
    in_flight = sum(1 for v in state.values() if v in IN_FLIGHT)
    pending = [s.key for s in undo if state[s.key] == StepState.PENDING]
    if not in_flight and not pending:
        errors = sorted(k for k, v in state.items() if v == StepState.ERROR)
        # What failed: steps that stayed failed, and failed applies this rollback removed.
        failed = sorted(
            s.key
            for s in steps
            if s.state == StepState.FAILED or (s.rollback and s.has_error and state[s.key] == StepState.ROLLED_BACK)
        )
        if errors:
            return Finish(
                state=RunState.FAILED,
                message=f"rollback incomplete: {len(errors)} resource(s) could not be removed and are left in the "
                f"cloud: {', '.join(errors)} (see their errors); {len(undo) - len(errors)} removed"
                + removals_kept(steps),
                blocked=blocked,
            )
        return Finish(
            state=RunState.ROLLED_BACK,
            message=f"rolled back after {', '.join(failed[:5]) or 'a failure'} failed: removed the {len(undo)} "
            "resource(s) this run created; what existed before it is kept" + removals_kept(steps),
            blocked=blocked,
        )
    after = {s.key: s.after for s in undo}
    ready = [k for k in pending if all(state.get(d) == StepState.ROLLED_BACK for d in after[k])]
    return _dispatch(ready, run.max_parallel - in_flight, reask=reask, blocked=blocked)


# --- messages --------------------------------------------------------------------------------------


def removals_kept(steps: Sequence[StepFacts]) -> str:
    """A rollback undoes creations only: say what the run had already removed (scale-in) for good."""
    removed = sorted(
        s.key for s in steps if s.action == "destroy" and not s.rollback and s.state == StepState.SUCCEEDED
    )
    if not removed:
        return ""
    return (
        f"; {len(removed)} removal(s) done before the failure stay done ({', '.join(removed[:3])}"
        + (", ..." if len(removed) > 3 else "")
        + "): apply the previous version to bring them back"
    )


def describe_done(steps: Sequence[StepFacts]) -> str:
    removed = sum(1 for s in steps if s.action == "destroy")
    if removed and removed < len(steps):
        return f"{len(steps)} steps ({len(steps) - removed} applied, {removed} removed)"
    return f"{len(steps)} steps"


def describe_planned(actions: Sequence[str], kept: int = 0) -> str:
    """A new run's steps: how many apply, how many of those are kept unchanged, how many remove."""
    removals = sum(1 for a in actions if a == "destroy")
    unchanged = f", {kept} unchanged" if kept else ""
    if removals and removals < len(actions):
        return f"{len(actions)} steps ({len(actions) - removals - kept} to apply{unchanged}, {removals} to remove)"
    if kept:
        return f"{len(actions)} steps ({len(actions) - kept} to apply{unchanged})"
    return f"{len(actions)} steps"


# --- what a run is, as read back -------------------------------------------------------------------


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
    reasks: int = 0

    @property
    def resource_id(self) -> str | None:
        """The id of the cloud resource the step made or found (its outputs' ``id``)."""
        found = self.outputs.get("id")
        return str(found) if found is not None else None

    @property
    def took_seconds(self) -> float | None:
        """From its first dispatch to its result; None while in flight or never started."""
        if self.started_at is None or self.finished_at is None:
            return None
        return round((self.finished_at - self.started_at).total_seconds(), 3)


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
