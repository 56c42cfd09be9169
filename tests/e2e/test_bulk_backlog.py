"""Lanes under load, end to end on devcloud: a run's step commands and progress travel on the control lane,
so a backlog of 100,000 probe answers on the bulk lane does not stand in front of them.

Before lanes, probe answers and step progress shared the domain events topics and the planner's one
consumer: 642,000 queued answers made a one-server plan take 7 min 30 s instead of ~5 s."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from uuid import UUID

import pytest

from tests.e2e.test_apply import EXECUTORS, create_plan, failures, run_to_end, tagged, wait_run
from tests.fixtures.openstack import CloudUnderTest
from tests.fixtures.platform import Platform, wait_for
from tests.platform.test_crash_safety import scalar

pytestmark = [pytest.mark.devcloud, pytest.mark.slow]
log = logging.getLogger(__name__)

PROBES = 10
COUNT = 10_000  # commands per probe, the largest one probe may be (DCOSTACK_LIMIT_PROBE_MAX_COUNT)


def test_one_server_plan_started_after_100000_queued_probe_answers_succeeds_before_the_probes_complete(
    platform_factory: Callable[..., Platform], test_cloud: CloudUnderTest
) -> None:
    platform = platform_factory(
        *EXECUTORS,
        start=False,
        env={
            "DCOSTACK_CLOUD": test_cloud.member,
            "DCOSTACK_STEP_TIMEOUT_SECONDS": "300",
            "DCOSTACK_LIMIT_PROBE_MAX_COUNT": str(COUNT),
        },
    )
    dsn = platform.dsn
    # 1. The planner records the probes and publishes their 100,000 commands while compute is down.
    platform.start("planner", "network", "storage")
    with platform.http("planner") as planner:
        probes = []
        for _ in range(PROBES):
            r = planner.post("/v1/probes", json={"targets": ["compute"], "count": COUNT})
            assert r.status_code == 202, r.text
            probes.append(r.json()["probe_id"])
    wait_for(lambda: scalar(dsn, "SELECT count(*) FROM planner.outbox") == 0, 300, "the planner to publish")
    # 2. With the planner down, compute answers every command: 100,000 answers wait on the bulk lane.
    platform["planner"].stop()
    started = time.monotonic()
    platform.start("compute")
    wait_for(
        lambda: (
            scalar(dsn, "SELECT count(*) FROM compute.probe_answers") == PROBES * COUNT
            and scalar(dsn, "SELECT count(*) FROM compute.outbox") == 0
        ),
        900,
        "compute to answer and publish 100,000 probe commands",
        interval=1.0,
    )
    log.info("compute answered %d probe commands in %.0f s", PROBES * COUNT, time.monotonic() - started)
    assert scalar(dsn, "SELECT count(*) FROM planner.probe_replies") == 0  # all of them still queued
    # 3. The planner comes back to the backlog, and a one-server plan starts after it.
    platform.start("planner")
    document = {
        "name": f"behind-bulk-{uuid.uuid4().hex[:6]}",
        "networks": [{"name": "net", "cidr": "10.66.0.0/24"}],
        "instance_groups": [
            {"name": "vm", "flavor": "m1.tiny", "image": "devcloud-tiny", "count": 1, "networks": ["net"]}
        ],
    }
    conn = test_cloud.connect()
    with platform.http("planner") as api:
        api.headers["X-Project-Id"] = f"p{uuid.uuid4().hex[:8]}"
        plan_id = create_plan(api, document)
        try:
            r = api.post(f"/v1/plans/{plan_id}/runs", json={"action": "apply"})
            assert r.status_code == 202, r.text
            run = wait_run(api, r.json()["id"])
            # Read right after the run's success was observed: the probes have not all been answered yet.
            answered = sum(api.get(f"/v1/probes/{p}").json()["answered"].get("compute", 0) for p in probes)
            took = datetime.fromisoformat(run["finished_at"] or run["created_at"]) - datetime.fromisoformat(
                run["created_at"]
            )
            log.info(
                "run %s in %.1f s; probe answers consumed by then: %d", run["state"], took.total_seconds(), answered
            )
            assert run["state"] == "succeeded", failures(run)
            assert answered < PROBES * COUNT, "the probes completed before the run: nothing was shown"
            (server,) = tagged(conn, plan_id)["servers"]
            assert server.status == "ACTIVE"
            # Nothing on the bulk lane was lost: every answer arrives, each once.
            wait_for(
                lambda: all(api.get(f"/v1/probes/{p}").json()["complete"] for p in probes),
                900,
                "every probe answer to reach the planner",
                interval=2.0,
            )
            log.info("every probe answer consumed %.1f s after the run started", _since(run["created_at"]))
            rows = scalar(dsn, "SELECT count(*) FROM planner.probe_replies WHERE probe_id = ANY($1)", _ids(probes))
            assert rows == PROBES * COUNT
        finally:
            destroyed = run_to_end(api, plan_id, "destroy")
        assert destroyed["state"] == "succeeded", failures(destroyed)
    left = {kind: items for kind, items in tagged(conn, plan_id).items() if items}
    assert not left, left


def _ids(probes: list[str]) -> list[UUID]:
    return [UUID(p) for p in probes]


def _since(iso: str) -> float:
    return (datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds()
