"""`dcostack plan`: offline validation, and a round trip through the real planner."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml
from typer.testing import CliRunner

from services.cli import app
from services.cli.infra import free_port
from tests.fixtures.platform import Platform

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "two-tier.yaml"
INVALID = """\
name: Not_A_Name
networks:
  - {name: net, cidr: 10.0.0.1/24}
security_groups:
  - name: web
    rules: [{protocol: tcp, ports: 99999}]
instance_groups:
  - {name: web, flavor: m1.tiny, image: cirros, count: -1, networks: [net]}
"""
INVALID_PATHS = ["$.name", "$.networks[0].cidr", "$.security_groups[0].rules[0].ports", "$.instance_groups[0].count"]

runner = CliRunner()


def invalid_file(tmp_path: Path) -> Path:
    path = tmp_path / "invalid.yaml"
    path.write_text(INVALID)
    return path


class TestValidateOffline:
    def test_the_example_is_valid_and_its_steps_are_counted(self) -> None:
        result = runner.invoke(app, ["plan", "validate", str(EXAMPLE)])
        assert result.exit_code == 0, result.output
        assert "plan 'two-tier' is valid: 26 steps" in result.stdout
        assert "volume_attachment" in result.stdout

    def test_json_output_is_the_api_answer(self) -> None:
        result = runner.invoke(app, ["plan", "validate", str(EXAMPLE), "--output", "json"])
        assert result.exit_code == 0, result.output
        body = json.loads(result.stdout)
        assert body["valid"] is True
        assert body["summary"]["total"] == len(body["steps"]) == 26
        assert body["plan"]["instance_groups"][0]["count"] == 2

    def test_an_invalid_plan_prints_every_error_with_its_path_and_exits_1(self, tmp_path: Path) -> None:
        result = runner.invoke(app, ["plan", "validate", str(invalid_file(tmp_path))])
        assert result.exit_code == 1
        lines = result.stderr.splitlines()
        for path in INVALID_PATHS:
            assert any(line.startswith(f"error: {path}: ") for line in lines), (path, result.stderr)
        assert "4 error(s)" in lines[-1]
        assert result.exception is None or isinstance(result.exception, SystemExit)

    def test_an_invalid_plan_in_json_lists_the_errors(self, tmp_path: Path) -> None:
        result = runner.invoke(app, ["plan", "validate", str(invalid_file(tmp_path)), "-o", "json"])
        assert result.exit_code == 1
        body = json.loads(result.stdout)
        assert body["valid"] is False
        assert [e["path"] for e in body["errors"]] == INVALID_PATHS

    def test_an_unreadable_document_is_one_line(self, tmp_path: Path) -> None:
        garbage = tmp_path / "garbage.json"
        garbage.write_text('{"name": ')
        result = runner.invoke(app, ["plan", "validate", str(garbage)])
        assert result.exit_code == 1
        assert result.stderr.startswith("error: $: not valid JSON")
        missing = runner.invoke(app, ["plan", "validate", str(tmp_path / "missing.yaml")])
        assert missing.exit_code == 1
        assert missing.stderr.strip() == f"error: cannot read {tmp_path / 'missing.yaml'}: No such file or directory"

    def test_the_installed_command_works_without_a_planner(self, tmp_path: Path) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "services", "plan", "validate", str(invalid_file(tmp_path))],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1
        assert "error: $.networks[0].cidr: " in result.stderr
        assert "Traceback" not in result.stderr


class TestOnline:
    def test_create_show_update_and_list_through_the_planner(
        self, platform_factory: Callable[..., Platform], tmp_path: Path
    ) -> None:
        platform = platform_factory("planner")
        env = {"DCOSTACK_PLANNER_URL": platform["planner"].base_url}

        created = runner.invoke(app, ["plan", "create", str(EXAMPLE)], env=env)
        assert created.exit_code == 0, created.output
        assert "created plan 'two-tier' version 1" in created.stdout

        again = runner.invoke(app, ["plan", "create", str(EXAMPLE)], env=env)
        assert again.exit_code == 1
        assert again.stderr.startswith("error: a plan named 'two-tier' already exists")

        changed = yaml.safe_load(EXAMPLE.read_text())
        changed["parameters"]["web_count"]["default"] = 3
        (tmp_path / "changed.json").write_text(json.dumps(changed))
        updated = runner.invoke(app, ["plan", "update", "two-tier", str(tmp_path / "changed.json")], env=env)
        assert updated.exit_code == 0, updated.output
        assert "updated plan 'two-tier' version 2" in updated.stdout

        shown = runner.invoke(app, ["plan", "show", "two-tier", "-o", "json"], env=env)
        assert shown.exit_code == 0, shown.output
        latest = json.loads(shown.stdout)
        assert latest["latest_version"] == 2
        assert latest["version"]["document"] == changed

        first = runner.invoke(app, ["plan", "show", latest["id"], "--version", "1"], env=env)
        assert first.exit_code == 0, first.output
        assert "1 of 2" in first.stdout
        assert yaml.safe_load(first.stdout[first.stdout.index("name: two-tier") :]) == yaml.safe_load(
            EXAMPLE.read_text()
        )

        listed = runner.invoke(app, ["plan", "list", "-o", "json"], env=env)
        assert listed.exit_code == 0, listed.output
        assert [(p["name"], p["latest_version"]) for p in json.loads(listed.stdout)["plans"]] == [("two-tier", 2)]
        table = runner.invoke(app, ["plan", "list"], env=env)
        assert table.exit_code == 0
        assert "two-tier" in table.stdout

        other_project = runner.invoke(app, ["plan", "list", "--project", "elsewhere", "-o", "json"], env=env)
        assert json.loads(other_project.stdout)["plans"] == []

    def test_refusals_from_the_planner_are_one_line_each(
        self, platform_factory: Callable[..., Platform], tmp_path: Path
    ) -> None:
        platform = platform_factory("planner")
        url = ["--planner-url", platform["planner"].base_url]
        invalid = runner.invoke(app, ["plan", "create", str(invalid_file(tmp_path)), *url])
        assert invalid.exit_code == 1
        for path in INVALID_PATHS:
            assert f"error: {path}: " in invalid.stderr
        unknown = runner.invoke(app, ["plan", "show", "nothing-here", *url])
        assert unknown.exit_code == 1
        assert unknown.stderr.strip() == (
            "error: no plan named 'nothing-here' in project 'default'; list plans with `dcostack plan list`"
        )
        missing_id = runner.invoke(app, ["plan", "show", "00000000-0000-0000-0000-000000000000", *url])
        assert missing_id.exit_code == 1
        assert "not found" in missing_id.stderr
        assert "(HTTP 404)" in missing_id.stderr

    def test_an_unreachable_planner_says_how_to_start_one(self) -> None:
        result = runner.invoke(app, ["plan", "list", "--planner-url", f"http://127.0.0.1:{free_port()}"])
        assert result.exit_code == 1
        assert len(result.stderr.splitlines()) == 1
        assert "planner not reachable" in result.stderr
        assert "dcostack up" in result.stderr
