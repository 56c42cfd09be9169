"""Every Kafka topic and consumer-group name, in one place (no topic literals in services)."""

from __future__ import annotations

from typing import Final

DOMAINS: Final = ("planner", "compute", "network", "storage", "monitor", "metering", "hybrid")

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

METERING_SAMPLES: Final = "dcostack.metering.samples"
USAGE: Final = "dcostack.usage"
ASSETS: Final = "dcostack.assets"
MONITOR_ALARMS: Final = "dcostack.monitor.alarms"
LOGS: Final = "dcostack.logs"

DLQ_PREFIX: Final = "dcostack.dlq."


def commands_topic(domain: str) -> str:
    """``dcostack.<domain>.commands``: requests for the domain's service to act."""
    _check(domain)
    return f"dcostack.{domain}.commands"


def events_topic(domain: str) -> str:
    """``dcostack.<domain>.events``: facts the domain's service reports."""
    _check(domain)
    return f"dcostack.{domain}.events"


def consumer_group(service: str, purpose: str = "main") -> str:
    return f"dcostack.{service}.{purpose}"


def dlq_topic(group: str) -> str:
    """The dead-letter topic of one consumer group."""
    return DLQ_PREFIX + group


def all_topics() -> list[str]:
    """Every topic the platform uses, except the per-group dead-letter topics."""
    names = [commands_topic(d) for d in DOMAINS] + [events_topic(d) for d in DOMAINS]
    return [*names, METERING_SAMPLES, USAGE, ASSETS, MONITOR_ALARMS, LOGS]


def _check(domain: str) -> None:
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; one of {', '.join(DOMAINS)}")
