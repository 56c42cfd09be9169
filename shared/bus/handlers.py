"""Handler registration and the context a handler gets: the open transaction and a way to publish."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg

from shared.bus.outbox import OutboxRow, make_outbox_row
from shared.events.base import EventData
from shared.events.envelope import Envelope

D = TypeVar("D", bound=EventData)
Handler = Callable[[Any, "HandlerContext"], Awaitable[None]]
TypedHandler = Callable[[D, "HandlerContext"], Awaitable[None]]
BatchHandler = Callable[[list["HandlerContext"]], Awaitable[None]]


@dataclass
class HandlerContext:
    """What a handler may use. ``tx`` is inside the transaction that also records the inbox row,
    so the handler's writes, its published events and the "handled" mark commit together."""

    tx: asyncpg.Connection
    envelope: Envelope
    source: str
    state: Any = None
    outbox: list[OutboxRow] = field(default_factory=list)

    def publish(
        self,
        data: EventData,
        *,
        topic: str | None = None,
        key: str | None = None,
        subject: str | None = None,
    ) -> str:
        """Queue an event for the outbox; it is written when the handler's transaction commits.

        The correlation id and project of the event being handled are carried over.
        """
        row = make_outbox_row(
            data,
            source=self.source,
            topic=topic,
            key=key,
            subject=subject,
            correlation_id=self.envelope.correlation_id,
            project_id=self.envelope.project_id,
        )
        self.outbox.append(row)
        return row.event_id


class HandlerRegistry:
    """Maps event types to handlers for one consumer group."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._batch: dict[str, BatchHandler] = {}

    def handles(self, event_type: type[D]) -> Callable[[TypedHandler[D]], Handler]:
        def decorator(fn: TypedHandler[D]) -> Handler:
            if self.handles_type(event_type.TYPE):
                raise ValueError(f"{event_type.TYPE} already has a handler in this registry")
            self._handlers[event_type.TYPE] = fn
            return fn

        return decorator

    def handles_batch(self, event_type: type[EventData]) -> Callable[[BatchHandler], BatchHandler]:
        """Register a handler that gets every new event of ``event_type`` in a consumer transaction at
        once (``ctx.envelope.data`` is each payload; ``contexts[0].tx`` is the transaction), for
        high-volume streams: write every effect with one statement (``INSERT ... SELECT * FROM
        unnest($1::uuid[], ...)``), not one per event. When every event of a poll has a batch handler,
        the poll's partitions share one transaction. Batch handlers run after the per-event handlers of
        the same transaction, so use them only where order relative to other types does not matter.
        If the batch fails, each event is retried alone, so one bad event cannot hold back the others."""

        def decorator(fn: BatchHandler) -> BatchHandler:
            if self.handles_type(event_type.TYPE):
                raise ValueError(f"{event_type.TYPE} already has a handler in this registry")
            self._batch[event_type.TYPE] = fn
            return fn

        return decorator

    def get(self, event_type: str) -> Handler | None:
        return self._handlers.get(event_type)

    def get_batch(self, event_type: str) -> BatchHandler | None:
        return self._batch.get(event_type)

    def handles_type(self, event_type: str) -> bool:
        return event_type in self._handlers or event_type in self._batch

    @property
    def types(self) -> list[str]:
        return sorted({*self._handlers, *self._batch})
