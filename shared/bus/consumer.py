"""The consumer loop: decode → inbox + handler + outbox in one transaction → commit → commit offset.

Guarantees:
- an event's effect (the handler's writes and the events it publishes) commits at most once, because
  the inbox row ``(consumer_group, event_id)`` is inserted in the same transaction;
- nothing is lost, because the offset is committed only after that transaction;
- a message that cannot be decoded, has an unknown type, or whose handler fails for a reason that
  retrying will not fix goes to the group's dead-letter topic with the reason in headers, and the
  consumer carries on with the next message;
- a retriable failure (database or cloud briefly unavailable) is retried with capped backoff;
- after ``rewind()`` (the broker came back without its topics, see ``Runtime``) the Kafka consumer is
  replaced and every partition is read again from its beginning: the old consumer's positions and the
  group's committed offsets belong to logs the broker no longer has, and the inbox makes reading an event
  twice harmless.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from opentelemetry import trace

from shared.bus.handlers import HandlerContext, HandlerRegistry
from shared.bus.kafka import FETCH_MAX_WAIT_MS, KafkaBus
from shared.bus.outbox import write_outbox
from shared.db import RETRIABLE_DB_ERRORS
from shared.errors import DcostackError
from shared.events.envelope import Envelope, MalformedEvent, decode
from shared.logging import get_logger
from shared.metrics import DLQ_TOTAL, EVENTS_CONSUMED, HANDLER_DURATION
from shared.telemetry import extract_context, tracer
from shared.topics import dlq_topic

log = get_logger(__name__)
_tracer = tracer(__name__)


@dataclass(slots=True)
class _Item:
    record: ConsumerRecord[bytes, bytes]
    envelope: Envelope


@dataclass(slots=True)
class _Malformed:
    record: ConsumerRecord[bytes, bytes]
    error: MalformedEvent


def _is_retriable(exc: BaseException) -> bool:
    if isinstance(exc, DcostackError):
        return exc.retriable
    return isinstance(exc, RETRIABLE_DB_ERRORS)


def _is_infrastructure(exc: BaseException) -> bool:
    """The database itself is unreachable: wait for it rather than give up on the events."""
    return isinstance(exc, RETRIABLE_DB_ERRORS) and not isinstance(
        exc, asyncpg.SerializationError | asyncpg.DeadlockDetectedError
    )


class _RewindOnAssignment(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: EventConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        pass

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.owner._rewind_assigned(assigned)


class EventConsumer:
    def __init__(
        self,
        *,
        bus: KafkaBus,
        pool: asyncpg.Pool,
        service: str,
        group: str,
        topics: Sequence[str],
        handlers: HandlerRegistry,
        batch_size: int = 500,
        max_attempts: int = 5,
        backoff: float = 0.2,
        backoff_max: float = 10.0,
        state: Any = None,
        commit_timeout: float = 15.0,
        fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS,
    ) -> None:
        self.bus = bus
        self.pool = pool
        self.service = service
        self.group = group
        self.topics = list(topics)
        self.handlers = handlers
        self.batch_size = batch_size
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.state = state
        self.commit_timeout = commit_timeout
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.dlq = dlq_topic(group)
        self.handled = 0
        self.assigned = asyncio.Event()
        self.rewinds = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._rewind_requested = False
        # After a rewind: the partitions this group committed since; any other partition assigned to this
        # member may still carry an offset of the lost log, so it is read from its beginning.
        self._settled: set[TopicPartition] | None = None

    def rewind(self) -> None:
        """Replace the Kafka consumer and read every partition again from its beginning: the broker lost
        its logs (it came back empty), so the consumer's positions and the group's committed offsets point
        past the new, shorter logs, where a broker may answer with nothing instead of "offset out of
        range". Until this group commits a partition again, whoever gets it assigned starts at its
        beginning too (an offset committed just before the rewind may still be one of the lost log)."""
        self._rewind_requested = True

    async def _rewind_assigned(self, assigned: set[TopicPartition]) -> None:
        if self._settled is None or self._consumer is None:
            return
        if stale := assigned - self._settled:
            await self._consumer.seek_to_beginning(*stale)
            log.info("bus.consumer_rewound", group=self.group, partitions=len(stale))

    async def run(self) -> None:
        while True:
            consumer = self.bus.consumer(
                self.topics,
                self.group,
                max_records=self.batch_size,
                fetch_max_wait_ms=self.fetch_max_wait_ms,
                listener=_RewindOnAssignment(self),
            )
            self._consumer = consumer
            await consumer.start()
            log.info("bus.consumer_started", group=self.group, topics=self.topics, rewinds=self.rewinds)
            try:
                await self._consume(consumer)
            finally:
                self._consumer = None
                try:
                    async with asyncio.timeout(self.commit_timeout):
                        await consumer.stop()
                except (KafkaError, OSError, TimeoutError) as e:
                    log.warning("bus.consumer_stop_failed", group=self.group, error=str(e) or type(e).__name__)
            # rewind() asked for a new consumer that reads from the beginning.
            self._rewind_requested = False
            self._settled = set()
            self.rewinds += 1

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        """Handle batches until ``rewind()`` is called."""
        while not self._rewind_requested:
            batch = await consumer.getmany(timeout_ms=500, max_records=self.batch_size)
            if consumer.assignment():
                self.assigned.set()
            if not batch:
                continue
            await self._process_batch([self._decode(records) for records in batch.values()])
            # Every partition's offset in one request, after the transactions committed.
            offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
            try:
                async with asyncio.timeout(self.commit_timeout):
                    await consumer.commit(offsets)
                if self._settled is not None:
                    self._settled.update(offsets)
            except (CommitFailedError, IllegalStateError, KafkaError, TimeoutError) as e:
                # A partition moved to another member or the broker is away; these events may be
                # delivered again, and the inbox makes that harmless.
                log.warning("bus.commit_failed", group=self.group, error=str(e) or type(e).__name__)

    def _decode(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> list[_Item | _Malformed]:
        """One partition's records as events to handle and malformed ones, in order; types this group does
        not act on are counted and left out (topics carry many types)."""
        entries: list[_Item | _Malformed] = []
        ignored: Counter[tuple[str, str]] = Counter()
        for record in records:
            try:
                envelope = decode(record.headers, record.value)
            except MalformedEvent as e:
                entries.append(_Malformed(record, e))
                continue
            if self.handlers.handles_type(envelope.type):
                entries.append(_Item(record, envelope))
            else:
                ignored[(record.topic, envelope.type)] += 1
        for (topic, type_), n in ignored.items():
            EVENTS_CONSUMED.labels(self.service, topic, type_, "ignored").inc(n)
        return entries

    async def _process_batch(self, partitions: list[list[_Item | _Malformed]]) -> None:
        """When every event of the poll has a batch handler (a bulk stream), all partitions share one
        transaction: one inbox insert, one call per batch handler, one commit. Otherwise partitions are
        handled concurrently, each in its own order and transaction, so per-event handlers of different
        partitions overlap their round trips to the database."""
        everything = [entry for entries in partitions for entry in entries]
        items = [entry for entry in everything if isinstance(entry, _Item)]
        if len(items) == len(everything) and all(self.handlers.get_batch(i.envelope.type) for i in items):
            await self._flush(items)
        else:
            await asyncio.gather(*(self._process_partition(entries) for entries in partitions))

    async def _process_partition(self, entries: list[_Item | _Malformed]) -> None:
        items: list[_Item] = []
        for entry in entries:
            if isinstance(entry, _Malformed):
                # Events before it take effect before it is dead-lettered, as they came.
                await self._flush(items)
                items = []
                await self._dead_letter(entry.record, entry.error.reason, entry.error.detail)
            else:
                items.append(entry)
        await self._flush(items)

    async def _flush(self, items: list[_Item]) -> None:
        if not items:
            return
        if len(items) > 1:
            delay = self.backoff
            while True:
                try:
                    await self._handle_in_one_transaction(items)
                    return
                except Exception as e:
                    if not _is_infrastructure(e):
                        break
                    log.warning("bus.db_unavailable", group=self.group, error=str(e) or type(e).__name__)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.backoff_max)
        # One event failed (or there is only one): handle each on its own so a bad one cannot hold
        # back the others.
        for item in items:
            await self._handle_alone(item)

    async def _handle_alone(self, item: _Item) -> None:
        attempt = 0
        delay = self.backoff
        while True:
            attempt += 1
            try:
                await self._handle_in_one_transaction([item])
                return
            except Exception as e:
                if _is_infrastructure(e):
                    log.warning("bus.db_unavailable", group=self.group, error=str(e) or type(e).__name__)
                    attempt = 0
                elif not _is_retriable(e):
                    await self._dead_letter(item.record, "handler_error", _describe(e), item.envelope)
                    return
                elif attempt >= self.max_attempts:
                    await self._dead_letter(
                        item.record,
                        "retries_exhausted",
                        f"{_describe(e)} (after {attempt} attempts)",
                        item.envelope,
                    )
                    return
                EVENTS_CONSUMED.labels(self.service, item.record.topic, item.envelope.type, "retried").inc()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max)

    async def _handle_in_one_transaction(self, items: Sequence[_Item]) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            fresh = {
                r["event_id"]
                for r in await conn.fetch(
                    "INSERT INTO inbox (consumer_group, event_id) SELECT $1, unnest($2::text[]) "
                    "ON CONFLICT DO NOTHING RETURNING event_id",
                    self.group,
                    [i.envelope.id for i in items],
                )
            }
            outcomes: list[tuple[_Item, str]] = []
            outbox = []
            batched: dict[str, list[HandlerContext]] = {}
            for item in items:
                env = item.envelope
                if env.id not in fresh:
                    outcomes.append((item, "duplicate"))
                    continue
                fresh.discard(env.id)  # the same id twice in one batch is handled once
                ctx = HandlerContext(tx=conn, envelope=env, source=self.service, state=self.state)
                outcomes.append((item, "handled"))
                if self.handlers.get_batch(env.type) is not None:
                    batched.setdefault(env.type, []).append(ctx)
                    continue
                handler = self.handlers.get(env.type)
                assert handler is not None
                started = time.perf_counter()
                with (
                    _tracer.start_as_current_span(
                        f"handle {env.type}",
                        context=extract_context(env.trace_headers),
                        kind=trace.SpanKind.CONSUMER,
                        attributes={"messaging.system": "kafka", "cloudevents.event_id": env.id},
                    ),
                    structlog.contextvars.bound_contextvars(
                        event_id=env.id, correlation_id=env.correlation_id, project_id=env.project_id
                    ),
                ):
                    await handler(env.data, ctx)
                HANDLER_DURATION.labels(self.service, env.type).observe(time.perf_counter() - started)
                outbox.extend(ctx.outbox)
            for type_, contexts in batched.items():
                batch_handler = self.handlers.get_batch(type_)
                assert batch_handler is not None
                started = time.perf_counter()
                with _tracer.start_as_current_span(
                    f"handle batch {type_}",
                    kind=trace.SpanKind.CONSUMER,
                    attributes={"messaging.system": "kafka", "messaging.batch.message_count": len(contexts)},
                ):
                    await batch_handler(contexts)
                HANDLER_DURATION.labels(self.service, type_).observe(time.perf_counter() - started)
                for ctx in contexts:
                    outbox.extend(ctx.outbox)
            await write_outbox(conn, outbox)
        outcome_counts = Counter((item.record.topic, item.envelope.type, outcome) for item, outcome in outcomes)
        self.handled += sum(n for (_, _, outcome), n in outcome_counts.items() if outcome == "handled")
        for (topic, type_, outcome), n in outcome_counts.items():
            EVENTS_CONSUMED.labels(self.service, topic, type_, outcome).inc(n)

    async def _dead_letter(
        self,
        record: ConsumerRecord[bytes, bytes],
        reason: str,
        detail: str,
        envelope: Envelope | None = None,
    ) -> None:
        headers = list(record.headers or ())
        headers += [
            ("dcostack_dlq_reason", reason.encode()),
            ("dcostack_dlq_detail", detail[:2000].encode()),
            ("dcostack_dlq_group", self.group.encode()),
            ("dcostack_dlq_topic", record.topic.encode()),
            ("dcostack_dlq_partition", str(record.partition).encode()),
            ("dcostack_dlq_offset", str(record.offset).encode()),
        ]
        delay = self.backoff
        while True:
            try:
                await self.bus.producer.send_and_wait(
                    self.bus.physical(self.dlq), value=record.value, key=record.key, headers=headers
                )
                break
            except (KafkaError, OSError) as e:
                log.warning("bus.dlq_publish_failed", group=self.group, error=str(e), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max)
        type_ = envelope.type if envelope else "unknown"
        EVENTS_CONSUMED.labels(self.service, record.topic, type_, "dlq").inc()
        DLQ_TOTAL.labels(self.service, self.group, reason).inc()
        log.warning(
            "bus.dead_lettered",
            group=self.group,
            reason=reason,
            detail=detail,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            event_id=envelope.id if envelope else None,
        )


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"
