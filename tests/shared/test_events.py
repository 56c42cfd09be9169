"""The CloudEvents envelope: round trip, interoperability with the CloudEvents SDK, and every way a
message can be refused."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from cloudevents.v1.http import CloudEvent
from cloudevents.v1.kafka import KafkaMessage, from_binary, to_binary

from shared.events import REGISTRY, EventData, register
from shared.events.envelope import MalformedEvent, decode, encode_headers, encode_value, kafka_headers
from shared.events.platform import ProbeAnsweredV1, RunProbeV1


def probe() -> RunProbeV1:
    return RunProbeV1(probe_id=uuid.uuid4(), seq=3, target="compute", requested_at=datetime.now(UTC))


class TestRoundTrip:
    def test_encoded_event_decodes_to_the_same_payload_and_attributes(self) -> None:
        data = probe()
        headers = encode_headers(
            data, source="/t", event_id="e-1", subject="s-1", correlation_id="step-9", project_id="p-1"
        )
        env = decode(kafka_headers(headers), encode_value(data))
        assert env.data == data
        assert (env.id, env.type, env.source, env.subject) == ("e-1", RunProbeV1.TYPE, "/t", "s-1")
        assert (env.correlation_id, env.project_id) == ("step-9", "p-1")

    def test_cloudevents_sdk_reads_our_message(self) -> None:
        data = probe()
        headers = encode_headers(data, source="/dcostack/planner", event_id="e-2", correlation_id="step-1")
        msg = KafkaMessage({k: v.encode() for k, v in headers.items()}, None, encode_value(data))
        event = from_binary(msg)
        assert event["type"] == RunProbeV1.TYPE
        assert event["id"] == "e-2"
        assert event["correlationid"] == "step-1"
        assert RunProbeV1.model_validate(event.data if isinstance(event.data, dict) else json.loads(event.data)) == data

    def test_we_read_a_message_made_by_the_cloudevents_sdk(self) -> None:
        data = probe()
        event = CloudEvent(
            {
                "type": RunProbeV1.TYPE,
                "source": "/other-system",
                "id": "x-1",
                "datacontenttype": "application/json",
            },
            json.loads(data.model_dump_json()),
        )
        msg = to_binary(event)
        assert isinstance(msg.value, bytes)
        env = decode(list(msg.headers.items()), msg.value)
        assert env.data == data
        assert env.source == "/other-system"


class TestRefusals:
    @pytest.mark.parametrize(
        ("headers", "value", "reason"),
        [
            ({}, b"{}", "missing_headers"),
            ({"ce_specversion": "0.3"}, b"{}", "bad_specversion"),
            ({"ce_type": "io.dcostack.nothing.here.happened.v1"}, b"{}", "unknown_type"),
            ({"content-type": "application/avro"}, b"{}", "bad_content_type"),
            ({}, b"{oops", "bad_json"),
            ({}, b'{"probe_id": "not-a-uuid"}', "schema_mismatch"),
            ({}, None, "empty_value"),
        ],
    )
    def test_refused_with_a_reason(self, headers: dict[str, str], value: bytes | None, reason: str) -> None:
        base = {"ce_specversion": "1.0", "ce_id": "1", "ce_source": "/t", "ce_type": RunProbeV1.TYPE}
        if reason == "missing_headers":
            base = {}
        with pytest.raises(MalformedEvent) as info:
            decode(kafka_headers({**base, **headers}), value)
        assert info.value.reason == reason
        assert info.value.detail

    def test_bad_time_is_refused(self) -> None:
        data = probe()
        headers = {**encode_headers(data, source="/t", event_id="1"), "ce_time": "yesterday"}
        with pytest.raises(MalformedEvent) as info:
            decode(kafka_headers(headers), encode_value(data))
        assert info.value.reason == "bad_time"

    def test_unknown_fields_are_tolerated(self) -> None:
        data = probe()
        body = {**json.loads(encode_value(data)), "added_in_a_later_release": 1}
        env = decode(kafka_headers(encode_headers(data, source="/t", event_id="1")), json.dumps(body).encode())
        assert env.data == data


class TestRegistry:
    def test_unversioned_type_is_refused(self) -> None:
        with pytest.raises(TypeError, match="io.dcostack"):

            @register
            class BadV1(EventData):
                """Bad."""

                TYPE = "compute.created"

    def test_name_must_carry_the_version(self) -> None:
        with pytest.raises(TypeError, match="V2"):

            @register
            class ThingCreatedV1(EventData):
                """Bad."""

                TYPE = "io.dcostack.compute.thing.created.v2"

    def test_docstring_is_required(self) -> None:
        with pytest.raises(TypeError, match="docstring"):

            @register
            class ThingDeletedV1(EventData):
                TYPE = "io.dcostack.compute.thing.deleted.v1"

    def test_registry_holds_the_platform_events(self) -> None:
        assert REGISTRY[RunProbeV1.TYPE] is RunProbeV1
        assert REGISTRY[ProbeAnsweredV1.TYPE] is ProbeAnsweredV1

    def test_payloads_are_frozen(self) -> None:
        with pytest.raises(ValueError, match="frozen"):
            probe().seq = 4  # type: ignore[misc]
