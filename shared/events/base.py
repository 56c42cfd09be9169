"""Event and command payloads: one pydantic class per versioned CloudEvents type."""

from __future__ import annotations

import re
from typing import ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

from shared.topics import Lane, lane_of

TYPE_PATTERN = re.compile(r"^io\.dcostack\.[a-z]+\.[a-z_]+\.[a-z_]+\.v(\d+)$")


class EventData(BaseModel):
    """Base of every payload. Frozen, and tolerant of fields it does not know (forward compatible)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    TYPE: ClassVar[str]
    #: Control (what a run waits for) or bulk (large or bursty); see shared/topics.py. A ClassVar, so
    #: it is not part of the payload or its JSON Schema.
    LANE: ClassVar[Lane]
    TOPIC: ClassVar[str | None] = None


class WrongLane(ValueError):
    """An event published on a topic of the other lane: a programming error, refused before it is sent."""


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
    if not isinstance(getattr(cls, "LANE", None), Lane):
        raise TypeError(
            f"{cls.__name__} needs LANE = Lane.CONTROL (what a run waits for: step commands, step progress, "
            "run changes) or Lane.BULK (large or bursty: probes, notifications, samples, metrics, logs)"
        )
    if cls.TOPIC is not None:
        check_lane(cls, cls.TOPIC)
    if type_ in REGISTRY and REGISTRY[type_] is not cls:
        raise TypeError(f"{type_} is registered twice ({REGISTRY[type_].__name__} and {cls.__name__})")
    REGISTRY[type_] = cls
    return cls


def check_lane(cls: type[EventData], topic: str) -> None:
    """Refuse ``topic`` for events of ``cls`` when it belongs to the other lane (dead-letter topics and
    topics the platform does not name belong to none and are not checked)."""
    lane = lane_of(topic)
    if lane is not None and lane is not cls.LANE:
        raise WrongLane(
            f"{cls.__name__} ({cls.TYPE}) belongs to the {cls.LANE} lane and cannot be published on {topic}, "
            f"a topic of the {lane} lane; publish it on a {cls.LANE}-lane topic, e.g. "
            f"shared.topics.events_topic(domain, Lane.{cls.LANE.name})"
        )
