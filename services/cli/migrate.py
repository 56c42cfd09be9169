"""Apply every service's migrations, as the compose ``migrate`` service and the Helm hook do."""

from __future__ import annotations

import importlib

import asyncpg

from services.cli.processes import SERVICES
from shared.config import ServiceSettings, load_settings
from shared.db import SHARED_MIGRATIONS, discover, migrate
from shared.runtime import ServiceSpec


async def migrate_all() -> dict[str, list[str]]:
    settings = load_settings(ServiceSettings)
    conn = await asyncpg.connect(settings.database_url)
    try:
        result: dict[str, list[str]] = {}
        for name in SERVICES:
            spec: ServiceSpec = importlib.import_module(f"services.{name}.__main__").SPEC
            result[name] = await migrate(conn, name, discover(SHARED_MIGRATIONS, spec.migrations_dir))
        return result
    finally:
        await conn.close()
