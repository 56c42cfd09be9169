"""Process lifecycle of one service: PostgreSQL pool and migrations, Kafka producer, outbox relay,
consumers and the HTTP server, started in order and stopped cleanly. ``run_service`` is every
service's ``main()``.

Each lane a service consumes gets its own consumer in its own consumer group (``dcostack.<svc>.main``
for the control lane, ``dcostack.<svc>.bulk`` for the bulk lane) with its own batch size, so a backlog
of bulk events never stands in front of a step's progress."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import uvicorn
from fastapi import FastAPI

from shared.bus import EventConsumer, HandlerRegistry, KafkaBus, OutboxRelay
from shared.config import ServiceSettings, SettingsError, load_settings, unknown_variables
from shared.db import SHARED_MIGRATIONS, connect_pool, discover
from shared.errors import DcostackError
from shared.events import REGISTRY
from shared.logging import configure_logging, get_logger
from shared.telemetry import configure_tracing
from shared.topics import Lane, consumer_group, dlq_topic, lane_of

log = get_logger(__name__)


def witness_topic(service: str) -> str:
    """A topic of ``service`` that no client ever produces to, fetches from or asks metadata for by name,
    so a broker that auto-creates topics on use (Tansu does) never recreates it behind the runtime's
    back: when the topic keeper finds it missing, the broker lost its topics (it came back empty)."""
    return f"dcostack.{service}.witness"


@dataclass
class ServiceSpec:
    """What makes one service: its name, settings, schema, the topics each lane consumes and the topics
    it owns, its API."""

    name: str
    settings_cls: type[ServiceSettings]
    migrations_dir: Path
    handlers: HandlerRegistry
    #: The topics each lane's consumer reads; every topic must belong to that lane (shared/topics.py).
    consumes: dict[Lane, list[str]]
    owns_topics: list[str]
    create_app: Callable[[Runtime], FastAPI]
    description: str = ""
    extra: dict[str, object] = field(default_factory=dict)
    # Long-running tasks beside the consumer and the relay (e.g. the workers that execute plan steps).
    background: list[Callable[[Runtime], Coroutine[Any, Any, None]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for lane, topics in self.consumes.items():
            wrong = [t for t in topics if lane_of(t) is not lane]
            if wrong:
                raise ValueError(
                    f"service {self.name}: {', '.join(wrong)} listed under the {lane} lane but "
                    f"{'belong' if len(wrong) > 1 else 'belongs'} to "
                    f"{', '.join(str(lane_of(t) or 'no lane') for t in wrong)}; list each topic under its lane"
                )

    @property
    def consumed_topics(self) -> list[str]:
        return [t for topics in self.consumes.values() for t in topics]


def lane_handlers(handlers: HandlerRegistry, lane: Lane) -> HandlerRegistry:
    """The handlers of ``lane``'s event types: a consumer acts only on its own lane, so an event that
    reached a topic of the other lane anyway (an old producer) is counted as ignored, not worked on."""
    out = HandlerRegistry()
    for type_ in handlers.types:
        cls = REGISTRY.get(type_)
        if cls is None or cls.LANE is not lane:
            continue
        per_event, batch = handlers.get(type_), handlers.get_batch(type_)
        if per_event is not None:
            out.handles(cls)(per_event)
        if batch is not None:
            out.handles_batch(cls)(batch)
    return out


class Runtime:
    def __init__(self, spec: ServiceSpec, settings: ServiceSettings) -> None:
        self.spec = spec
        self.name = spec.name
        self.settings = settings
        self.bus = KafkaBus(settings, client_id=f"dcostack-{spec.name}")
        self._pool: asyncpg.Pool | None = None
        self.relays: dict[Lane, OutboxRelay] = {}
        self.consumers: list[EventConsumer] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.topics: list[str] = []

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("Runtime.start() was not awaited")
        return self._pool

    async def start(self) -> None:
        s = self.settings
        self._pool = await connect_pool(
            s.database_url,
            s.db_schema,
            size=s.database_pool_size,
            wait_seconds=s.startup_timeout_seconds,
            migrations=discover(SHARED_MIGRATIONS, self.spec.migrations_dir),
        )
        await self.bus.start()
        lanes = {lane: topics for lane, topics in self.spec.consumes.items() if topics}
        groups = {lane: consumer_group(self.name, lane) for lane in lanes}
        self.topics = [
            *self.spec.owns_topics,
            *self.spec.consumed_topics,
            *(dlq_topic(g) for g in groups.values()),
        ]
        await self.bus.ensure_topics([*self.topics, witness_topic(self.name)])
        for lane in Lane:  # one relay per lane: a bulk backlog in the outbox never delays a control row
            relay = self.relays[lane] = OutboxRelay(
                self.pool,
                self.bus,
                schema=s.db_schema,
                service=self.name,
                batch_size=s.outbox_batch_size,
                poll_seconds=s.outbox_poll_seconds,
                backoff_max=s.retry_backoff_max_seconds,
                lane=lane,
            )
            self.tasks.append(asyncio.create_task(relay.run(), name=f"{self.name}-{lane}-outbox-relay"))
        self.tasks.append(asyncio.create_task(self._keep_topics(), name=f"{self.name}-topic-keeper"))
        for lane, topics in lanes.items():
            consumer = EventConsumer(
                bus=self.bus,
                pool=self.pool,
                service=self.name,
                group=groups[lane],
                topics=topics,
                handlers=lane_handlers(self.spec.handlers, lane),
                batch_size=s.consumer_batch_size if lane is Lane.CONTROL else s.bulk_consumer_batch_size,
                max_attempts=s.handler_max_attempts,
                backoff=s.retry_backoff_seconds,
                backoff_max=s.retry_backoff_max_seconds,
                state=self,
            )
            self.consumers.append(consumer)
            self.tasks.append(asyncio.create_task(consumer.run(), name=f"{self.name}-{lane}-consumer"))
        for make in self.spec.background:
            self.tasks.append(asyncio.create_task(make(self), name=f"{self.name}-{make.__name__}"))
        log.info("service.started", schema=s.db_schema, consumes={str(k): v for k, v in lanes.items()}, groups=groups)

    async def _keep_topics(self) -> None:
        """Recreate this service's topics if they disappear (a broker restored empty, an operator's
        mistake); without them consumers and the relay cannot make progress. When the witness topic had to
        be recreated, the broker lost its logs: every consumer reads its partitions again from the
        beginning (its positions and committed offsets belong to the lost logs)."""
        witness = witness_topic(self.name)
        while True:
            await asyncio.sleep(self.settings.topic_check_seconds)
            try:
                async with asyncio.timeout(10):
                    created = await self.bus.ensure_topics([*self.topics, witness])
            except Exception as e:
                log.debug("bus.topic_check_failed", error=str(e) or type(e).__name__)
                continue
            if self.bus.physical(witness) in created:
                log.warning("bus.broker_came_back_empty", hint="consumers read their topics from the beginning")
                for consumer in self.consumers:
                    consumer.rewind()

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()
        await self.bus.stop()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def readiness(self) -> dict[str, str]:
        checks: dict[str, str] = {}
        try:
            async with asyncio.timeout(2):
                await self.pool.fetchval("SELECT 1")
            checks["database"] = "ok"
        except Exception as e:
            checks["database"] = f"unreachable: {e or type(e).__name__}"
        try:
            await self.bus.ping(2.0)
            checks["kafka"] = "ok"
        except DcostackError as e:
            checks["kafka"] = f"unreachable: {e.__cause__ or e}"
        for task in self.tasks:
            if task.done():
                checks[task.get_name()] = "stopped"
        return checks


async def serve(spec: ServiceSpec, settings: ServiceSettings) -> None:
    runtime = Runtime(spec, settings)
    await runtime.start()
    try:
        app = spec.create_app(runtime)
        config = uvicorn.Config(
            app,
            host=settings.http_host,
            port=settings.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        server = uvicorn.Server(config)
        server_task = asyncio.create_task(server.serve(), name=f"{spec.name}-http")
        watched = {server_task, *runtime.tasks}
        done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not server_task and not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                log.error("service.task_crashed", task=task.get_name(), error=repr(exc))
                server.should_exit = True
                await server_task
                raise SystemExit(1) from exc
    finally:
        await runtime.stop()
        log.info("service.stopped")


def run_service(spec: ServiceSpec) -> None:
    """The ``main()`` of every service: settings → logging/tracing → serve until signalled."""
    try:
        settings = load_settings(spec.settings_cls)
    except SettingsError as e:
        sys.stderr.write(f"dcostack-{spec.name}: invalid settings: {e}\n")
        raise SystemExit(2) from None
    configure_logging(spec.name, settings.log_level, settings.log_format)
    for name in unknown_variables(spec.settings_cls):
        log.warning("settings.unknown_variable", variable=name, hint="no setting reads it; check the spelling")
    configure_tracing(spec.name, settings.otel_exporter_otlp_endpoint)
    try:
        asyncio.run(serve(spec, settings))
    except DcostackError as e:
        sys.stderr.write(f"dcostack-{spec.name}: cannot start: {e.detail}\n")
        raise SystemExit(3) from None
    except KeyboardInterrupt:
        pass
