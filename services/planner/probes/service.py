"""Self-check use cases; each owns its transaction and writes its commands to the outbox."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from uuid import UUID

import asyncpg

from services.planner.probes import repository
from services.planner.probes.domain import ProbeStatus, check_targets
from shared.bus import make_outbox_row, write_outbox
from shared.errors import NotFound
from shared.events.platform import RunProbeV1
from shared.topics import Lane, commands_topic

SOURCE = "/dcostack/planner"


async def start_probe(pool: asyncpg.Pool, targets: list[str] | None, count: int) -> ProbeStatus:
    """Record a probe and send ``count`` RunProbeV1 commands to each target, in one transaction."""
    chosen = check_targets(targets)
    probe_id = uuid.uuid4()
    now = datetime.now(UTC)
    rows = [
        make_outbox_row(
            RunProbeV1(probe_id=probe_id, seq=seq, target=target, requested_at=now),
            source=SOURCE,
            topic=commands_topic(target, Lane.BULK),
            key=str(probe_id),
            subject=str(probe_id),
            correlation_id=str(probe_id),
        )
        for target in chosen
        for seq in range(count)
    ]
    async with pool.acquire() as conn, conn.transaction():
        await repository.insert_probe(conn, probe_id, chosen, count)
        await write_outbox(conn, rows)
    return ProbeStatus(probe_id, chosen, count, {})


async def probe_status(pool: asyncpg.Pool, probe_id: UUID) -> ProbeStatus:
    row = await repository.get_probe(pool, probe_id)
    if row is None:
        raise NotFound(f"probe {probe_id} not found; start one with POST /v1/probes", probe_id=probe_id)
    return ProbeStatus(probe_id, list(row["targets"]), row["count"], await repository.count_replies(pool, probe_id))
