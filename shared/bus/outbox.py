"""Transactional outbox: events are rows written in the same transaction as the state they describe;
the relay publishes them to Kafka in insertion order and deletes what the broker acknowledged.

Each row carries the lane of its event type and each lane has its own relay (shared/runtime.py), so a
backlog of bulk rows (a probe of thousands of events) never delays a step command written after it.
Order holds within a lane, which is all that matters: an event type never changes lane, so the events
of one key on one topic are all on one lane."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder

from shared.bus.kafka import KafkaBus
from shared.db import RETRIABLE_DB_ERRORS
from shared.events.base import EventData, check_lane
from shared.events.envelope import encode_headers, encode_value, kafka_headers, new_event_id
from shared.logging import get_logger
from shared.metrics import EVENTS_PUBLISHED, OUTBOX_PENDING
from shared.telemetry import inject_traceparent
from shared.topics import Lane

log = get_logger(__name__)
# The partitioner KafkaBus's producer uses, so a key maps to the same partition whoever sends it.
_PARTITIONER = DefaultPartitioner()


@dataclass(frozen=True, slots=True)
class OutboxRow:
    event_id: str
    topic: str
    key: str | None
    type: str
    headers: dict[str, str]
    payload: bytes
    #: The event type's LANE: which relay publishes the row.
    lane: Lane


def make_outbox_row(
    data: EventData,
    *,
    source: str,
    topic: str | None = None,
    key: str | None = None,
    subject: str | None = None,
    correlation_id: str | None = None,
    project_id: str | None = None,
) -> OutboxRow:
    """An event ready to be written to the outbox; the current trace context goes with it."""
    target = topic or data.TOPIC
    if target is None:
        raise ValueError(f"{type(data).__name__} has no default topic; pass topic=")
    check_lane(type(data), target)  # raises WrongLane: a bulk event never lands on a control topic, nor back
    event_id = new_event_id()
    trace: dict[str, str] = {}
    inject_traceparent(trace)
    headers = encode_headers(
        data,
        source=source,
        event_id=event_id,
        subject=subject,
        correlation_id=correlation_id,
        project_id=project_id,
        trace_headers=trace,
    )
    return OutboxRow(event_id, target, key, data.TYPE, headers, encode_value(data), data.LANE)


async def write_outbox(conn: asyncpg.Connection, rows: Sequence[OutboxRow]) -> None:
    """Insert rows into the service's outbox; call inside the transaction that changes the state.

    One statement for any number of rows: ``executemany`` would run the insert (and the statement
    trigger that wakes the relay) once per row."""
    if not rows:
        return
    await conn.execute(
        "INSERT INTO outbox (event_id, topic, key, type, headers, payload, lane) "
        "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::bytea[], $7::text[])",
        [r.event_id for r in rows],
        [r.topic for r in rows],
        [r.key for r in rows],
        [r.type for r in rows],
        [json.dumps(r.headers) for r in rows],
        [r.payload for r in rows],
        [r.lane.value for r in rows],
    )


class OutboxRelay:
    """Publishes one lane's outbox rows in id order. One relay per schema and lane holds that lane's
    advisory lock; replicas wait. ``lane=None`` relays every lane in one id order and takes every
    lane's lock (a tool or test that runs a single relay)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        bus: KafkaBus,
        *,
        schema: str,
        service: str,
        batch_size: int,
        poll_seconds: float,
        backoff_max: float = 5.0,
        publish_timeout: float = 30.0,
        lane: Lane | None = None,
    ) -> None:
        self.pool = pool
        self.bus = bus
        self.schema = schema
        self.service = service
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self.backoff_max = backoff_max
        self.publish_timeout = publish_timeout
        self.lane = lane
        self._wake = asyncio.Event()
        self.delivered = 0

    def wake(self, *_: object) -> None:
        self._wake.set()

    async def run(self) -> None:
        delay = 0.1
        while True:
            try:
                async with self.pool.acquire() as conn:
                    await self._run_locked(conn)
            except RETRIABLE_DB_ERRORS as e:
                log.warning("outbox.db_unavailable", error=str(e) or type(e).__name__, retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max)

    async def _run_locked(self, conn: asyncpg.Connection) -> None:
        lock_keys = [
            f"dcostack.outbox.{self.schema}.{lane}" for lane in ([self.lane] if self.lane is not None else Lane)
        ]
        # Another replica may hold a lock and relay; poll so this one takes over when it dies. All of
        # them or none: a relay of every lane never holds one lane's lock while waiting for another's.
        while not await self._lock(conn, lock_keys):  # noqa: ASYNC110
            await asyncio.sleep(self.poll_seconds)
        columns = "SELECT id, topic, key, type, headers, payload FROM outbox"
        select, where = f"{columns} ORDER BY id LIMIT $1", list[str]()
        if self.lane is not None:  # the index on (lane, id) yields this lane's oldest rows, none of the other's
            select, where = f"{columns} WHERE lane = $2 ORDER BY id LIMIT $1", [self.lane.value]
        channel = f"{self.schema}_outbox"
        await conn.add_listener(channel, self.wake)
        try:
            backoff = 0.1
            last_count = 0.0
            loop = asyncio.get_running_loop()
            while True:
                self._wake.clear()
                rows = await conn.fetch(select, self.batch_size, *where)
                if loop.time() - last_count > 1.0 or not rows:
                    pending = await conn.fetchval("SELECT count(*) FROM outbox")
                    OUTBOX_PENDING.labels(self.service).set(pending)
                    last_count = loop.time()
                if not rows:
                    try:
                        await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
                    except TimeoutError:
                        pass
                    continue
                try:
                    async with asyncio.timeout(self.publish_timeout):
                        await self._publish(rows)
                except (KafkaError, OSError, TimeoutError) as e:
                    log.warning(
                        "outbox.publish_failed",
                        error=str(e) or type(e).__name__,
                        pending=len(rows),
                        retry_in=backoff,
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.backoff_max)
                    await self._recover({r["topic"] for r in rows}, restart=isinstance(e, TimeoutError))
                    continue
                backoff = 0.1
                await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", [r["id"] for r in rows])
                self.delivered += len(rows)
        finally:
            await conn.remove_listener(channel, self.wake)
            for key in lock_keys:
                await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", key)

    @staticmethod
    async def _lock(conn: asyncpg.Connection, keys: Sequence[str]) -> bool:
        """Take every lock in ``keys`` or, if one is held elsewhere, none (those taken are given back)."""
        taken: list[str] = []
        for key in keys:
            if not await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", key):
                for k in taken:
                    await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", k)
                return False
            taken.append(key)
        return True

    async def _recover(self, topics: set[str], *, restart: bool) -> None:
        """After a failed publish: recreate missing topics (a broker may come back empty) and, when the
        producer hung, replace it. Failures here are logged; the next attempt tries again."""
        try:
            if restart:
                await self.bus.restart_producer()
            await self.bus.ensure_topics(topics)
        except Exception as e:
            log.warning("outbox.recover_failed", error=str(e) or type(e).__name__)

    async def _publish(self, rows: Sequence[asyncpg.Record]) -> None:
        """Send ``rows`` as one record batch per partition (in id order within each) and wait until the
        broker acknowledged every batch. Building the batches here instead of calling ``send`` per row
        saves a future and a metadata lookup per event; the key → partition mapping is the producer's
        own default partitioner, so events of one key stay in one partition, in order."""
        await self.bus.ensure_present({r["topic"] for r in rows})
        producer = self.bus.producer
        batches: dict[tuple[str, int], BatchBuilder] = {}
        partitions: dict[str, tuple[list[int], list[int]]] = {}  # topic -> (all, with a leader)
        futures: list[asyncio.Future[Any]] = []
        published: Counter[tuple[str, str]] = Counter()
        for r in rows:
            topic = self.bus.physical(r["topic"])
            if topic not in partitions:
                every = sorted(await producer.partitions_for(topic))
                led = sorted(producer.client.cluster.available_partitions_for_topic(topic) or every)
                partitions[topic] = (every, led)
            key = r["key"].encode() if r["key"] is not None else None
            partition = _PARTITIONER(key, *partitions[topic])  # as send() does: keyless ones avoid leaderless
            headers = json.loads(r["headers"]) if isinstance(r["headers"], str) else r["headers"]
            value = bytes(r["payload"])
            batch = batches.get((topic, partition))
            if batch is None:
                batch = batches[(topic, partition)] = producer.create_batch()
            if batch.append(timestamp=None, key=key, value=value, headers=kafka_headers(headers)) is None:
                # Full: send it (later batches of this partition queue behind it) and start another.
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = batches[(topic, partition)] = producer.create_batch()
                batch.append(timestamp=None, key=key, value=value, headers=kafka_headers(headers))
            published[(r["topic"], r["type"])] += 1
        for (topic, partition), batch in batches.items():
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        results = await asyncio.gather(*futures, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        for (topic, type_), n in published.items():
            EVENTS_PUBLISHED.labels(self.service, topic, type_).inc(n)
