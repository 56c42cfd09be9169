"""Storage's Kafka handlers."""

from shared.bus import HandlerRegistry
from shared.executor.accept import register_step_handlers
from shared.probe import register_probe_handler

SERVICE = "storage"
handlers = HandlerRegistry()
register_probe_handler(handlers, "storage")
register_step_handlers(handlers, SERVICE)
