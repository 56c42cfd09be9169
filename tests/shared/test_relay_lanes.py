"""One outbox relay per lane: a step's progress written after a probe's backlog is published while the
probe's rows still wait. Real PostgreSQL and the Tansu broker; the service's own Runtime starts the relays."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.bus import HandlerRegistry, KafkaBus, OutboxRelay, make_outbox_row, write_outbox
from shared.config import AuthStrategy, ServiceSettings
from shared.db import SHARED_MIGRATIONS, connect_pool, discover, migrate
from shared.events.platform import RunProbeV1
from shared.events.steps import StepProgressedV1
from shared.runtime import Runtime, ServiceSpec
from shared.topics import LOGS, Lane, commands_topic, dlq_topic, events_topic

BULK_ROWS = 50_000
CONTROL = events_topic("compute")
BULK = commands_topic("compute", Lane.BULK)
NO_MIGRATIONS = Path("/nonexistent")


def probe(seq: int) -> RunProbeV1:
    return RunProbeV1(probe_id=uuid.uuid4(), seq=seq, target="compute", requested_at=datetime.now(UTC))


def progress() -> StepProgressedV1:
    return StepProgressedV1(
        dispatch_id=uuid.uuid4(),
        run_id=uuid.uuid4(),
        step_key="server/web-0",
        service="compute",
        state="succeeded",
        at=datetime.now(UTC),
    )


class TestRelayPerLane:
    async def test_control_row_written_after_a_bulk_backlog_is_published_before_the_backlog_drains(
        self, pg_dsn: str, kafka_bootstrap: str, topic_prefix: str
    ) -> None:
        settings = ServiceSettings(
            database_url=pg_dsn,
            database_schema="relay_" + uuid.uuid4().hex[:8],
            kafka_bootstrap_servers=kafka_bootstrap,
            kafka_topic_prefix=topic_prefix,
            auth_strategy=AuthStrategy.NOAUTH,
        )
        schema = settings.db_schema
        pool = await connect_pool(
            pg_dsn, schema, size=2, wait_seconds=5, migrations=discover(SHARED_MIGRATIONS, NO_MIGRATIONS)
        )
        bus = KafkaBus(settings, client_id="relay-lanes-test")
        await bus.start()
        runtime: Runtime | None = None
        reader = AIOKafkaConsumer(bootstrap_servers=bus.bootstrap, enable_auto_commit=False)
        try:
            # The backlog first (one probe of 50,000), then the step's progress, as the planner would.
            bulk = [make_outbox_row(probe(i), source="/tests", topic=BULK, key=f"k{i % 16}") for i in range(BULK_ROWS)]
            control = make_outbox_row(progress(), source="/tests", topic=CONTROL, key="run-1")
            async with pool.acquire() as conn, conn.transaction():
                await write_outbox(conn, bulk)
            async with pool.acquire() as conn, conn.transaction():
                await write_outbox(conn, [control])
            lanes = await pool.fetch("SELECT lane, count(*) AS n, max(id) AS last FROM outbox GROUP BY lane")
            by_lane = {r["lane"]: r for r in lanes}
            assert {lane: r["n"] for lane, r in by_lane.items()} == {"bulk": BULK_ROWS, "control": 1}
            assert by_lane["control"]["last"] > by_lane["bulk"]["last"]  # written after every bulk row

            # Read the control topic from its first offset, without a group to join.
            await bus.ensure_topics([CONTROL, BULK])
            await reader.start()
            partitions = [
                TopicPartition(bus.physical(CONTROL), p)
                for p in reader.partitions_for_topic(bus.physical(CONTROL)) or ()
            ]
            assert partitions, "the control topic has no partitions"
            reader.assign(partitions)
            await reader.seek_to_beginning(*partitions)

            spec = ServiceSpec(
                name="relaytest",
                settings_cls=ServiceSettings,
                migrations_dir=NO_MIGRATIONS,
                handlers=HandlerRegistry(),
                consumes={},
                owns_topics=[CONTROL, BULK],
                create_app=lambda _: None,  # type: ignore[arg-type,return-value]
            )
            runtime = Runtime(spec, settings)
            await runtime.start()
            assert sorted(runtime.relays) == sorted(Lane)

            seen: list[str] = []
            async with asyncio.timeout(60):
                while control.event_id not in seen:
                    for records in (await reader.getmany(timeout_ms=200)).values():
                        seen += [dict(r.headers)["ce_id"].decode() for r in records]
            # Order, not time: when the control event is on the broker, the probe's rows still wait.
            unpublished = await pool.fetchval("SELECT count(*) FROM outbox WHERE lane = 'bulk'")
            assert unpublished > 0, "every bulk row was published before the control row: one relay for both lanes?"
            assert seen == [control.event_id]

            # The bulk relay goes on and drains its lane; both delete what the broker acknowledged.
            async with asyncio.timeout(300):
                while await pool.fetchval("SELECT count(*) FROM outbox") > 0:  # noqa: ASYNC110
                    await asyncio.sleep(0.2)
            assert (runtime.relays[Lane.CONTROL].delivered, runtime.relays[Lane.BULK].delivered) == (1, BULK_ROWS)
        finally:
            if runtime is not None:
                await runtime.stop()
            await reader.stop()
            await bus.stop()
            await pool.close()


class TestReplicasOfEachLane:
    async def test_one_relay_per_schema_and_lane_publishes_each_row_once_in_order_per_key(
        self, pg_dsn: str, kafka_bootstrap: str, topic_prefix: str
    ) -> None:
        """Two replicas' relays for each lane: one of each lane holds its lane's lock and relays, the
        other waits. Rows of both lanes interleaved, four keys on each topic."""
        settings = ServiceSettings(
            database_url=pg_dsn,
            kafka_bootstrap_servers=kafka_bootstrap,
            kafka_topic_prefix=topic_prefix,
            auth_strategy=AuthStrategy.NOAUTH,
        )
        schema = "replicas_" + uuid.uuid4().hex[:8]
        pool = await connect_pool(
            pg_dsn, schema, size=6, wait_seconds=5, migrations=discover(SHARED_MIGRATIONS, NO_MIGRATIONS)
        )
        bus = KafkaBus(settings, client_id="relay-replicas-test")
        await bus.start()
        tasks: list[asyncio.Task[None]] = []
        try:
            await bus.ensure_topics([CONTROL, BULK])
            rows = [
                make_outbox_row(probe(i), source="/tests", topic=BULK, key=f"k{i % 4}")
                if i % 3
                else make_outbox_row(progress(), source="/tests", topic=CONTROL, key=f"k{i % 4}")
                for i in range(900)
            ]
            async with pool.acquire() as conn, conn.transaction():
                await write_outbox(conn, rows)
            relays = [
                OutboxRelay(pool, bus, schema=schema, service="test", batch_size=100, poll_seconds=0.1, lane=lane)
                for lane in (*Lane, *Lane)
            ]
            tasks += [asyncio.create_task(r.run()) for r in relays]

            got = await read_all(bus, [CONTROL, BULK], len(rows))
            position = {row.event_id: i for i, row in enumerate(rows)}
            assert sorted(position[event_id] for _, _, event_id in got) == list(range(len(rows)))  # each once
            for topic in (CONTROL, BULK):
                for key in ("k0", "k1", "k2", "k3"):
                    seen = [position[e] for t, k, e in got if t == bus.physical(topic) and k == key]
                    assert seen == sorted(seen), f"events of key {key} on {topic} arrived out of order"
            async with asyncio.timeout(60):
                while await pool.fetchval("SELECT count(*) FROM outbox") > 0:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            # One relay of each lane did all of its lane's work; its replica waited for the lock.
            delivered = sorted((r.lane, r.delivered) for r in relays if r.delivered)
            assert delivered == [(Lane.BULK, 600), (Lane.CONTROL, 300)]
            held = await pool.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid::int = ANY("
                "SELECT hashtext(k) FROM unnest($1::text[]) AS k)",
                [f"dcostack.outbox.{schema}.{lane}" for lane in Lane],
            )
            assert held == 2
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await bus.stop()
            await pool.close()


async def read_all(bus: KafkaBus, topics: list[str], n: int) -> list[tuple[str, str | None, str]]:
    """(topic, key, event id) of the first ``n`` records of ``topics``, read from their first offsets."""
    reader = AIOKafkaConsumer(bootstrap_servers=bus.bootstrap, enable_auto_commit=False)
    await reader.start()
    got: list[tuple[str, str | None, str]] = []
    try:
        partitions = [
            TopicPartition(bus.physical(t), p)
            for t in topics
            for p in reader.partitions_for_topic(bus.physical(t)) or ()
        ]
        reader.assign(partitions)
        await reader.seek_to_beginning(*partitions)
        async with asyncio.timeout(120):
            while len(got) < n:
                for records in (await reader.getmany(timeout_ms=250)).values():
                    got += [
                        (r.topic, r.key.decode() if r.key else None, dict(r.headers)["ce_id"].decode()) for r in records
                    ]
    finally:
        await reader.stop()
    return got


class TestOutboxLaneMigration:
    async def test_rows_queued_before_it_or_written_without_a_lane_get_the_lane_of_their_topic_or_type(
        self, pg_dsn: str
    ) -> None:
        schema = "lane_" + uuid.uuid4().hex[:8]
        every = discover(SHARED_MIGRATIONS, NO_MIGRATIONS)
        before = [m for m in every if m.version < "shared/0006"]
        assert len(before) < len(every), "the lane migration is missing"
        pool = await connect_pool(pg_dsn, schema, size=1, wait_seconds=5, migrations=before)
        try:
            queued = {  # topic, type -> the lane the row must get
                (BULK, RunProbeV1.TYPE): "bulk",
                (LOGS, "io.dcostack.example.log.v1"): "bulk",
                (CONTROL, StepProgressedV1.TYPE): "control",
                (commands_topic("compute"), "io.dcostack.planner.step.apply.v2"): "control",
                (dlq_topic("dcostack.compute.bulk"), RunProbeV1.TYPE): "bulk",
                (dlq_topic("dcostack.compute.main"), StepProgressedV1.TYPE): "control",
            }
            async with pool.acquire() as conn:
                for i, (topic, type_) in enumerate(queued):
                    await conn.execute(
                        "INSERT INTO outbox (event_id, topic, key, type, headers, payload) "
                        "VALUES ($1, $2, NULL, $3, '{}', '')",
                        f"e{i}",
                        topic,
                        type_,
                    )
                assert await migrate(conn, schema, every) == [m.version for m in every if m not in before]
                rows = await conn.fetch(f"SELECT topic, type, lane FROM {schema}.outbox ORDER BY id")
                assert {(r["topic"], r["type"]): r["lane"] for r in rows} == queued
                # A writer of the previous release, still running during an upgrade, names no lane:
                # its rows get their topic's lane, as write_outbox would have given them.
                for event_id, topic, type_ in (
                    ("old-bulk", BULK, RunProbeV1.TYPE),
                    ("old-control", CONTROL, StepProgressedV1.TYPE),
                ):
                    await conn.execute(
                        f"INSERT INTO {schema}.outbox (event_id, topic, type, headers, payload) "
                        "VALUES ($1, $2, $3, '{}', '')",
                        event_id,
                        topic,
                        type_,
                    )
                lanes = await conn.fetch(f"SELECT event_id, lane FROM {schema}.outbox WHERE event_id LIKE 'old-%'")
                assert {r["event_id"]: r["lane"] for r in lanes} == {"old-bulk": "bulk", "old-control": "control"}
                # A row may be on no third lane.
                with pytest.raises(asyncpg.CheckViolationError, match="lane"):
                    await conn.execute(
                        f"INSERT INTO {schema}.outbox (event_id, topic, type, headers, payload, lane) "
                        "VALUES ('odd', $1, $2, '{}', '', 'express')",
                        CONTROL,
                        StepProgressedV1.TYPE,
                    )
        finally:
            await pool.close()
