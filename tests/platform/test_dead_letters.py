"""Malformed and unknown events never crash a consumer: they go to its dead-letter topic with a reason."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from shared.events.envelope import encode_headers, encode_value, kafka_headers
from shared.events.platform import RunProbeV1
from shared.topics import Lane, commands_topic, consumer_group, dlq_topic
from tests.fixtures.platform import Platform, wait_for

GOOD_HEADERS = {"ce_specversion": "1.0", "ce_source": "/tests", "content-type": "application/json"}


def _bad_messages(n: int) -> list[tuple[str, list[tuple[str, bytes]], bytes | None]]:
    """``n`` broken messages of six kinds, each with the reason the DLQ must give."""
    valid_body = json.dumps(
        {"probe_id": str(uuid.uuid4()), "target": "compute", "requested_at": "2026-01-01T00:00:00Z"}
    )

    def headers(type_: str, **extra: str) -> list[tuple[str, bytes]]:
        h = {**GOOD_HEADERS, "ce_id": str(uuid.uuid4()), "ce_type": type_, **extra}
        return [(k, v.encode()) for k, v in h.items()]

    kinds: list[Callable[[], tuple[str, list[tuple[str, bytes]], bytes | None]]] = [
        lambda: ("bad_json", headers(RunProbeV1.TYPE), b"{not json"),
        lambda: ("missing_headers", [("content-type", b"application/json")], valid_body.encode()),
        lambda: ("unknown_type", headers("io.dcostack.compute.thing.exploded.v1"), valid_body.encode()),
        lambda: ("schema_mismatch", headers(RunProbeV1.TYPE), json.dumps({"probe_id": "nope"}).encode()),
        lambda: ("bad_header", [*headers(RunProbeV1.TYPE), ("ce_subject", b"\xff\xfe")], valid_body.encode()),
        lambda: ("empty_value", headers(RunProbeV1.TYPE), None),
    ]
    return [kinds[i % len(kinds)]() for i in range(n)]


@pytest.mark.slow
class TestDeadLetters:
    def test_1000_broken_events_go_to_the_dlq_with_reasons_and_valid_ones_around_them_are_handled(
        self, platform_factory: Callable[..., Platform]
    ) -> None:
        platform = platform_factory("compute")
        pid_before = platform["compute"].pid
        probe_id = uuid.uuid4()
        bad = _bad_messages(1000)

        async def produce() -> None:
            producer = AIOKafkaProducer(bootstrap_servers=platform.bootstrap, linger_ms=5)
            await producer.start()
            try:
                topic = platform.prefix + commands_topic("compute", Lane.BULK)
                seq = 0
                for i, (_, headers, value) in enumerate(bad):
                    await producer.send(topic, value=value, key=str(probe_id).encode(), headers=headers)
                    if i % 10 == 0:  # a valid command after every ten broken ones
                        good = RunProbeV1(probe_id=probe_id, seq=seq, target="compute", requested_at=datetime.now(UTC))
                        h = encode_headers(good, source="/tests", event_id=str(uuid.uuid4()))
                        await producer.send(
                            topic, value=encode_value(good), key=str(probe_id).encode(), headers=kafka_headers(h)
                        )
                        seq += 1
                await producer.flush()
            finally:
                await producer.stop()

        asyncio.run(produce())

        async def read_dlq() -> list[dict[str, str]]:
            consumer = AIOKafkaConsumer(
                platform.prefix + dlq_topic(consumer_group("compute", Lane.BULK)),
                bootstrap_servers=platform.bootstrap,
                auto_offset_reset="earliest",
                group_id=f"{platform.prefix}dlq-reader",
            )
            await consumer.start()
            found: list[dict[str, str]] = []
            try:
                for _ in range(120):
                    batch = await consumer.getmany(timeout_ms=500)
                    for records in batch.values():
                        for r in records:
                            found.append({k: v.decode(errors="replace") for k, v in r.headers})
                    if len(found) >= 1000:
                        break
            finally:
                await consumer.stop()
            return found

        dead = asyncio.run(read_dlq())
        assert len(dead) == 1000
        assert Counter(h["dcostack_dlq_reason"] for h in dead) == Counter(reason for reason, _, _ in bad)
        assert all(h["dcostack_dlq_detail"] for h in dead)
        assert {h["dcostack_dlq_group"] for h in dead} == {consumer_group("compute", Lane.BULK)}

        with platform.http("compute") as compute:
            answers = wait_for(
                lambda: len(a := compute.get(f"/v1/compute/probes/{probe_id}").json()["answers"]) == 100 and a,
                60,
                "the 100 valid commands to be handled",
            )
            assert [a["seq"] for a in answers] == list(range(100))
            assert compute.get("/healthz").status_code == 200
        assert platform["compute"].running()
        assert platform["compute"].pid == pid_before, "the consumer process restarted: it crashed"
