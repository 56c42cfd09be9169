"""PostgreSQL access: one asyncpg pool per service, its own schema, forward-only SQL migrations."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from shared.errors import DcostackError, DependencyUnavailable
from shared.logging import get_logger

log = get_logger(__name__)

SHARED_MIGRATIONS = Path(__file__).parent / "migrations"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class MigrationError(DcostackError):
    """The database and the code disagree about the schema; the service must not start."""


@dataclass(frozen=True)
class Migration:
    version: str
    path: Path


def discover(*dirs: Path) -> list[Migration]:
    """Migrations in order: the shared delivery tables first, then the service's own files."""
    found: list[Migration] = []
    for prefix, directory in zip(("shared", "service"), dirs, strict=False):
        for path in sorted(directory.glob("*.sql")):
            if not _NAME.match(path.name):
                raise MigrationError(f"migration {path.name} must be named NNNN_snake_case.sql")
            found.append(Migration(f"{prefix}/{path.stem}", path))
    return found


def check_schema_name(schema: str) -> str:
    if not _SCHEMA.match(schema):
        raise MigrationError(
            f"schema name {schema!r} is not a plain lower-case identifier", field="DCOSTACK_DATABASE_SCHEMA"
        )
    return schema


async def migrate(conn: asyncpg.Connection, schema: str, migrations: list[Migration]) -> list[str]:
    """Apply the migrations not yet applied to ``schema``; return their versions.

    Concurrent starters of the same service are serialised by an advisory lock. A database that
    has versions this code does not know was migrated by newer code: refuse to run against it.
    """
    check_schema_name(schema)
    applied_now: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"dcostack.migrate.{schema}")
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {schema}.schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        rows = await conn.fetch(f"SELECT version FROM {schema}.schema_migrations")
        applied = {r["version"] for r in rows}
        known = {m.version for m in migrations}
        unknown = sorted(applied - known)
        if unknown:
            raise MigrationError(
                f"schema {schema} has migrations this code does not know ({', '.join(unknown)}): "
                "it was migrated by a newer release; deploy that release or restore the database"
            )
        await conn.execute(f"SET LOCAL search_path TO {schema}")
        for m in migrations:
            if m.version in applied:
                continue
            await conn.execute(m.path.read_text())
            await conn.execute(f"INSERT INTO {schema}.schema_migrations (version) VALUES ($1)", m.version)
            applied_now.append(m.version)
    if applied_now:
        log.info("db.migrated", schema=schema, applied=applied_now)
    return applied_now


async def connect_pool(
    dsn: str, schema: str, *, size: int, wait_seconds: float, migrations: list[Migration] | None = None
) -> asyncpg.Pool:
    """Open a pool whose connections use ``schema``, retrying for up to ``wait_seconds``.

    Raises DependencyUnavailable with the cause and the fix when the database stays unreachable.
    """
    check_schema_name(schema)
    deadline = asyncio.get_running_loop().time() + wait_seconds
    delay = 0.2
    while True:
        try:
            conn = await asyncpg.connect(dsn, timeout=min(5.0, wait_seconds))
            try:
                if migrations is not None:
                    await migrate(conn, schema, migrations)
            finally:
                await conn.close()
            pool: asyncpg.Pool = await asyncpg.create_pool(
                dsn,
                min_size=1,
                max_size=size,
                server_settings={"search_path": schema, "application_name": f"dcostack-{schema}"},
            )
            return pool
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError, TimeoutError) as e:
            if asyncio.get_running_loop().time() + delay > deadline:
                raise DependencyUnavailable(
                    f"cannot reach PostgreSQL at {redact(dsn)}: {e or type(e).__name__}; "
                    "check DCOSTACK_DATABASE_URL or start PostgreSQL (`dcostack up` starts one)",
                    field="DCOSTACK_DATABASE_URL",
                ) from e
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        except asyncpg.InvalidCatalogNameError as e:
            raise DependencyUnavailable(
                f"database in {redact(dsn)} does not exist: {e}; create it (`createdb NAME`) "
                "or point DCOSTACK_DATABASE_URL at an existing one",
                field="DCOSTACK_DATABASE_URL",
            ) from e
        except asyncpg.InvalidPasswordError as e:
            raise DependencyUnavailable(
                f"PostgreSQL refused the credentials in {redact(dsn)}: {e}; fix DCOSTACK_DATABASE_URL",
                field="DCOSTACK_DATABASE_URL",
            ) from e


def redact(dsn: str) -> str:
    """The DSN without its password, for messages."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", dsn)


RETRIABLE_DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.TooManyConnectionsError,
)
