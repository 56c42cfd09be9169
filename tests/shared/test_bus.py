"""The shared consumer against real PostgreSQL and a real broker: retries, dead letters, duplicates."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client import REGISTRY

from shared.bus import (
    EventConsumer,
    HandlerContext,
    HandlerRegistry,
    KafkaBus,
    OutboxRelay,
    make_outbox_row,
    write_outbox,
)
from shared.config import AuthStrategy, ServiceSettings
from shared.db import SHARED_MIGRATIONS, connect_pool, discover
from shared.errors import DcostackError, DependencyUnavailable
from shared.events.envelope import encode_headers, encode_value, kafka_headers
from shared.events.platform import ProbeAnsweredV1, RunProbeV1
from shared.topics import Lane, commands_topic, dlq_topic, events_topic

GROUP = "dcostack.test.main"


class CloudSaysNo(DcostackError):
    """A permanent failure: retrying cannot help."""


@pytest.fixture
async def harness(pg_dsn: str, kafka_bootstrap: str, topic_prefix: str) -> AsyncIterator[Harness]:
    schema = "t_" + uuid.uuid4().hex[:8]
    settings = ServiceSettings(
        database_url=pg_dsn,
        kafka_bootstrap_servers=kafka_bootstrap,
        kafka_topic_prefix=topic_prefix,
        auth_strategy=AuthStrategy.NOAUTH,
    )
    pool = await connect_pool(
        pg_dsn, schema, size=4, wait_seconds=5, migrations=discover(SHARED_MIGRATIONS, Path("/nonexistent"))
    )
    bus = KafkaBus(settings, client_id="test")
    await bus.start()
    await bus.ensure_topics(
        [commands_topic("compute", Lane.BULK), events_topic("compute", Lane.BULK), dlq_topic(GROUP)]
    )
    h = Harness(pool, bus, schema)
    yield h
    for task in h.tasks:
        task.cancel()
    await asyncio.gather(*h.tasks, return_exceptions=True)
    await bus.stop()
    await pool.close()


class Harness:
    def __init__(self, pool: asyncpg.Pool, bus: KafkaBus, schema: str) -> None:
        self.pool = pool
        self.bus = bus
        self.schema = schema
        self.tasks: list[asyncio.Task[None]] = []
        self.calls: dict[int, int] = {}

    def run_consumer(self, handlers: HandlerRegistry) -> EventConsumer:
        consumer = EventConsumer(
            bus=self.bus,
            pool=self.pool,
            service="test",
            group=GROUP,
            topics=[commands_topic("compute", Lane.BULK)],
            handlers=handlers,
            max_attempts=4,
            backoff=0.01,
            backoff_max=0.05,
        )
        self.tasks.append(asyncio.create_task(consumer.run()))
        relay = OutboxRelay(self.pool, self.bus, schema=self.schema, service="test", batch_size=100, poll_seconds=0.2)
        self.tasks.append(asyncio.create_task(relay.run()))
        return consumer

    async def send(self, *seqs: int, probe_id: uuid.UUID, event_id: str | None = None) -> None:
        """Produce commands straight to Kafka, as another system would (the same id repeats if given)."""
        for seq in seqs:
            data = RunProbeV1(probe_id=probe_id, seq=seq, target="compute", requested_at=datetime.now(UTC))
            headers = encode_headers(data, source="/tests", event_id=event_id or str(uuid.uuid4()))
            await self.bus.producer.send_and_wait(
                self.bus.physical(commands_topic("compute", Lane.BULK)),
                value=encode_value(data),
                key=str(probe_id).encode(),
                headers=kafka_headers(headers),
            )

    async def handled(self) -> list[int]:
        rows = await self.pool.fetch("SELECT seq FROM probe_answers ORDER BY id")
        return [r["seq"] for r in rows]

    async def wait_handled(self, n: int) -> list[int]:
        for _ in range(300):
            got = await self.handled()
            if len(got) >= n:
                return got
            await asyncio.sleep(0.05)
        pytest.fail(f"expected {n} handled events, got {await self.handled()}")

    async def wait_for_seq(self, seq: int) -> list[int]:
        """Every handled seq, once ``seq`` is among them."""
        for _ in range(300):
            got = await self.handled()
            if seq in got:
                return got
            await asyncio.sleep(0.05)
        pytest.fail(f"expected seq {seq} to be handled, got {await self.handled()}")

    async def dead_letters(self, n: int) -> list[dict[str, str]]:
        consumer = AIOKafkaConsumer(
            self.bus.physical(dlq_topic(GROUP)),
            bootstrap_servers=self.bus.bootstrap,
            auto_offset_reset="earliest",
            group_id=self.bus.physical("dlq-reader"),
        )
        await consumer.start()
        found: list[dict[str, str]] = []
        try:
            for _ in range(40):
                for records in (await consumer.getmany(timeout_ms=250)).values():
                    found += [{k: v.decode() for k, v in r.headers} for r in records]
                if len(found) >= n:
                    break
        finally:
            await consumer.stop()
        return found


def flaky_handlers(h: Harness) -> HandlerRegistry:
    """seq 7 fails twice with a retriable error, seq 13 always fails permanently, others succeed."""
    handlers = HandlerRegistry()

    @handlers.handles(RunProbeV1)
    async def handle(cmd: RunProbeV1, ctx: HandlerContext) -> None:
        h.calls[cmd.seq] = h.calls.get(cmd.seq, 0) + 1
        await ctx.tx.execute(
            "INSERT INTO probe_answers (probe_id, seq, event_id) VALUES ($1, $2, $3)",
            cmd.probe_id,
            cmd.seq,
            ctx.envelope.id,
        )
        if cmd.seq == 7 and h.calls[7] <= 2:
            raise DependencyUnavailable("nova answered 503")
        if cmd.seq == 13:
            raise CloudSaysNo("flavor m1.huge not found")
        ctx.publish(
            ProbeAnsweredV1(probe_id=cmd.probe_id, seq=cmd.seq, service="test", answered_at=datetime.now(UTC)),
            topic=events_topic("compute", Lane.BULK),
            key=str(cmd.probe_id),
        )

    return handlers


class TestConsumer:
    async def test_retriable_error_is_retried_and_permanent_one_dead_lettered_while_others_go_on(
        self, harness: Harness
    ) -> None:
        harness.run_consumer(flaky_handlers(harness))
        probe_id = uuid.uuid4()
        await harness.send(*range(20), probe_id=probe_id)
        # Same key, so same partition: once the sentinel (seq 20) is handled, every event before it was
        # handled, retried or dead-lettered.
        await harness.send(20, probe_id=probe_id)
        handled = await harness.wait_for_seq(20)
        # The failed attempts' writes were rolled back: each event's effect exists once.
        assert sorted(handled) == [s for s in range(21) if s != 13]
        assert harness.calls[7] == 3
        dead = await harness.dead_letters(1)
        assert len(dead) == 1
        assert dead[0]["dcostack_dlq_reason"] == "handler_error"
        assert "CloudSaysNo: flavor m1.huge not found" in dead[0]["dcostack_dlq_detail"]
        # Follow-up events of the handled ones are in the outbox or already relayed, never for seq 13.
        answered = await harness.pool.fetchval("SELECT count(*) FROM outbox WHERE payload::text LIKE '%\"seq\":13%'")
        assert answered == 0

    async def test_redelivered_event_is_handled_once(self, harness: Harness) -> None:
        harness.run_consumer(flaky_handlers(harness))
        probe_id = uuid.uuid4()
        for _ in range(3):  # the same event id three times, as a producer retry or a replay would send it
            await harness.send(1, probe_id=probe_id, event_id="same-event-id")
        await harness.send(2, probe_id=probe_id)  # the sentinel: same partition, after the copies
        assert await harness.wait_for_seq(2) == [1, 2]
        duplicates = REGISTRY.get_sample_value(
            "dcostack_events_consumed_total",
            {
                "service": "test",
                "topic": harness.bus.physical(commands_topic("compute", Lane.BULK)),
                "type": RunProbeV1.TYPE,
                "outcome": "duplicate",
            },
        )
        assert duplicates == 2

    async def test_retriable_error_that_never_clears_is_dead_lettered_after_max_attempts(
        self, harness: Harness
    ) -> None:
        handlers = HandlerRegistry()

        @handlers.handles(RunProbeV1)
        async def always_busy(cmd: RunProbeV1, ctx: HandlerContext) -> None:
            raise DependencyUnavailable("keystone is down")

        harness.run_consumer(handlers)
        await harness.send(0, probe_id=uuid.uuid4())
        dead = await harness.dead_letters(1)
        assert [d["dcostack_dlq_reason"] for d in dead] == ["retries_exhausted"]
        assert "after 4 attempts" in dead[0]["dcostack_dlq_detail"]


def batch_handlers(h: Harness) -> HandlerRegistry:
    """Writes every answer of a transaction with one statement; seq 13 fails permanently."""
    handlers = HandlerRegistry()

    @handlers.handles_batch(RunProbeV1)
    async def record_all(contexts: list[HandlerContext]) -> None:
        commands: list[RunProbeV1] = []
        for ctx in contexts:
            assert isinstance(ctx.envelope.data, RunProbeV1)
            commands.append(ctx.envelope.data)
            h.calls[ctx.envelope.data.seq] = h.calls.get(ctx.envelope.data.seq, 0) + 1
        await contexts[0].tx.execute(
            "INSERT INTO probe_answers (probe_id, seq, event_id) "
            "SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[])",
            [c.probe_id for c in commands],
            [c.seq for c in commands],
            [ctx.envelope.id for ctx in contexts],
        )
        if any(c.seq == 13 for c in commands):
            raise CloudSaysNo("flavor m1.huge not found")
        for ctx, c in zip(contexts, commands, strict=True):
            ctx.publish(
                ProbeAnsweredV1(probe_id=c.probe_id, seq=c.seq, service="test", answered_at=datetime.now(UTC)),
                topic=events_topic("compute", Lane.BULK),
                key=str(c.probe_id),
            )

    return handlers


class TestBatchHandler:
    async def test_events_of_many_partitions_take_effect_once_and_a_bad_one_is_dead_lettered_alone(
        self, harness: Harness
    ) -> None:
        # Everything is in the topic before the consumer starts, so polls hold several partitions at once.
        probes = [uuid.uuid4() for _ in range(4)]  # four keys: several of the six partitions
        for i, probe_id in enumerate(probes):
            await harness.send(*range(i * 10, i * 10 + 10), probe_id=probe_id)
        for _ in range(3):  # one event delivered three times, as a producer retry would
            await harness.send(50, probe_id=probes[0], event_id="same-event-id")
        for i, probe_id in enumerate(probes):  # a sentinel per key, after that key's events
            await harness.send(100 + i, probe_id=probe_id)
        harness.run_consumer(batch_handlers(harness))
        for i in range(4):
            handled = await harness.wait_for_seq(100 + i)
        # The failed batch's writes were rolled back; each event's effect exists once; 13 has none.
        assert sorted(handled) == sorted([s for s in range(40) if s != 13] + [50, 100, 101, 102, 103])
        dead = await harness.dead_letters(1)
        assert [d["dcostack_dlq_reason"] for d in dead] == ["handler_error"]
        assert "CloudSaysNo: flavor m1.huge not found" in dead[0]["dcostack_dlq_detail"]
        answers = await harness.pool.fetchval("SELECT count(*) FROM outbox WHERE payload::text LIKE '%\"seq\":13%'")
        assert answers == 0


class TestTracing:
    async def test_trace_context_travels_from_the_publisher_to_the_handler(self, harness: Harness) -> None:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider

        if not isinstance(trace.get_tracer_provider(), TracerProvider):
            trace.set_tracer_provider(TracerProvider())
        seen: list[int] = []
        handlers = HandlerRegistry()

        @handlers.handles(RunProbeV1)
        async def record_trace(cmd: RunProbeV1, ctx: HandlerContext) -> None:
            seen.append(trace.get_current_span().get_span_context().trace_id)

        harness.run_consumer(handlers)
        with trace.get_tracer("tests").start_as_current_span("POST /v1/probes") as span:
            row = make_outbox_row(
                RunProbeV1(probe_id=uuid.uuid4(), target="compute", requested_at=datetime.now(UTC)),
                source="/tests",
                topic=commands_topic("compute", Lane.BULK),
            )
            async with harness.pool.acquire() as conn, conn.transaction():
                await write_outbox(conn, [row])
            expected = span.get_span_context().trace_id
        assert "ce_traceparent" in row.headers
        for _ in range(200):
            if seen:
                break
            await asyncio.sleep(0.05)
        assert seen == [expected]


class TestOutboxRelay:
    async def test_rows_written_at_once_are_published_in_order_per_key_in_full_batches(self, harness: Harness) -> None:
        """600 rows in one write: three keys and no key, some large enough that a partition's record batch
        fills and a second one follows it; the relay takes them 250 at a time."""
        topic = events_topic("compute", Lane.BULK)
        rows = []
        for i in range(600):
            row = make_outbox_row(
                RunProbeV1(probe_id=uuid.uuid4(), seq=i, target="compute", requested_at=datetime.now(UTC)),
                source="/tests",
                topic=topic,
                key=None if i % 10 == 0 else f"k{i % 3}",
            )
            if i % 20 == 1:
                row = dataclasses.replace(row, payload=row.payload + b" " * 100_000)
            rows.append(row)
        async with harness.pool.acquire() as conn, conn.transaction():
            await write_outbox(conn, rows)
        assert await harness.pool.fetchval("SELECT count(*) FROM outbox") == 600
        relay = OutboxRelay(
            harness.pool, harness.bus, schema=harness.schema, service="test", batch_size=250, poll_seconds=0.2
        )
        harness.tasks.append(asyncio.create_task(relay.run()))

        consumer = AIOKafkaConsumer(
            harness.bus.physical(topic),
            bootstrap_servers=harness.bus.bootstrap,
            auto_offset_reset="earliest",
            group_id=harness.bus.physical("relay-reader"),
        )
        await consumer.start()
        got: list[tuple[str | None, bytes, dict[str, str]]] = []
        try:
            for _ in range(120):
                for records in (await consumer.getmany(timeout_ms=250)).values():
                    got += [
                        (r.key.decode() if r.key else None, r.value, {k: v.decode() for k, v in r.headers})
                        for r in records
                    ]
                if len(got) >= 600:
                    break
        finally:
            await consumer.stop()

        position = {row.event_id: i for i, row in enumerate(rows)}
        assert sorted(position[h["ce_id"]] for _, _, h in got) == list(range(600))  # each row exactly once
        for wanted in ("k0", "k1", "k2"):
            seen = [position[h["ce_id"]] for k, _, h in got if k == wanted]
            assert seen == sorted(seen), f"events of key {wanted} arrived out of order"
        for key, value, headers in got:
            row = rows[position[headers["ce_id"]]]
            assert (key, value, headers) == (row.key, row.payload, row.headers)
        for _ in range(100):  # the relay deletes what the broker acknowledged
            if await harness.pool.fetchval("SELECT count(*) FROM outbox") == 0:
                break
            await asyncio.sleep(0.05)
        assert await harness.pool.fetchval("SELECT count(*) FROM outbox") == 0
        assert relay.delivered == 600
