"""A service that cannot start says why in one line, naming the variable and the fix."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from services.cli.infra import free_port


def run_service(name: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DCOSTACK_")}
    return subprocess.run(
        [sys.executable, "-m", f"services.{name}"],
        env={
            **clean,
            "DCOSTACK_STARTUP_TIMEOUT_SECONDS": "1",
            "DCOSTACK_LOG_FORMAT": "json",
            "DCOSTACK_KEYSTONE_URL": "http://127.0.0.1:1/v3",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line(stderr: str) -> str:
    """The one line a person reads: everything else on stderr must be structured log records."""
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("{")]
    assert len(lines) == 1, f"expected one line, got:\n{stderr}"
    assert "Traceback" not in stderr
    return lines[0]


class TestSettingsErrors:
    @pytest.mark.parametrize(
        ("env", "variable", "fix_hint"),
        [
            ({"DCOSTACK_HTTP_PORT": "eighty"}, "DCOSTACK_HTTP_PORT", "valid integer"),
            ({"DCOSTACK_HTTP_PORT": "70000"}, "DCOSTACK_HTTP_PORT", "less than or equal to 65535"),
            ({"DCOSTACK_LOG_LEVEL": "LOUD"}, "DCOSTACK_LOG_LEVEL", "DEBUG, INFO"),
            ({"DCOSTACK_ENV": "staging"}, "DCOSTACK_ENV", "'dev', 'test' or 'prod'"),
            ({"DCOSTACK_ENV": "prod"}, "DCOSTACK_SECRET_KEY", "openssl rand"),
            ({"DCOSTACK_KEYSTONE_URL": ""}, "DCOSTACK_KEYSTONE_URL", "DCOSTACK_AUTH_STRATEGY=noauth"),
        ],
    )
    def test_bad_setting_names_the_variable_and_the_fix(
        self, env: dict[str, str], variable: str, fix_hint: str
    ) -> None:
        result = run_service("compute", env)
        assert result.returncode == 2
        line = one_line(result.stderr)
        assert variable in line
        assert fix_hint in line


class TestUnreachableDependencies:
    def test_unreachable_database_is_one_clear_line(self, kafka_bootstrap: str) -> None:
        port = free_port()
        result = run_service(
            "compute",
            {
                "DCOSTACK_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/x",
                "DCOSTACK_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            },
        )
        assert result.returncode == 3
        line = one_line(result.stderr)
        assert f"cannot reach PostgreSQL at postgresql://postgres@127.0.0.1:{port}/x" in line
        assert "DCOSTACK_DATABASE_URL" in line

    def test_unreachable_broker_is_one_clear_line(self, fresh_database: str) -> None:
        port = free_port()
        result = run_service(
            "planner",
            {"DCOSTACK_DATABASE_URL": fresh_database, "DCOSTACK_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"},
        )
        assert result.returncode == 3
        line = one_line(result.stderr)
        assert f"cannot reach Kafka at 127.0.0.1:{port}" in line
        assert "DCOSTACK_KAFKA_BOOTSTRAP_SERVERS" in line

    def test_database_password_is_not_printed(self, kafka_bootstrap: str) -> None:
        port = free_port()
        result = run_service(
            "compute",
            {
                "DCOSTACK_DATABASE_URL": f"postgresql://u:s3cret@127.0.0.1:{port}/x",
                "DCOSTACK_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            },
        )
        assert "s3cret" not in result.stderr
        assert "u:***@" in one_line(result.stderr)
