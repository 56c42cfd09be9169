"""Network's Kafka handlers."""

from shared.bus import HandlerRegistry
from shared.executor.accept import register_step_handlers
from shared.probe import register_probe_handler

SERVICE = "network"
handlers = HandlerRegistry()
register_probe_handler(handlers, "network")
register_step_handlers(handlers, SERVICE)
