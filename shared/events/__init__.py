"""Event payload registry. Importing this package registers every payload class."""

from shared.events import platform as platform
from shared.events import steps as steps
from shared.events.base import REGISTRY, EventData, register

__all__ = ["REGISTRY", "EventData", "register"]
