"""Prometheus metrics every service exports on ``/metrics`` (names are shared with the Grafana dashboard)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_CONSUMED = Counter(
    "dcostack_events_consumed_total",
    "Events taken from Kafka by a consumer, by outcome (handled, duplicate, dlq, retried)",
    ["service", "topic", "type", "outcome"],
)
EVENTS_PUBLISHED = Counter(
    "dcostack_events_published_total",
    "Events the outbox relay delivered to Kafka",
    ["service", "topic", "type"],
)
OUTBOX_PENDING = Gauge(
    "dcostack_outbox_pending",
    "Outbox rows written but not yet delivered to Kafka",
    ["service"],
)
DLQ_TOTAL = Counter(
    "dcostack_dlq_total",
    "Events sent to a dead-letter topic, by reason",
    ["service", "group", "reason"],
)
HANDLER_DURATION = Histogram(
    "dcostack_handler_duration_seconds",
    "Time spent in an event handler",
    ["service", "type"],
)
HTTP_REQUESTS = Counter(
    "dcostack_http_requests_total",
    "HTTP requests served",
    ["service", "method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "dcostack_http_request_duration_seconds",
    "HTTP request latency",
    ["service", "method", "route"],
)
