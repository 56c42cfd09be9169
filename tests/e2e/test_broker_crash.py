"""Must be shown (issue 10): kill -9 of the broker during a 10-server apply under ``dcostack up``'s
supervisor; the run succeeds with exactly 10 servers, read in OpenStack (devcloud)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.cli.infra import free_port
from shared.executor.marks import plan_tag
from tests.fixtures.openstack import CloudUnderTest
from tests.fixtures.platform import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.devcloud]

SERVERS = 10


@dataclass
class Up:
    """``dcostack up`` as the user runs it, its live output collected line by line."""

    proc: subprocess.Popen[str]
    planner_url: str
    lines: list[str] = field(default_factory=list)

    def output(self) -> str:
        return "\n".join(self.lines)

    def broker_pid(self) -> int:
        found = re.search(r"started Tansu on \S+ \(pid (\d+)", self.output())
        assert found, self.output()[-3000:]
        return int(found.group(1))


@pytest.fixture
def up(tmp_path: Path, fresh_database: str, test_cloud: CloudUnderTest) -> Iterator[Up]:
    base = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCOSTACK_")}
    env |= {
        "DCOSTACK_DATABASE_URL": fresh_database,
        "DCOSTACK_CLOUD": test_cloud.member,
        "DCOSTACK_AUTH_STRATEGY": "noauth",
        "DCOSTACK_LOG_FORMAT": "json",
        # Services notice the empty broker's missing topics within seconds.
        "DCOSTACK_TOPIC_CHECK_SECONDS": "2",
        # Long enough that only the re-ask, not a step timeout, can rescue a lost event.
        "DCOSTACK_STEP_TIMEOUT_SECONDS": "900",
        "DCOSTACK_STEP_REASK_SECONDS": "15",
        "COLUMNS": "400",  # one output line per message
    }
    cmd = [sys.executable, "-m", "services", "up", "--state-dir", str(tmp_path), "--kafka-port", str(free_port())]
    proc = subprocess.Popen(
        [*cmd, "--base-port", str(base)], env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    running = Up(proc, f"http://127.0.0.1:{base}")

    def collect() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            running.lines.append(line.rstrip())

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    try:
        wait_for(
            lambda: "press Ctrl-C to stop" in running.output() or proc.poll() is not None,
            240,
            "`dcostack up` to start everything and pass its self-check",
        )
        assert proc.poll() is None, running.output()[-3000:]
        yield running
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(5)
        if proc.stderr is not None:
            proc.stderr.close()
    assert "stopped kafka" in running.output(), running.output()[-3000:]


def wait_run(api: httpx.Client, run_id: str, deadline: float) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        run: dict[str, Any] = api.get(f"/v1/runs/{run_id}").json()
        return run if run["state"] not in ("running", "cancelling", "rolling_back") else None

    result: dict[str, Any] = wait_for(ended, deadline, f"run {run_id} to end", interval=1.0)
    return result


def test_kill_9_of_the_broker_mid_apply_still_gives_exactly_10_servers(up: Up, test_cloud: CloudUnderTest) -> None:
    conn = test_cloud.connect()
    document = {
        "name": f"broker-crash-{uuid.uuid4().hex[:6]}",
        "networks": [{"name": "net", "cidr": "10.89.0.0/24"}],
        "instance_groups": [
            {"name": "w", "flavor": "m1.tiny", "image": "devcloud-tiny", "count": SERVERS, "networks": ["net"]}
        ],
        "rollout": {"max_parallel": 4, "batch_size": SERVERS},
    }
    with httpx.Client(base_url=up.planner_url, timeout=30) as api:
        api.headers["X-Project-Id"] = f"p{uuid.uuid4().hex[:8]}"
        r = api.post("/v1/plans", json=document)
        assert r.status_code == 201, r.text
        plan_id = r.json()["id"]
        r = api.post(f"/v1/plans/{plan_id}/runs", json={"action": "apply"})
        assert r.status_code == 202, r.text
        run_id = r.json()["id"]

        def servers_seen() -> int:
            return len(list(conn.compute.servers(tags=plan_tag(plan_id))))

        # Mid-apply: some servers exist, others are still to be asked for.
        wait_for(lambda: servers_seen() >= 2, 300, "the first servers to be created", interval=0.5)
        os.kill(up.broker_pid(), signal.SIGKILL)
        wait_for(lambda: "restarted on" in up.output(), 60, "the supervisor to restart the broker")
        assert "kafka died (killed by SIGKILL)" in up.output()

        run = wait_run(api, run_id, 900)
        assert run["state"] == "succeeded", [f"{s['key']}: {s['error']}" for s in run["steps"] if s["error"]]
        servers = list(conn.compute.servers(tags=plan_tag(plan_id)))
        names = sorted(s.name for s in servers)
        assert len(servers) == SERVERS, names
        assert len(set(names)) == SERVERS
        assert {s.status for s in servers} == {"ACTIVE"}

        r = api.post(f"/v1/plans/{plan_id}/runs", json={"action": "destroy"})
        assert r.status_code == 202, r.text
        destroyed = wait_run(api, r.json()["id"], 900)
        assert destroyed["state"] == "succeeded", destroyed["counts"]
    assert not list(conn.compute.servers(tags=plan_tag(plan_id)))
