"""Bus throughput and latency: outbox → broker → consumer → inbox + handler write, with exactly-once
effect, next to raw aiokafka produce → consume on the same broker in the same run.

    uv run python -m bench.bus [--events 50000] [--rate 2000] [--seconds 10] [--handler both] [--repeat 1]

Uses a Tansu broker of its own and the local PostgreSQL, else an embedded one (or DCOSTACK_TEST_KAFKA /
DCOSTACK_TEST_DATABASE_URL).
The relay runs in this process and the consumer in a second one, as two services would.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import multiprocessing as mp
import os
import shutil
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from services.cli.infra import (
    LOCAL_PG,
    TansuBroker,
    can_connect,
    drop_database,
    ensure_database,
    start_embedded_postgres,
)
from shared.bus import EventConsumer, HandlerContext, HandlerRegistry, KafkaBus, OutboxRelay
from shared.bus.outbox import make_outbox_row, write_outbox
from shared.config import AuthStrategy, ServiceSettings
from shared.db import SHARED_MIGRATIONS, connect_pool, discover
from shared.events.platform import RunProbeV1
from shared.topics import Lane, commands_topic

TOPIC = commands_topic("compute", Lane.BULK)  # the bench sends probe commands, a bulk-lane type
GROUP = "dcostack.bench.main"
NO_MIGRATIONS = Path("/nonexistent")


def settings(dsn: str, bootstrap: str, prefix: str) -> ServiceSettings:
    return ServiceSettings(
        database_url=dsn,
        kafka_bootstrap_servers=bootstrap,
        kafka_topic_prefix=prefix,
        kafka_partitions=6,
        auth_strategy=AuthStrategy.NOAUTH,  # the bench serves no HTTP; without it settings want Keystone
    )


async def raw_kafka(bootstrap: str, n: int, prefix: str) -> float:
    """Events/s for plain aiokafka: n 200-byte messages produced and consumed by a group that has
    already joined (the join is not timed, as it is not for the bus below)."""
    topic = f"{prefix}raw"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
    await producer.start()
    await producer.send_and_wait(topic, b"warm-up")
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=f"{prefix}raw", auto_offset_reset="earliest"
    )
    await consumer.start()
    got = -1  # the warm-up message
    while not consumer.assignment() or got < 0:
        for records in (await consumer.getmany(timeout_ms=200)).values():
            got += len(records)
    started = time.perf_counter()

    async def produce() -> None:
        futures = [await producer.send(topic, b"x" * 200, key=str(i % 64).encode()) for i in range(n)]
        await asyncio.gather(*futures)

    producing = asyncio.create_task(produce())
    got = 0
    while got < n:
        for records in (await consumer.getmany(timeout_ms=1000, max_records=5000)).values():
            got += len(records)
    elapsed = time.perf_counter() - started
    await producing
    await consumer.stop()
    await producer.stop()
    return n / elapsed


async def wait_count(pool: asyncpg.Pool, target: int, interval: float) -> None:
    """Wait until ``target`` answers exist. Polls the highest id (an index lookup) first and counts only
    then: a count(*) every 20 ms over a table growing to 50,000 rows is PostgreSQL work that the bus under
    test would compete with for the same cores."""
    while (await pool.fetchval("SELECT coalesce(max(id), 0) FROM probe_answers")) < target:  # noqa: ASYNC110
        await asyncio.sleep(interval)
    while await count(pool) < target:  # noqa: ASYNC110 - ids of concurrent transactions may commit out of order
        await asyncio.sleep(interval)


INSERT_ANSWER = "INSERT INTO probe_answers (probe_id, seq, event_id, answered_at) VALUES ($1, $2, $3, $4)"
INSERT_ANSWERS = (
    "INSERT INTO probe_answers (probe_id, seq, event_id, answered_at) "
    "SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[], $4::timestamptz[])"
)


def handlers(batch: bool) -> HandlerRegistry:
    """The handler write of the benchmark: one row per event, written per event or, for the batch
    handler, every event of the transaction with one statement."""
    registry = HandlerRegistry()
    if batch:

        @registry.handles_batch(RunProbeV1)
        async def handle_many(contexts: list[HandlerContext]) -> None:
            commands: list[RunProbeV1] = []
            for ctx in contexts:
                assert isinstance(ctx.envelope.data, RunProbeV1)
                commands.append(ctx.envelope.data)
            await contexts[0].tx.execute(
                INSERT_ANSWERS,
                [cmd.probe_id for cmd in commands],
                [cmd.seq for cmd in commands],
                [ctx.envelope.id for ctx in contexts],
                [cmd.requested_at for cmd in commands],
            )

    else:

        @registry.handles(RunProbeV1)
        async def handle(cmd: RunProbeV1, ctx: HandlerContext) -> None:
            await ctx.tx.execute(INSERT_ANSWER, cmd.probe_id, cmd.seq, ctx.envelope.id, cmd.requested_at)

    return registry


def consumer_process(dsn: str, bootstrap: str, prefix: str, schema: str, batch: bool, ready: mp.Event) -> None:  # type: ignore[valid-type]
    async def main() -> None:
        s = settings(dsn, bootstrap, prefix)
        pool = await connect_pool(dsn, schema, size=s.database_pool_size, wait_seconds=10, migrations=None)
        bus = KafkaBus(s, client_id="bench-consumer")
        await bus.start()
        consumer = EventConsumer(
            bus=bus, pool=pool, service="bench", group=GROUP, topics=[TOPIC], handlers=handlers(batch), batch_size=1000
        )
        task = asyncio.create_task(consumer.run())
        await consumer.assigned.wait()
        ready.set()  # type: ignore[attr-defined]
        await task

    asyncio.run(main())


def cpu_seconds(pids: int | list[int] | None) -> float:
    """User + system CPU time of processes (Linux /proc, same machine; NaN where unreadable)."""
    total = 0.0
    for pid in pids if isinstance(pids, list) else [pids]:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def fill_outbox(pool: asyncpg.Pool, n: int, probe_id: uuid.UUID, keys: int = 64) -> None:
    for start in range(0, n, 2000):
        rows = [
            make_outbox_row(
                RunProbeV1(probe_id=probe_id, seq=i, target="compute", requested_at=datetime.now(UTC)),
                source="/bench",
                topic=TOPIC,
                key=str(i % keys),
            )
            for i in range(start, min(n, start + 2000))
        ]
        async with pool.acquire() as conn, conn.transaction():
            await write_outbox(conn, rows)


async def count(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM probe_answers"))


async def end_to_end(
    dsn: str, bootstrap: str, n: int, rate: int, seconds: float, batch: bool, broker_pid: int | None
) -> dict[str, float]:
    prefix = f"b{uuid.uuid4().hex[:6]}."
    schema = "bench_" + uuid.uuid4().hex[:6]
    pool = await connect_pool(
        dsn, schema, size=4, wait_seconds=10, migrations=discover(SHARED_MIGRATIONS, NO_MIGRATIONS)
    )
    s = settings(dsn, bootstrap, prefix)
    bus = KafkaBus(s, client_id="bench-relay")
    await bus.start()
    await bus.ensure_topics([TOPIC])
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=consumer_process, args=(dsn, bootstrap, prefix, schema, batch, ready), daemon=True)
    proc.start()
    # Warm up: the consumer joins its group and handles a first event.
    relay = OutboxRelay(pool, bus, schema=schema, service="bench", batch_size=2000, poll_seconds=0.05)
    relay_task = asyncio.create_task(relay.run())
    await fill_outbox(pool, 1, uuid.uuid4())
    await asyncio.get_running_loop().run_in_executor(None, ready.wait, 60)
    await wait_count(pool, 1, 0.05)
    relay_task.cancel()
    await asyncio.gather(relay_task, return_exceptions=True)
    # Throughput: n events waiting in the outbox, then relay + consume until all handled.
    await fill_outbox(pool, n, uuid.uuid4())
    pg_pids = [
        r["pid"] for r in await pool.fetch("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
    ]
    pids = {"relay": os.getpid(), "consumer": proc.pid, "broker": broker_pid, "PostgreSQL backends": pg_pids}
    cpu = {name: cpu_seconds(p) for name, p in pids.items()}
    started = time.perf_counter()
    relay_task = asyncio.create_task(relay.run())
    await wait_count(pool, n + 1, 0.02)
    throughput = n / (time.perf_counter() - started)
    cpu = {name: (cpu_seconds(p) - cpu[name]) / n * 1e6 for name, p in pids.items()}
    # Latency: a steady rate well under the throughput; request time → handler's commit.
    probe_id = uuid.uuid4()
    ticks = int(seconds * 20)
    per_tick = max(1, rate // 20)
    for _ in range(ticks):
        tick = time.perf_counter()
        await fill_outbox(pool, per_tick, probe_id)
        await asyncio.sleep(max(0.0, 0.05 - (time.perf_counter() - tick)))
    total = n + 1 + ticks * per_tick
    await wait_count(pool, total, 0.05)
    rows = await pool.fetch(
        "SELECT extract(epoch FROM (handled_at - answered_at)) * 1000 AS ms FROM probe_answers p "
        "JOIN inbox i ON i.event_id = p.event_id WHERE p.probe_id = $1",
        probe_id,
    )
    latencies = sorted(float(r["ms"]) for r in rows)
    dup = await pool.fetchval("SELECT count(*) - count(DISTINCT event_id) FROM probe_answers")
    relay_task.cancel()
    await asyncio.gather(relay_task, return_exceptions=True)
    proc.terminate()
    proc.join(10)
    await bus.stop()
    await pool.execute(f"DROP SCHEMA {schema} CASCADE")
    await pool.close()
    return {
        "throughput": throughput,
        "p50": statistics.median(latencies),
        "p99": latencies[int(len(latencies) * 0.99) - 1],
        "samples": len(latencies),
        "duplicates": float(dup),
        **{f"cpu {name}": us for name, us in cpu.items()},
    }


async def admin_dsn() -> str:
    """DCOSTACK_TEST_DATABASE_URL, else the server on 127.0.0.1:5432, else an embedded one (a fresh clone
    needs no PostgreSQL of its own, as for the tests)."""
    given = os.environ.get("DCOSTACK_TEST_DATABASE_URL")
    if given:
        return given
    if await can_connect(LOCAL_PG):
        return LOCAL_PG
    scratch = tempfile.mkdtemp(prefix="dcostack-bench-")
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)  # registered first, so runs after the server stops
    return start_embedded_postgres(Path(scratch) / "postgres")


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


async def amain(args: argparse.Namespace) -> None:
    broker = None
    bootstrap = os.environ.get("DCOSTACK_TEST_KAFKA")
    if not bootstrap:
        broker = TansuBroker().start()
        bootstrap = broker.bootstrap
    broker_pid = broker.proc.pid if broker and broker.proc else None
    admin = await admin_dsn()
    db = f"dcostack_bench_{uuid.uuid4().hex[:6]}"
    dsn = await ensure_database(admin, db)
    kinds = {"event": [False], "batch": [True], "both": [False, True]}[args.handler]
    out = [f"events: {args.events}, cores: {os.cpu_count()}, {load()} at start"]
    try:
        for _ in range(args.repeat):
            raw = await raw_kafka(bootstrap, args.events, f"r{uuid.uuid4().hex[:6]}.")
            out.append(f"raw aiokafka produce→consume (same broker, same run): {raw:9.0f} events/s ({load()})")
            for batch in kinds:
                e2e = await end_to_end(dsn, bootstrap, args.events, args.rate, args.seconds, batch, broker_pid)
                name = "batch handler (one INSERT per transaction)" if batch else "per-event handler"
                out += [
                    f"outbox→broker→consumer→inbox+handler, {name}: {e2e['throughput']:9.0f} events/s, "
                    f"{e2e['throughput'] / raw:.2f}× raw, duplicate effects {e2e['duplicates']:.0f} ({load()})",
                    "  CPU per event: "
                    + ", ".join(f"{k[4:]} {v:.0f} µs" for k, v in e2e.items() if k.startswith("cpu ")),
                    f"  latency at {args.rate} events/s for {args.seconds:.0f}s (request → handler commit): "
                    f"p50 {e2e['p50']:.1f} ms, p99 {e2e['p99']:.1f} ms over {e2e['samples']:.0f} events",
                ]
    finally:
        await drop_database(admin, db)
        if broker:
            broker.stop()
    print("\n".join(out))  # noqa: T201


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50000)
    parser.add_argument("--rate", type=int, default=2000, help="events/s for the latency run")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--handler", choices=["both", "event", "batch"], default="both")
    parser.add_argument("--repeat", type=int, default=1, help="measure this many times (the machine may be shared)")
    asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    main()
