"""Planner's Kafka handlers: thin, they log and call the repository or service."""

from __future__ import annotations

from services.planner.probes import repository
from services.planner.runs import service as runs
from shared.bus import HandlerContext, HandlerRegistry, write_outbox
from shared.events.platform import ProbeAnsweredV1
from shared.events.steps import StepProgressedV1

handlers = HandlerRegistry()


@handlers.handles(ProbeAnsweredV1)
async def probe_answered(event: ProbeAnsweredV1, ctx: HandlerContext) -> None:
    await repository.insert_reply(ctx.tx, event.probe_id, event.service, event.seq, ctx.envelope.id, event.answered_at)


@handlers.handles(StepProgressedV1)
async def step_progressed(event: StepProgressedV1, ctx: HandlerContext) -> None:
    """A domain service reported on a step: record it and dispatch what became ready."""
    rows = await runs.on_progress(ctx.tx, event, ctx.state.settings.step_timeout_seconds)
    await write_outbox(ctx.tx, rows)
