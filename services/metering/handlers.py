"""Metering's Kafka handlers."""

from shared.bus import HandlerRegistry
from shared.probe import register_probe_handler

handlers = HandlerRegistry()
register_probe_handler(handlers, "metering")
