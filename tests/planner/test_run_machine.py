"""The run state machine, pure: every transition of ``decide``, without a database or a broker."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from services.planner.runs.machine import (
    Dispatch,
    Finish,
    RunFacts,
    RunState,
    StartRollback,
    StepFacts,
    StepState,
    UndoStep,
    Wait,
    decide,
    wants_ledger,
)

RUN_ID = uuid.uuid4()
OTHER_RUN = uuid.uuid4()
P, D, R, S, F = StepState.PENDING, StepState.DISPATCHED, StepState.RUNNING, StepState.SUCCEEDED, StepState.FAILED


def run(
    state: RunState = RunState.RUNNING, *, action: str = "apply", on_failure: str = "rollback", parallel: int = 10
) -> RunFacts:
    return RunFacts(id=RUN_ID, action=action, state=state, on_failure=on_failure, max_parallel=parallel)


def chain(*states: StepState, action: str = "apply") -> list[StepFacts]:
    """network → subnet → server: each step after the one before."""
    keys = ["network/net", "subnet/net", "server/w-0"]
    return [
        StepFacts(key=k, state=st, action=action, after=(keys[i - 1],) if i else (), seq=i)
        for i, (k, st) in enumerate(zip(keys, states, strict=False))
    ]


def fan(n: int, state: StepState = P) -> list[StepFacts]:
    """A network and n servers that each wait only for it."""
    return [StepFacts(key="network/net", state=S, seq=0)] + [
        StepFacts(key=f"server/w-{i}", state=state, after=("network/net",), seq=i + 1) for i in range(n)
    ]


class TestRunning:
    def test_first_ready_steps_are_dispatched_in_priority_order(self) -> None:
        assert decide(run(), chain(P, P, P)) == Dispatch(keys=("network/net",))

    def test_a_step_waits_until_every_step_it_comes_after_has_succeeded(self) -> None:
        assert decide(run(), chain(S, P, P)) == Dispatch(keys=("subnet/net",))
        assert decide(run(), chain(S, R, P)) == Wait()

    def test_at_most_max_parallel_are_in_flight(self) -> None:
        assert decide(run(parallel=3), fan(5)) == Dispatch(keys=("server/w-0", "server/w-1", "server/w-2"))
        steps = fan(5)
        steps[1] = replace(steps[1], state=D)
        steps[2] = replace(steps[2], state=R)
        assert decide(run(parallel=3), steps) == Dispatch(keys=("server/w-2",))
        steps[3] = replace(steps[3], state=D)
        assert decide(run(parallel=3), steps) == Wait()

    def test_all_succeeded_finishes_succeeded(self) -> None:
        decision = decide(run(), chain(S, S, S))
        assert isinstance(decision, Finish)
        assert decision.state == RunState.SUCCEEDED
        assert decision.message == "3 steps succeeded"
        assert decision.pending_to is None

    def test_a_run_with_removals_says_how_many_were_applied_and_removed(self) -> None:
        steps = [*chain(S, S), StepFacts(key="server/w-1", state=S, action="destroy", seq=5)]
        decision = decide(run(), steps)
        assert isinstance(decision, Finish)
        assert decision.message == "3 steps (2 applied, 1 removed) succeeded"

    @pytest.mark.parametrize("state", [RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.ROLLED_BACK])
    def test_an_ended_run_does_nothing(self, state: RunState) -> None:
        assert decide(run(state), chain(P, P, P)) == Wait()


class TestHold:
    def test_a_failure_waits_for_what_is_in_flight(self) -> None:
        steps = fan(2)
        steps[1] = replace(steps[1], state=F)
        steps[2] = replace(steps[2], state=R)
        assert decide(run(on_failure="hold"), steps) == Wait()

    def test_then_the_run_fails_held_and_pending_steps_are_skipped(self) -> None:
        decision = decide(run(on_failure="hold"), chain(S, F, P))
        assert isinstance(decision, Finish)
        assert decision.state == RunState.FAILED
        assert decision.message.startswith("held: 1 step(s) failed: subnet/net; everything built so far is kept")
        assert f"dcostack run resume {RUN_ID} --version N" in decision.message
        assert (decision.pending_to, decision.pending_message) == (StepState.SKIPPED, "not started: subnet/net failed")

    def test_a_destroy_is_never_rolled_back(self) -> None:
        decision = decide(run(action="destroy"), chain(S, F, P, action="destroy"))
        assert isinstance(decision, Finish)
        assert decision.state == RunState.FAILED
        assert "a destroy is never rolled back" in decision.message


class TestRollback:
    def test_the_ledger_is_needed_only_to_start_a_rollback(self) -> None:
        assert wants_ledger(run(), chain(S, F, P))
        assert not wants_ledger(run(), chain(S, S, P))
        assert not wants_ledger(run(on_failure="hold"), chain(S, F, P))
        assert not wants_ledger(run(action="destroy"), chain(S, F, P))
        with pytest.raises(ValueError, match="ledger"):
            decide(run(), chain(S, F, P))

    def test_what_this_run_created_and_the_half_made_step_are_undone_in_reverse(self) -> None:
        ledger = {"network/net": RUN_ID}  # the subnet failed: it may be half made, and it is not in the ledger
        decision = decide(run(), chain(S, F, P), ledger=ledger)
        assert isinstance(decision, StartRollback)
        assert decision.skip_message == "not started: subnet/net failed; rolling back"
        assert decision.undo == (UndoStep("subnet/net", 3, ()), UndoStep("network/net", 4, ("subnet/net",)))
        assert decision.message == "1 step(s) failed: subnet/net; rolling back the 2 step(s) this run created"
        assert decision.then == Dispatch(keys=("subnet/net",))

    def test_what_an_earlier_run_created_is_kept(self) -> None:
        ledger = {"network/net": OTHER_RUN, "subnet/net": OTHER_RUN}
        decision = decide(run(), chain(S, S, F), ledger=ledger)
        assert isinstance(decision, StartRollback)
        assert [u.key for u in decision.undo] == ["server/w-0"]

    def test_nothing_created_ends_rolled_back_at_once(self) -> None:
        ledger = {"network/net": OTHER_RUN, "subnet/net": OTHER_RUN, "server/w-0": OTHER_RUN}
        decision = decide(run(), chain(S, S, F), ledger=ledger)
        assert isinstance(decision, Finish)
        assert decision.state == RunState.ROLLED_BACK
        assert decision.message == "server/w-0 failed; this run had created nothing to undo"
        assert decision.pending_to == StepState.SKIPPED

    def test_removals_done_before_the_failure_are_said_to_stay_done(self) -> None:
        steps = [*chain(S, S, F), StepFacts(key="server/old-1", state=S, action="destroy", seq=3)]
        ledger = {"network/net": OTHER_RUN, "subnet/net": OTHER_RUN, "server/w-0": OTHER_RUN}
        decision = decide(run(), steps, ledger=ledger)
        assert isinstance(decision, Finish)
        assert "1 removal(s) done before the failure stay done (server/old-1)" in decision.message

    def rolling(self, *states: StepState, error: bool = False) -> list[StepFacts]:
        """Rollback steps of network ← subnet ← server (the server is removed first)."""
        keys = ["server/w-0", "subnet/net", "network/net"]
        return [
            StepFacts(
                key=k, state=st, action="destroy", rollback=True, after=(keys[i - 1],) if i else (), seq=10 + i,
                has_error=error and i == 0,
            )
            for i, (k, st) in enumerate(zip(keys, states, strict=True))
        ]  # fmt: skip

    def test_rollback_steps_go_one_after_another(self) -> None:
        rb = RunState.ROLLING_BACK
        RB = StepState.ROLLED_BACK
        assert decide(run(rb), self.rolling(P, P, P)) == Dispatch(keys=("server/w-0",))
        assert decide(run(rb), self.rolling(R, P, P)) == Wait()
        assert decide(run(rb), self.rolling(RB, P, P)) == Dispatch(keys=("subnet/net",))

    def test_everything_removed_ends_rolled_back_naming_what_failed(self) -> None:
        RB = StepState.ROLLED_BACK
        decision = decide(run(RunState.ROLLING_BACK), self.rolling(RB, RB, RB, error=True))
        assert isinstance(decision, Finish)
        assert decision.state == RunState.ROLLED_BACK
        assert decision.message.startswith("rolled back after server/w-0 failed: removed the 3 resource(s)")

    def test_a_step_that_cannot_be_removed_blocks_what_it_depends_on_and_the_run_fails(self) -> None:
        decision = decide(run(RunState.ROLLING_BACK), self.rolling(StepState.ERROR, P, P))
        assert isinstance(decision, Finish)
        assert decision.state == RunState.FAILED
        assert dict(decision.blocked) == {
            "subnet/net": "not rolled back: server/w-0 could not be removed first",
            "network/net": "not rolled back: subnet/net could not be removed first",
        }
        assert decision.message.startswith(
            "rollback incomplete: 3 resource(s) could not be removed and are left in the cloud: "
            "network/net, server/w-0, subnet/net"
        )


class TestCancel:
    def test_cancelling_waits_for_what_is_in_flight_and_dispatches_nothing(self) -> None:
        assert decide(run(RunState.CANCELLING), chain(S, R, P)) == Wait()

    def test_then_it_ends_cancelled_and_pending_steps_are_cancelled(self) -> None:
        decision = decide(run(RunState.CANCELLING), chain(S, S, P))
        assert isinstance(decision, Finish)
        assert decision.state == RunState.CANCELLED
        assert decision.message == (
            f"cancelled: 2 step(s) done, the others not started. Continue with: dcostack run resume {RUN_ID}"
        )
        assert (decision.pending_to, decision.pending_message) == (StepState.CANCELLED, "cancelled before it started")

    def test_a_failure_while_cancelling_is_named(self) -> None:
        decision = decide(run(RunState.CANCELLING), chain(S, F, P))
        assert isinstance(decision, Finish)
        assert "; 1 failed: subnet/net." in decision.message


class TestReask:
    NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    EVERY = timedelta(seconds=15)

    def test_a_step_in_flight_nothing_was_heard_from_for_the_interval_is_asked_again(self) -> None:
        steps = fan(3, D)
        steps[1] = replace(steps[1], heard_at=self.NOW - timedelta(seconds=16))  # quiet: asked again
        steps[2] = replace(steps[2], state=R, heard_at=self.NOW - timedelta(seconds=15))  # exactly the interval
        steps[3] = replace(steps[3], heard_at=self.NOW - timedelta(seconds=3))  # heard from lately
        decision = decide(run(), steps, now=self.NOW, reask_after=self.EVERY)
        assert decision == Wait(reask=("server/w-0", "server/w-1"))

    def test_without_now_nothing_is_asked_again(self) -> None:
        steps = fan(1, D)
        assert decide(run(), steps) == Wait()

    def test_re_asking_goes_with_dispatching_and_while_cancelling_or_rolling_back(self) -> None:
        steps = [*fan(1, D), StepFacts(key="volume/v", state=P, seq=9)]
        old = self.NOW - timedelta(minutes=1)
        steps = [replace(s, heard_at=old) for s in steps]
        assert decide(run(), steps, now=self.NOW, reask_after=self.EVERY) == Dispatch(
            keys=("volume/v",), reask=("server/w-0",)
        )
        assert decide(run(RunState.CANCELLING), steps, now=self.NOW, reask_after=self.EVERY) == Wait(
            reask=("server/w-0",)
        )
        rolling = [replace(s, rollback=True, action="destroy") for s in steps]
        decision = decide(run(RunState.ROLLING_BACK), rolling, now=self.NOW, reask_after=self.EVERY)
        assert decision.reask == ("server/w-0",)

    def test_a_step_not_in_flight_is_never_asked_again(self) -> None:
        steps = [replace(s, heard_at=self.NOW - timedelta(hours=1)) for s in chain(S, F, P)]
        decision = decide(run(on_failure="hold"), steps, now=self.NOW, reask_after=self.EVERY)
        assert decision.reask == ()
