"""The newcomer's command: `dcostack up` brings everything up, self-checks, and stops cleanly."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from services.cli.infra import free_port, port_open

DCOSTACK = [sys.executable, "-m", "services"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCOSTACK_")}
    return {**env, "DCOSTACK_LOG_FORMAT": "json", **extra}


class TestUp:
    def test_up_check_starts_broker_and_services_runs_the_self_check_and_stops_everything(
        self, tmp_path: Path, pg_dsn: str
    ) -> None:
        kafka_port = free_port()
        base = free_port()
        result = subprocess.run(
            [*DCOSTACK, "up", "--check", "--state-dir", str(tmp_path), "--kafka-port", str(kafka_port)]
            + ["--base-port", str(base)],
            env=clean_env(DCOSTACK_DATABASE_URL=pg_dsn),
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert "self-check passed: 6/6 services answered" in result.stderr
        assert "stopped kafka" in result.stderr
        # Everything it started is gone: the broker port and every service port are free again.
        assert not port_open("127.0.0.1", kafka_port)
        assert not any(port_open("127.0.0.1", base + i) for i in range(7))
        assert (tmp_path / "logs" / "planner.log").exists()

    def test_up_refuses_a_taken_port_with_what_to_do(self, tmp_path: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            taken = s.getsockname()[1]
            result = subprocess.run(
                [*DCOSTACK, "up", "--check", "--state-dir", str(tmp_path), "--kafka-port", str(taken)],
                env=clean_env(),
                capture_output=True,
                text=True,
                timeout=60,
            )
        assert result.returncode != 0
        assert f"port {taken} is taken" in result.stderr
        assert "DCOSTACK_KAFKA_BOOTSTRAP_SERVERS" in result.stderr
        assert "Traceback" not in result.stderr

    def test_check_without_a_running_platform_says_how_to_start_it(self) -> None:
        port = free_port()
        result = subprocess.run(
            [*DCOSTACK, "check", "--planner-url", f"http://127.0.0.1:{port}"],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1
        assert "planner not reachable" in result.stdout
        assert "dcostack up" in result.stdout


class TestEmbeddedPostgres:
    def test_a_machine_without_postgresql_gets_an_embedded_server(self, tmp_path: Path) -> None:
        code = (
            "import asyncio, asyncpg, sys; from pathlib import Path;"
            "from services.cli.infra import start_embedded_postgres;"
            "dsn = start_embedded_postgres(Path(sys.argv[1]));"
            "print(asyncio.run(asyncpg.connect(dsn)).get_server_version().major)"
        )
        result = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "pg")], capture_output=True, text=True, timeout=180
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert int(result.stdout.strip().splitlines()[-1]) >= 15
