"""Event and command payloads: one pydantic class per versioned CloudEvents type."""

from __future__ import annotations

import re
from typing import ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

TYPE_PATTERN = re.compile(r"^io\.dcostack\.[a-z]+\.[a-z_]+\.[a-z_]+\.v(\d+)$")


class EventData(BaseModel):
    """Base of every payload. Frozen, and tolerant of fields it does not know (forward compatible)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    TYPE: ClassVar[str]
    TOPIC: ClassVar[str | None] = None


E = TypeVar("E", bound=type[EventData])

REGISTRY: dict[str, type[EventData]] = {}


def register(cls: E) -> E:
    """Add a payload class to the registry; its ``TYPE`` must be versioned and match its name."""
    type_ = getattr(cls, "TYPE", None)
    if not isinstance(type_, str) or not (m := TYPE_PATTERN.match(type_)):
        raise TypeError(f"{cls.__name__}.TYPE must look like io.dcostack.<domain>.<thing>.<verb>.v<N>")
    if not cls.__name__.endswith(f"V{m.group(1)}"):
        raise TypeError(f"{cls.__name__} carries type {type_}; its name must end in V{m.group(1)}")
    if not cls.__doc__:
        raise TypeError(f"{cls.__name__} needs a docstring: it becomes the schema description")
    if type_ in REGISTRY and REGISTRY[type_] is not cls:
        raise TypeError(f"{type_} is registered twice ({REGISTRY[type_].__name__} and {cls.__name__})")
    REGISTRY[type_] = cls
    return cls
