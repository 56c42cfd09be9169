"""Two lanes: every event type belongs to one, each lane has its own topics and consumer groups, and an
event published on a topic of the other lane is refused before it reaches the outbox."""

from __future__ import annotations

import asyncio
import importlib
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import pytest

from shared.bus import HandlerContext, HandlerRegistry, make_outbox_row
from shared.config import AuthStrategy, ServiceSettings
from shared.events import REGISTRY, EventData, register
from shared.events.base import WrongLane
from shared.events.envelope import Envelope
from shared.events.platform import ProbeAnsweredV1, RunProbeV1
from shared.events.steps import StepProgressedV1
from shared.runtime import Runtime, ServiceSpec
from shared.topics import (
    DOMAINS,
    LOGS,
    METERING_SAMPLES,
    Lane,
    all_topics,
    commands_topic,
    consumer_group,
    dlq_topic,
    events_topic,
    lane_of,
    lane_topics,
)

SERVICES = ("planner", "compute", "network", "storage", "monitor", "metering", "hybrid")


def probe() -> RunProbeV1:
    return RunProbeV1(probe_id=uuid.uuid4(), target="compute", requested_at=datetime.now(UTC))


def progress() -> StepProgressedV1:
    return StepProgressedV1(
        dispatch_id=uuid.uuid4(),
        run_id=uuid.uuid4(),
        step_key="server/web-0",
        service="compute",
        state="succeeded",
        at=datetime.now(UTC),
    )


class TestTopics:
    def test_each_domain_has_its_topics_on_both_lanes_and_they_differ(self) -> None:
        for d in DOMAINS:
            assert commands_topic(d) == f"dcostack.{d}.commands"
            assert events_topic(d) == f"dcostack.{d}.events"
            assert commands_topic(d, Lane.BULK) == f"dcostack.{d}.bulk.commands"
            assert events_topic(d, Lane.BULK) == f"dcostack.{d}.bulk.events"
        assert not set(lane_topics(Lane.CONTROL)) & set(lane_topics(Lane.BULK))
        assert len(all_topics()) == len(set(all_topics()))

    def test_streams_are_on_the_bulk_lane_and_dead_letters_on_none(self) -> None:
        assert lane_of(METERING_SAMPLES) is Lane.BULK
        assert lane_of(LOGS) is Lane.BULK
        assert lane_of(events_topic("compute")) is Lane.CONTROL
        assert lane_of(dlq_topic(consumer_group("compute"))) is None

    def test_each_lane_is_consumed_in_its_own_group(self) -> None:
        assert consumer_group("planner") == "dcostack.planner.main"
        assert consumer_group("planner", Lane.BULK) == "dcostack.planner.bulk"


class TestEveryTypeHasALane:
    @pytest.mark.parametrize("type_", sorted(REGISTRY))
    def test_registered_type_names_its_lane(self, type_: str) -> None:
        assert isinstance(REGISTRY[type_].LANE, Lane)

    def test_probes_are_bulk_and_run_traffic_is_control(self) -> None:
        assert RunProbeV1.LANE is ProbeAnsweredV1.LANE is Lane.BULK
        assert {REGISTRY[t].LANE for t in REGISTRY if ".probe." not in t} == {Lane.CONTROL}

    def test_a_type_without_a_lane_is_refused_at_registration(self) -> None:
        with pytest.raises(TypeError, match=r"needs LANE = Lane.CONTROL .* or Lane.BULK"):

            @register
            class NoLaneV1(EventData):
                """A type that forgot its lane."""

                TYPE: ClassVar[str] = "io.dcostack.test.thing.forgotten.v1"

        assert "io.dcostack.test.thing.forgotten.v1" not in REGISTRY

    def test_a_default_topic_of_the_other_lane_is_refused_at_registration(self) -> None:
        with pytest.raises(WrongLane, match="belongs to the bulk lane"):

            @register
            class MisplacedV1(EventData):
                """A bulk type whose default topic is a control topic."""

                TYPE: ClassVar[str] = "io.dcostack.test.thing.misplaced.v1"
                LANE: ClassVar[Lane] = Lane.BULK
                TOPIC: ClassVar[str | None] = events_topic("compute")


