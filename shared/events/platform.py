"""Platform self-check: the planner asks every domain service to answer, proving the bus end to end.

Used by ``dcostack up`` after start, by the crash tests, and by operators (``POST /v1/probes``).
Probes travel on the bulk lane: one probe may be thousands of commands and answers, and a run's step
commands and progress must never wait behind them.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from pydantic import Field

from shared.events.base import EventData, register
from shared.topics import Lane


@register
class RunProbeV1(EventData):
    """Asks one domain service to record that it is alive and answer with ProbeAnsweredV1.

    Sent to ``dcostack.<domain>.bulk.commands``; the key is the probe id, so one probe's commands stay
    in order.
    """

    TYPE = "io.dcostack.platform.probe.run.v1"
    LANE = Lane.BULK
    probe_id: UUID
    seq: int = Field(0, ge=0, description="Position of this command within its probe, for ordering checks")
    target: str = Field(description="The domain service that must answer")
    requested_at: datetime


@register
class ProbeAnsweredV1(EventData):
    """Emitted by a domain service once it has recorded a RunProbeV1 command in its own database."""

    TYPE = "io.dcostack.platform.probe.answered.v1"
    LANE = Lane.BULK
    probe_id: UUID
    seq: int = Field(0, ge=0)
    service: str
    answered_at: datetime
