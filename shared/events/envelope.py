"""CloudEvents 1.0 in Kafka binary content mode.

Attributes travel as ``ce_*`` headers, the payload as the JSON message value, so any CloudEvents SDK
can produce and consume DCOSTACK events. Extensions used: ``correlationid`` (the plan-run step),
``projectid`` (the Keystone project) and ``traceparent`` (W3C trace context).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pydantic import ValidationError

from shared.errors import DcostackError
from shared.events.base import REGISTRY, EventData

CONTENT_TYPE = "application/json"
SPEC_VERSION = "1.0"
REQUIRED = ("ce_specversion", "ce_id", "ce_source", "ce_type")


class MalformedEvent(DcostackError):
    """A message that is not a valid DCOSTACK CloudEvent; it goes to the dead-letter topic."""

    status_code = 422

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Envelope:
    id: str
    type: str
    source: str
    data: EventData
    time: datetime
    subject: str | None = None
    correlation_id: str | None = None
    project_id: str | None = None
    trace_headers: dict[str, str] = field(default_factory=dict)


def new_event_id() -> str:
    return str(uuid.uuid4())


def encode_headers(
    data: EventData,
    *,
    source: str,
    event_id: str,
    subject: str | None = None,
    correlation_id: str | None = None,
    project_id: str | None = None,
    time: datetime | None = None,
    trace_headers: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The ``ce_*`` headers for one event, as text (the outbox stores them as JSON)."""
    headers = {
        "ce_specversion": SPEC_VERSION,
        "ce_id": event_id,
        "ce_source": source,
        "ce_type": data.TYPE,
        "ce_time": (time or datetime.now(UTC)).isoformat(),
        "content-type": CONTENT_TYPE,
    }
    if subject:
        headers["ce_subject"] = subject
    if correlation_id:
        headers["ce_correlationid"] = correlation_id
    if project_id:
        headers["ce_projectid"] = project_id
    for key, value in (trace_headers or {}).items():
        headers[f"ce_{key}"] = value
    return headers


def encode_value(data: EventData) -> bytes:
    return data.model_dump_json().encode()


def kafka_headers(headers: Mapping[str, str]) -> list[tuple[str, bytes]]:
    return [(k, v.encode()) for k, v in headers.items()]


def decode(raw_headers: Iterable[tuple[str, bytes]] | None, value: bytes | None) -> Envelope:
    """Parse a Kafka message into an :class:`Envelope`, or raise :class:`MalformedEvent` saying why."""
    headers: dict[str, str] = {}
    for key, raw in raw_headers or ():
        try:
            headers[key] = raw.decode() if raw is not None else ""
        except UnicodeDecodeError:
            raise MalformedEvent("bad_header", f"header {key!r} is not UTF-8") from None
    missing = [h for h in REQUIRED if not headers.get(h)]
    if missing:
        raise MalformedEvent("missing_headers", f"missing CloudEvents headers: {', '.join(missing)}")
    if headers["ce_specversion"] != SPEC_VERSION:
        raise MalformedEvent("bad_specversion", f"specversion {headers['ce_specversion']!r} is not 1.0")
    ctype = headers.get("content-type", CONTENT_TYPE)
    if not ctype.startswith(CONTENT_TYPE):
        raise MalformedEvent("bad_content_type", f"content-type {ctype!r}; only {CONTENT_TYPE} is accepted")
    type_ = headers["ce_type"]
    cls = REGISTRY.get(type_)
    if cls is None:
        raise MalformedEvent("unknown_type", f"no payload class is registered for type {type_!r}")
    if value is None:
        raise MalformedEvent("empty_value", "the message has no value; a JSON payload is required")
    try:
        data = cls.model_validate_json(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(body)"
        reason = "bad_json" if first["type"] == "json_invalid" else "schema_mismatch"
        raise MalformedEvent(reason, f"{type_}: {where}: {first['msg']}") from None
    try:
        time = datetime.fromisoformat(headers["ce_time"]) if headers.get("ce_time") else datetime.now(UTC)
    except ValueError:
        raise MalformedEvent("bad_time", f"ce_time {headers['ce_time']!r} is not RFC 3339") from None
    trace = {k[3:]: v for k, v in headers.items() if k in ("ce_traceparent", "ce_tracestate")}
    return Envelope(
        id=headers["ce_id"],
        type=type_,
        source=headers["ce_source"],
        data=data,
        time=time,
        subject=headers.get("ce_subject"),
        correlation_id=headers.get("ce_correlationid"),
        project_id=headers.get("ce_projectid"),
        trace_headers=trace,
    )