class TestPublishingOnTheOtherLaneIsRefused:
    def test_bulk_event_on_a_control_topic_is_refused_with_the_lane_and_the_fix(self) -> None:
        with pytest.raises(WrongLane) as caught:
            make_outbox_row(probe(), source="/tests", topic=commands_topic("compute"))
        message = str(caught.value)
        assert "RunProbeV1" in message
        assert "belongs to the bulk lane" in message
        assert "dcostack.compute.commands, a topic of the control lane" in message
        assert "Lane.BULK" in message

    def test_control_event_on_a_bulk_topic_is_refused(self) -> None:
        with pytest.raises(WrongLane, match="belongs to the control lane"):
            make_outbox_row(progress(), source="/tests", topic=events_topic("compute", Lane.BULK))

    def test_a_handler_publishing_on_the_other_lane_fails_and_queues_nothing(self) -> None:
        envelope = Envelope(id="e-1", source="/tests", type=RunProbeV1.TYPE, time=datetime.now(UTC), data=probe())
        ctx = HandlerContext(tx=None, envelope=envelope, source="/tests")
        answer = ProbeAnsweredV1(probe_id=uuid.uuid4(), service="compute", answered_at=datetime.now(UTC))
        with pytest.raises(WrongLane):
            ctx.publish(answer, topic=events_topic("compute"))
        assert ctx.outbox == []

    def test_each_lane_accepts_its_own_events(self) -> None:
        assert make_outbox_row(probe(), source="/tests", topic=commands_topic("compute", Lane.BULK)).topic == (
            "dcostack.compute.bulk.commands"
        )
        assert make_outbox_row(progress(), source="/tests", topic=events_topic("compute")).topic == (
            "dcostack.compute.events"
        )
        # A dead-letter topic keeps any type.
        assert make_outbox_row(probe(), source="/tests", topic=dlq_topic("dcostack.compute.main")).topic


class TestServiceSpecNamesEachLane:
    def _spec(self, consumes: dict[Lane, list[str]]) -> ServiceSpec:
        return ServiceSpec(
            name="test",
            settings_cls=ServiceSettings,
            migrations_dir=Path("."),
            handlers=HandlerRegistry(),
            consumes=consumes,
            owns_topics=[],
            create_app=lambda _: None,  # type: ignore[arg-type,return-value]
        )

    def test_a_topic_listed_under_the_other_lane_is_refused(self) -> None:
        with pytest.raises(ValueError, match=r"dcostack.compute.bulk.commands listed under the control lane"):
            self._spec({Lane.CONTROL: [commands_topic("compute", Lane.BULK)]})

    @pytest.mark.parametrize("service", SERVICES)
    def test_every_service_takes_probes_on_the_bulk_lane_and_run_traffic_on_the_control_lane(
        self, service: str
    ) -> None:
        spec: ServiceSpec = importlib.import_module(f"services.{service}.__main__").SPEC
        assert {lane: {lane_of(t) for t in topics} for lane, topics in spec.consumes.items()} == {
            Lane.CONTROL: {Lane.CONTROL},
            Lane.BULK: {Lane.BULK},
        }
        probe_type = ProbeAnsweredV1 if service == "planner" else RunProbeV1
        assert spec.handlers.handles_type(probe_type.TYPE)


class TestRuntimeConsumesEachLaneApart:
    async def test_one_consumer_per_lane_in_its_own_group_with_its_own_batch_size(
        self, pg_dsn: str, kafka_bootstrap: str, topic_prefix: str
    ) -> None:
        from services.monitor.__main__ import SPEC
        from services.monitor.settings import MonitorSettings

        settings = MonitorSettings(
            database_url=pg_dsn,
            database_schema="monitor_" + uuid.uuid4().hex[:8],
            kafka_bootstrap_servers=kafka_bootstrap,
            kafka_topic_prefix=topic_prefix,
            auth_strategy=AuthStrategy.NOAUTH,
            consumer_batch_size=7,
            bulk_consumer_batch_size=700,
        )
        runtime = Runtime(SPEC, settings)
        await runtime.start()
        try:
            async with asyncio.timeout(60):
                await asyncio.gather(*(c.assigned.wait() for c in runtime.consumers))
            assert sorted((c.group, c.topics, c.batch_size) for c in runtime.consumers) == [
                ("dcostack.monitor.bulk", ["dcostack.monitor.bulk.commands"], 700),
                ("dcostack.monitor.main", ["dcostack.monitor.commands"], 7),
            ]
            assert {dlq_topic("dcostack.monitor.bulk"), dlq_topic("dcostack.monitor.main")} <= set(runtime.topics)
            # Each consumer acts only on its own lane's types: probes on the bulk lane only.
            by_group = {c.group: c.handlers.types for c in runtime.consumers}
            assert by_group == {"dcostack.monitor.bulk": [RunProbeV1.TYPE], "dcostack.monitor.main": []}
        finally:
            await runtime.stop()
