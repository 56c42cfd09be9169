"""The one place that creates Kafka clients. Topic and group names given to it are logical; it adds
the configured prefix (``DCOSTACK_KAFKA_TOPIC_PREFIX``) so tests and shared clusters stay apart."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from shared.config import ServiceSettings
from shared.errors import DependencyUnavailable
from shared.logging import get_logger

log = get_logger(__name__)

# How long the broker may hold a fetch that has nothing to return. Tansu holds it this long even when
# records arrive meanwhile (with 1,000 ms, a record produced during the wait arrived after 358-368 ms), so
# it bounds delivery latency: bench.bus at 2,000 events/s measured p50 68-92 ms with 100 ms and 18-27 ms
# with 10 ms. The price is idle polling: an idle consumer of 6 partitions used 1.1 % of a core with
# 100 ms and 3.2 % with 25 ms; consumers that need no low latency can pass a longer wait.
FETCH_MAX_WAIT_MS = 25


class KafkaBus:
    def __init__(self, settings: ServiceSettings, client_id: str) -> None:
        self.settings = settings
        self.client_id = client_id
        self.bootstrap = settings.kafka_bootstrap_servers
        self._producer: AIOKafkaProducer | None = None

    def physical(self, name: str) -> str:
        return self.settings.kafka_topic_prefix + name

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("KafkaBus.start() was not awaited")
        return self._producer

    async def start(self) -> None:
        """Connect the producer, retrying until ``startup_timeout_seconds``; fail with one clear line."""
        deadline = asyncio.get_running_loop().time() + self.settings.startup_timeout_seconds
        delay = 0.2
        while True:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                client_id=self.client_id,
                acks="all",
                linger_ms=2,
                max_batch_size=256 * 1024,
                request_timeout_ms=15000,
            )
            try:
                await producer.start()
                self._producer = producer
                return
            except (KafkaError, OSError) as e:
                await producer.stop()
                if asyncio.get_running_loop().time() + delay > deadline:
                    raise self.unreachable(e) from e
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def unreachable(self, e: BaseException) -> DependencyUnavailable:
        return DependencyUnavailable(
            f"cannot reach Kafka at {self.bootstrap}: {e or type(e).__name__}; "
            "check DCOSTACK_KAFKA_BOOTSTRAP_SERVERS or start a broker (`dcostack up` starts one)",
            field="DCOSTACK_KAFKA_BOOTSTRAP_SERVERS",
        )

    async def restart_producer(self) -> None:
        """Replace a producer that stopped making progress (e.g. the broker came back empty)."""
        old, self._producer = self._producer, None
        if old is not None:
            try:
                async with asyncio.timeout(5):
                    await old.stop()
            except (KafkaError, OSError, TimeoutError) as e:
                log.warning("bus.producer_stop_failed", error=str(e) or type(e).__name__)
        await self.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def ensure_topics(self, names: Iterable[str]) -> list[str]:
        """Create the topics that do not exist yet (Kafka clusters often forbid auto-creation); return the
        physical names of those it created."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id=f"{self.client_id}-admin")
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            wanted = sorted({self.physical(n) for n in names} - existing)
            if not wanted:
                return []
            new = [
                NewTopic(
                    n,
                    self.settings.kafka_partitions,
                    replication_factor=self.settings.kafka_replication_factor,
                )
                for n in wanted
            ]
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass  # another service created them between list and create
            log.info("bus.topics_created", topics=wanted)
            return wanted
        finally:
            await admin.close()

    async def ensure_present(self, names: Iterable[str]) -> None:
        """Before a publish: recreate the topics among ``names`` the broker does not list. A broker that
        came back empty may acknowledge records produced to a topic it no longer has, for a producer that
        still knows the topic, and then never serve them (Tansu 0.6.0 does); one metadata request on the
        producer's connection tells, and only a missing topic costs more."""
        wanted = set(names)
        cluster = await self.producer.client.fetch_all_metadata()
        missing = [n for n in sorted(wanted) if self.physical(n) not in cluster.topics()]
        if missing:
            await self.ensure_topics(missing)

    def consumer(
        self,
        topics: Sequence[str],
        group: str,
        *,
        max_records: int,
        fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS,
        listener: ConsumerRebalanceListener | None = None,
    ) -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id=self.client_id,
            group_id=self.physical(group),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=max_records,
            fetch_max_wait_ms=fetch_max_wait_ms,
            session_timeout_ms=10000,
            heartbeat_interval_ms=1000,
        )
        consumer.subscribe([self.physical(t) for t in topics], listener=listener)
        return consumer

    async def ping(self, wait_seconds: float = 2.0) -> None:
        """Raise if the broker does not answer a metadata request within ``wait_seconds``."""
        try:
            await asyncio.wait_for(self.producer.client.fetch_all_metadata(), wait_seconds)
        except (KafkaError, OSError, TimeoutError) as e:
            raise self.unreachable(e) from e
