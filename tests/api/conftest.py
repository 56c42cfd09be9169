"""Each service's own ASGI app (``create_app``) served in this process, its runtime started in the app's
lifespan against real PostgreSQL (a database of its own) and the test broker, for API tests in process."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import FastAPI

from services.cli.infra import drop_database, ensure_database
from services.cli.openapi import spec_of
from shared.config import AuthStrategy, Environment
from shared.runtime import Runtime

#: Every service that serves HTTP.
HTTP_SERVICES = ("planner", "compute", "network", "storage", "monitor", "metering", "hybrid")
EXECUTORS = ("compute", "network", "storage")


def in_process_app(service: str, **settings: Any) -> FastAPI:
    """``create_app`` of ``service`` whose lifespan starts and stops its runtime (pool, producer, consumers,
    workers): whoever drives the app's lifespan (schemathesis' ASGI client does) gets a running service."""
    spec = spec_of(service)
    runtime = Runtime(spec, spec.settings_cls(**settings))
    app = spec.create_app(runtime)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            # Serve once every consumer holds its partitions: stopping one still joining its group leaks it
            # (EventConsumer.run starts the aiokafka consumer outside its try/finally).
            async with asyncio.timeout(60):
                for consumer in runtime.consumers:
                    await consumer.assigned.wait()
            yield
        finally:
            validator = getattr(app.state, "token_validator", None)
            if validator is not None:  # its connection to Keystone
                await validator.close()
            await runtime.stop()

    app.router.lifespan_context = lifespan
    return app


@pytest.fixture(scope="module")
def service_settings(pg_server: str, kafka_bootstrap: str) -> Iterator[Callable[..., dict[str, Any]]]:
    """Settings of one in-process service: a database of its own (dropped at the end) and topics of its own."""
    made: list[str] = []

    def settings(service: str, **extra: Any) -> dict[str, Any]:
        database = f"dcostack_api_{service}_{uuid.uuid4().hex[:8]}"
        made.append(database)
        return {
            "env": Environment.TEST,
            "auth_strategy": AuthStrategy.NOAUTH,
            "secret_key": "test-secret-key-not-for-production",
            "database_url": asyncio.run(ensure_database(pg_server, database)),
            "kafka_bootstrap_servers": kafka_bootstrap,
            "kafka_topic_prefix": f"api{uuid.uuid4().hex[:8]}.",
            "kafka_partitions": 1,
            "startup_timeout_seconds": 20,
            "outbox_poll_seconds": 0.5,
            **extra,
        }

    yield settings
    for database in made:
        asyncio.run(drop_database(pg_server, database))
