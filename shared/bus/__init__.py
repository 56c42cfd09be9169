"""The Kafka bus: producer/consumer wrappers, transactional outbox and relay, inbox and dead letters."""

from shared.bus.consumer import EventConsumer
from shared.bus.handlers import HandlerContext, HandlerRegistry
from shared.bus.kafka import KafkaBus
from shared.bus.outbox import OutboxRelay, OutboxRow, make_outbox_row, write_outbox

__all__ = [
    "EventConsumer",
    "HandlerContext",
    "HandlerRegistry",
    "KafkaBus",
    "OutboxRelay",
    "OutboxRow",
    "make_outbox_row",
    "write_outbox",
]
