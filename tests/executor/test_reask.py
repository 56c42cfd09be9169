"""A step command asked again (same dispatch id) against real PostgreSQL and a real broker: the executor
answers with the operation's latest progress and never runs the operation twice.

The adapter here is a Protocol implementation of the test's own (no cloud is involved in accepting and
answering a command): it counts its calls and holds the step until the test lets it finish."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer

from shared.bus import EventConsumer, HandlerRegistry, KafkaBus, OutboxRelay
from shared.config import AuthStrategy, ServiceSettings
from shared.db import SHARED_MIGRATIONS, connect_pool, discover
from shared.events.envelope import decode, encode_headers, encode_value, kafka_headers
from shared.events.steps import ApplyStepV1, DestroyStepV1, StepProgressedV1
from shared.executor.accept import register_step_handlers
from shared.executor.errors import CloudError
from shared.executor.marks import StepWork
from shared.executor.models import Progress
from shared.executor.workers import OperationWorkers
from shared.topics import commands_topic, events_topic

SERVICE = "compute"
DEADLINE_SECONDS = 60.0


class HeldAdapter:
    """Counts its calls; a step runs until ``release`` is set; the ``fail`` kind fails for good."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.started = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()

    def apply(self, work: StepWork, progress: Progress) -> dict[str, Any]:
        with self._lock:
            self.calls[work.owner.step_key] = self.calls.get(work.owner.step_key, 0) + 1
        if work.kind == "fail":
            raise CloudError("flavor 'm1.huge' not found", hint="use one of the available flavors", http_status=404)
        progress("server BUILD")
        self.started.set()
        if not self.release.wait(DEADLINE_SECONDS):
            raise AssertionError("the test never released the step")
        return {"id": "srv-1", "status": "ACTIVE"}

    def destroy(self, work: StepWork, progress: Progress) -> bool:
        with self._lock:
            self.calls[work.owner.step_key] = self.calls.get(work.owner.step_key, 0) + 1
        return False


class Executor:
    def __init__(self, pool: asyncpg.Pool, bus: KafkaBus, schema: str) -> None:
        self.pool = pool
        self.bus = bus
        self.schema = schema
        self.adapter = HeldAdapter()
        self.tasks: list[asyncio.Task[None]] = []
        self.seen: list[StepProgressedV1] = []
        self.reader: AIOKafkaConsumer | None = None

    def start(self, *, workers: bool = True) -> None:
        handlers = HandlerRegistry()
        register_step_handlers(handlers, SERVICE)
        consumer = EventConsumer(
            bus=self.bus,
            pool=self.pool,
            service=SERVICE,
            group=self.bus.physical("executor-test"),
            topics=[commands_topic(SERVICE)],
            handlers=handlers,
            max_attempts=3,
            backoff=0.01,
            backoff_max=0.05,
        )
        relay = OutboxRelay(self.pool, self.bus, schema=self.schema, service=SERVICE, batch_size=100, poll_seconds=0.1)
        self.tasks += [asyncio.create_task(consumer.run()), asyncio.create_task(relay.run())]
        if workers:
            self.start_workers()

    def start_workers(self) -> None:
        ops = OperationWorkers(self.pool, service=SERVICE, schema=self.schema, executor=lambda _trust: self.adapter)
        self.tasks.append(asyncio.create_task(ops.run()))

    async def send(self, cmd: ApplyStepV1 | DestroyStepV1) -> None:
        """Produce the command as the planner does; each send is a new event (a new envelope id)."""
        headers = encode_headers(cmd, source="/dcostack/planner", event_id=str(uuid.uuid4()))
        await self.bus.producer.send_and_wait(
            self.bus.physical(commands_topic(SERVICE)),
            value=encode_value(cmd),
            key=str(cmd.run_id).encode(),
            headers=kafka_headers(headers),
        )

    async def progress(self, dispatch_id: uuid.UUID, count: int, what: str) -> list[StepProgressedV1]:
        """The first ``count`` StepProgressedV1 of ``dispatch_id`` on the events topic, in order."""
        if self.reader is None:
            self.reader = AIOKafkaConsumer(
                self.bus.physical(events_topic(SERVICE)),
                bootstrap_servers=self.bus.bootstrap,
                auto_offset_reset="earliest",
                group_id=self.bus.physical("progress-reader"),
            )
            await self.reader.start()
        deadline = time.monotonic() + DEADLINE_SECONDS
        while True:
            mine = [e for e in self.seen if e.dispatch_id == dispatch_id]
            if len(mine) >= count:
                return mine[:count]
            if time.monotonic() > deadline:
                pytest.fail(f"waited {DEADLINE_SECONDS:.0f}s for {what}; saw {[(e.state, e.message) for e in mine]}")
            for records in (await self.reader.getmany(timeout_ms=200)).values():
                for record in records:
                    data = decode(record.headers, record.value).data
                    if isinstance(data, StepProgressedV1):
                        self.seen.append(data)

    async def row(self, dispatch_id: uuid.UUID) -> asyncpg.Record:
        row: asyncpg.Record = await self.pool.fetchrow("SELECT * FROM operations WHERE dispatch_id = $1", dispatch_id)
        return row


