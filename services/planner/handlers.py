"""Planner's Kafka handlers: thin, they log and call the repository or service."""

from __future__ import annotations

from services.planner import repository
from shared.bus import HandlerContext, HandlerRegistry
from shared.events.platform import ProbeAnsweredV1

handlers = HandlerRegistry()


@handlers.handles(ProbeAnsweredV1)
async def probe_answered(event: ProbeAnsweredV1, ctx: HandlerContext) -> None:
    await repository.insert_reply(ctx.tx, event.probe_id, event.service, event.seq, ctx.envelope.id, event.answered_at)
