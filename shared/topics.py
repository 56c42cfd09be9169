"""Every Kafka topic and consumer-group name, in one place (no topic literals in services).

Two lanes (DESIGN.md "Two lanes"). The **control** lane carries what a run waits for: step commands,
step progress, run changes. The **bulk** lane carries what can be large or bursty: self-check probes
now; the cloud's notifications, usage samples, metric streams and logs next. Each lane has its own
topics and each service consumes each lane in its own consumer group, so no volume of bulk traffic
delays a run. Every event type names its lane (``EventData.LANE``) and is refused on the other lane's
topics.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class Lane(StrEnum):
    CONTROL = "control"
    BULK = "bulk"


DOMAINS: Final = ("planner", "compute", "network", "storage", "monitor", "metering", "hybrid")

# Control lane.
PLANNER_COMMANDS: Final = "dcostack.planner.commands"
PLANNER_EVENTS: Final = "dcostack.planner.events"
COMPUTE_COMMANDS: Final = "dcostack.compute.commands"
COMPUTE_EVENTS: Final = "dcostack.compute.events"
NETWORK_COMMANDS: Final = "dcostack.network.commands"
NETWORK_EVENTS: Final = "dcostack.network.events"
STORAGE_COMMANDS: Final = "dcostack.storage.commands"
STORAGE_EVENTS: Final = "dcostack.storage.events"
MONITOR_COMMANDS: Final = "dcostack.monitor.commands"
MONITOR_EVENTS: Final = "dcostack.monitor.events"
METERING_COMMANDS: Final = "dcostack.metering.commands"
METERING_EVENTS: Final = "dcostack.metering.events"
HYBRID_COMMANDS: Final = "dcostack.hybrid.commands"
HYBRID_EVENTS: Final = "dcostack.hybrid.events"

# Bulk lane: the streams that are not a domain's commands or events. Alarms go here too: rules are
# evaluated on metric streams and a flapping rule is bursty; what an alarm starts (a plan run) goes
# through the planner's API and the control lane.
METERING_SAMPLES: Final = "dcostack.metering.samples"
USAGE: Final = "dcostack.usage"
ASSETS: Final = "dcostack.assets"
MONITOR_ALARMS: Final = "dcostack.monitor.alarms"
LOGS: Final = "dcostack.logs"
STREAMS: Final = (METERING_SAMPLES, USAGE, ASSETS, MONITOR_ALARMS, LOGS)

DLQ_PREFIX: Final = "dcostack.dlq."

#: The segment a domain topic of the bulk lane carries: ``dcostack.<domain>.bulk.commands``.
_LANE_SEGMENT: Final = {Lane.CONTROL: "", Lane.BULK: "bulk."}


def commands_topic(domain: str, lane: Lane = Lane.CONTROL) -> str:
    """Requests for the domain's service to act: ``dcostack.<domain>.commands`` on the control lane,
    ``dcostack.<domain>.bulk.commands`` on the bulk lane."""
    _check(domain)
    return f"dcostack.{domain}.{_LANE_SEGMENT[lane]}commands"


def events_topic(domain: str, lane: Lane = Lane.CONTROL) -> str:
    """Facts the domain's service reports: ``dcostack.<domain>.events`` on the control lane,
    ``dcostack.<domain>.bulk.events`` on the bulk lane."""
    _check(domain)
    return f"dcostack.{domain}.{_LANE_SEGMENT[lane]}events"


def consumer_group(service: str, lane: Lane = Lane.CONTROL) -> str:
    """``dcostack.<service>.main`` consumes the control lane, ``dcostack.<service>.bulk`` the bulk lane."""
    return f"dcostack.{service}.{'main' if lane is Lane.CONTROL else lane.value}"


def dlq_topic(group: str) -> str:
    """The dead-letter topic of one consumer group (it belongs to no lane: it keeps any type)."""
    return DLQ_PREFIX + group


def lane_topics(lane: Lane) -> list[str]:
    """Every topic of one lane."""
    names = [f(d, lane) for f in (commands_topic, events_topic) for d in DOMAINS]
    return [*names, *STREAMS] if lane is Lane.BULK else names


def lane_of(topic: str) -> Lane | None:
    """The lane of one of the platform's topics; None for a dead-letter topic or one we do not name."""
    return _LANES.get(topic)


def all_topics() -> list[str]:
    """Every topic the platform uses, except the per-group dead-letter topics."""
    return [t for lane in Lane for t in lane_topics(lane)]


def _check(domain: str) -> None:
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; one of {', '.join(DOMAINS)}")


_LANES: Final = {t: lane for lane in Lane for t in lane_topics(lane)}