@pytest.fixture
async def executor(pg_dsn: str, kafka_bootstrap: str, topic_prefix: str) -> AsyncIterator[Executor]:
    schema = "x_" + uuid.uuid4().hex[:8]
    settings = ServiceSettings(
        database_url=pg_dsn,
        kafka_bootstrap_servers=kafka_bootstrap,
        kafka_topic_prefix=topic_prefix,
        auth_strategy=AuthStrategy.NOAUTH,
    )
    pool = await connect_pool(
        pg_dsn, schema, size=6, wait_seconds=5, migrations=discover(SHARED_MIGRATIONS, Path("/nonexistent"))
    )
    bus = KafkaBus(settings, client_id="executor-test")
    await bus.start()
    await bus.ensure_topics([commands_topic(SERVICE), events_topic(SERVICE)])
    ex = Executor(pool, bus, schema)
    yield ex
    ex.adapter.release.set()
    for task in ex.tasks:
        task.cancel()
    await asyncio.gather(*ex.tasks, return_exceptions=True)
    if ex.reader is not None:
        await ex.reader.stop()
    await bus.stop()
    await pool.close()


def apply_cmd(kind: str = "server", step_key: str = "server/web-0") -> ApplyStepV1:
    return ApplyStepV1(
        dispatch_id=uuid.uuid4(),
        run_id=uuid.uuid4(),
        plan_id=uuid.uuid4(),
        step_key=step_key,
        kind=kind,
        path="$.instance_groups[0]",
        params={"flavor": "m1.small"},
        timeout_seconds=DEADLINE_SECONDS,
    )


class TestAskedAgain:
    async def test_a_running_step_answers_running_then_its_final_event_and_runs_once(self, executor: Executor) -> None:
        executor.start()
        cmd = apply_cmd()
        await executor.send(cmd)
        first = await executor.progress(cmd.dispatch_id, 1, "the step's first progress")
        assert (first[0].state, first[0].message) == ("running", "server BUILD")

        await executor.send(cmd)  # the planner heard nothing: asks again while the step runs
        again = await executor.progress(cmd.dispatch_id, 2, "the answer to the second ask")
        assert again[1].state == "running"
        assert again[1].message == "server BUILD"
        assert again[1].run_id == cmd.run_id

        executor.adapter.release.set()
        done = await executor.progress(cmd.dispatch_id, 3, "the step's final event")
        assert done[2].state == "succeeded"
        assert done[2].outputs == {"id": "srv-1", "status": "ACTIVE"}

        await executor.send(cmd)  # asked once more after it finished (its final event was lost)
        answered = await executor.progress(cmd.dispatch_id, 4, "the final event, sent again")
        assert (answered[3].state, answered[3].outputs, answered[3].message) == (
            "succeeded",
            {"id": "srv-1", "status": "ACTIVE"},
            "apply done",
        )
        assert executor.adapter.calls == {"server/web-0": 1}
        row = await executor.row(cmd.dispatch_id)
        assert (row["state"], row["outcome"], row["tries"]) == ("done", "succeeded", 1)

    async def test_a_failed_step_answers_the_same_error_and_is_not_tried_again(self, executor: Executor) -> None:
        executor.start()
        cmd = apply_cmd(kind="fail", step_key="server/huge-0")
        await executor.send(cmd)
        failed = await executor.progress(cmd.dispatch_id, 1, "the step's failure")
        assert failed[0].state == "failed"

        await executor.send(cmd)
        answered = await executor.progress(cmd.dispatch_id, 2, "the failure, sent again")
        assert answered[1].state == "failed"
        assert answered[1].error == failed[0].error
        assert answered[1].error is not None
        assert answered[1].error["hint"] == "use one of the available flavors"
        assert answered[1].error["http_status"] == 404
        assert executor.adapter.calls == {"server/huge-0": 1}

    async def test_a_step_no_worker_took_yet_answers_that_it_waits_and_is_then_run_once(
        self, executor: Executor
    ) -> None:
        executor.start(workers=False)
        cmd = apply_cmd()
        await executor.send(cmd)
        await executor.send(cmd)
        waiting = await executor.progress(cmd.dispatch_id, 1, "the answer to the second ask")
        assert (waiting[0].state, waiting[0].message) == ("running", "accepted; waiting for a worker")
        row = await executor.row(cmd.dispatch_id)
        assert (row["state"], row["tries"]) == ("pending", 0)

        executor.adapter.release.set()
        executor.start_workers()
        events = await executor.progress(cmd.dispatch_id, 3, "the step's own progress and final event")
        assert [e.state for e in events] == ["running", "running", "succeeded"]
        assert executor.adapter.calls == {"server/web-0": 1}

    async def test_a_finished_destroy_answers_its_outcome_again_and_is_not_run_again(self, executor: Executor) -> None:
        executor.start()
        applied = apply_cmd(step_key="server/gone-0")
        cmd = DestroyStepV1(**applied.model_dump(exclude={"dispatch_id"}), dispatch_id=uuid.uuid4())
        await executor.send(cmd)
        done = await executor.progress(cmd.dispatch_id, 1, "the destroy's final event")
        assert (done[0].state, done[0].outputs) == ("succeeded", {"deleted": False})

        await executor.send(cmd)
        again = await executor.progress(cmd.dispatch_id, 2, "the destroy's final event, sent again")
        assert (again[1].state, again[1].outputs, again[1].message) == ("succeeded", {"deleted": False}, "destroy done")
        assert executor.adapter.calls == {"server/gone-0": 1}
