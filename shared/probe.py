"""The answering side of the platform self-check, the same in every domain service.

A service records each RunProbeV1 command it handles in its own ``probe_answers`` table and answers
with ProbeAnsweredV1 on its bulk-lane events topic, both in the handler's transaction. Probes use the
bulk lane only (``dcostack.<domain>.bulk.commands`` in, ``dcostack.<domain>.bulk.events`` out), so a big
probe never delays a run's step commands or progress.
"""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from fastapi import APIRouter, Request
from pydantic import BaseModel

from shared.bus.handlers import HandlerContext, HandlerRegistry
from shared.events.platform import ProbeAnsweredV1, RunProbeV1
from shared.topics import Lane, events_topic


class ProbeAnswer(BaseModel):
    probe_id: UUID
    seq: int
    event_id: str
    answered_at: datetime


class ProbeAnswers(BaseModel):
    service: str
    probe_id: UUID
    answers: list[ProbeAnswer]


def register_probe_handler(handlers: HandlerRegistry, service: str) -> None:
    @handlers.handles(RunProbeV1)
    async def run_probe(cmd: RunProbeV1, ctx: HandlerContext) -> None:
        await ctx.tx.execute(
            "INSERT INTO probe_answers (probe_id, seq, event_id) VALUES ($1, $2, $3)",
            cmd.probe_id,
            cmd.seq,
            ctx.envelope.id,
        )
        ctx.publish(
            ProbeAnsweredV1(probe_id=cmd.probe_id, seq=cmd.seq, service=service, answered_at=datetime.now(UTC)),
            topic=events_topic(service, Lane.BULK),
            key=str(cmd.probe_id),
            subject=str(cmd.probe_id),
        )


def probe_router(service: str) -> APIRouter:
    router = APIRouter(prefix=f"/v1/{service}/probes", tags=["self-check"])

    @router.get("/{probe_id}", response_model=ProbeAnswers)
    async def get_probe_answers(probe_id: UUID, request: Request) -> ProbeAnswers:
        """The self-check commands of one probe that this service handled, in handling order."""
        pool = request.app.state.runtime.pool
        rows = await pool.fetch(
            "SELECT probe_id, seq, event_id, answered_at FROM probe_answers WHERE probe_id = $1 ORDER BY id",
            probe_id,
        )
        return ProbeAnswers(service=service, probe_id=probe_id, answers=[ProbeAnswer(**dict(r)) for r in rows])

    return router
