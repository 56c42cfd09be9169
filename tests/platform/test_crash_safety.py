"""Crash safety with real processes: kill -9 mid-batch, and a broker outage while work keeps coming."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from uuid import UUID

import asyncpg
import pytest

from tests.fixtures.kafka import TcpOutage
from tests.fixtures.platform import Platform, wait_for


def query(dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


def scalar(dsn: str, sql: str, *args: object) -> int:
    return int(query(dsn, sql, *args)[0][0])


@pytest.mark.slow
class TestKillDashNine:
    def test_consumer_killed_mid_batch_of_1000_handles_every_event_exactly_once(
        self, platform_factory: Callable[..., Platform]
    ) -> None:
        platform = platform_factory("planner", "compute", start=False)
        # Small batches make the kill land between transactions as well as inside one (probes are bulk-lane).
        platform["compute"].env["DCOSTACK_BULK_CONSUMER_BATCH_SIZE"] = "25"
        platform.start()
        dsn = platform.dsn
        with platform.http("planner") as planner:
            probe_id = planner.post("/v1/probes", json={"targets": ["compute"], "count": 1000}).json()["probe_id"]
        handled = "SELECT count(*) FROM compute.probe_answers WHERE probe_id = $1"
        wait_for(lambda: scalar(dsn, handled, UUID(probe_id)) >= 50, 60, "compute to start handling", 0.005)
        platform["compute"].kill9()
        at_kill = scalar(dsn, handled, UUID(probe_id))
        assert at_kill < 1000, "the kill came after the whole batch; the test proved nothing"

        platform["compute"].start()
        platform["compute"].wait_ready()
        with platform.http("planner") as planner:
            wait_for(lambda: planner.get(f"/v1/probes/{probe_id}").json()["complete"], 90, "all 1000 answers")
        # Exactly once: 1000 rows, 1000 distinct commands, in compute and in the planner.
        rows = query(dsn, "SELECT count(*), count(DISTINCT seq) FROM compute.probe_answers")[0]
        assert (rows[0], rows[1]) == (1000, 1000)
        replies = query(dsn, "SELECT count(*), count(DISTINCT seq) FROM planner.probe_replies")[0]
        assert (replies[0], replies[1]) == (1000, 1000)
        # Nothing left undelivered.
        assert scalar(dsn, "SELECT count(*) FROM compute.outbox") == 0

    def test_relay_killed_mid_publish_delivers_everything_once(self, platform_factory: Callable[..., Platform]) -> None:
        platform = platform_factory("planner", "compute", start=False)
        platform["planner"].env["DCOSTACK_OUTBOX_BATCH_SIZE"] = "20"
        platform.start()
        dsn = platform.dsn
        with platform.http("planner") as planner:
            probe_id = planner.post("/v1/probes", json={"targets": ["compute"], "count": 1000}).json()["probe_id"]
        pending = "SELECT count(*) FROM planner.outbox"
        wait_for(lambda: scalar(dsn, pending) < 990, 60, "the relay to start publishing", 0.005)
        platform["planner"].kill9()
        assert scalar(dsn, pending) > 0, "the relay finished before the kill; the test proved nothing"
        platform["planner"].start()
        platform["planner"].wait_ready()
        with platform.http("planner") as planner:
            wait_for(lambda: planner.get(f"/v1/probes/{probe_id}").json()["complete"], 90, "all 1000 answers")
        rows = query(dsn, "SELECT count(*), count(DISTINCT seq) FROM compute.probe_answers")[0]
        assert (rows[0], rows[1]) == (1000, 1000)


@pytest.mark.slow
class TestBrokerOutage:
    def test_work_accepted_while_broker_is_down_is_delivered_in_order_when_it_returns(
        self, platform_factory: Callable[..., Platform], broker_with_outage: tuple[str, TcpOutage]
    ) -> None:
        bootstrap, outage = broker_with_outage
        platform = platform_factory("planner", "compute", bootstrap=bootstrap)
        dsn = platform.dsn
        outage.cut()
        probes: list[str] = []
        with platform.http("planner") as planner:
            for _ in range(10):
                r = planner.post("/v1/probes", json={"targets": ["compute"], "count": 20})
                assert r.status_code == 202, r.text  # the API keeps accepting work
                probes.append(r.json()["probe_id"])
            assert scalar(dsn, "SELECT count(*) FROM planner.outbox") == 200
            ready = wait_for(
                lambda: planner.get("/readyz").status_code == 503 and planner.get("/readyz").json(),
                30,
                "the planner to report Kafka unreachable",
            )
            assert ready["checks"]["kafka"].startswith("unreachable")
            time.sleep(2)  # the relay keeps failing meanwhile; nothing may be lost
            assert scalar(dsn, "SELECT count(*) FROM planner.outbox") == 200

            outage.restore()

            def all_complete() -> bool:
                return all(planner.get(f"/v1/probes/{p}").json()["complete"] for p in probes)

            wait_for(all_complete, 120, "every probe to complete after the broker came back")
        assert scalar(dsn, "SELECT count(*) FROM planner.outbox") == 0
        # In order per key: each probe's commands were handled in the order they were accepted.
        for probe_id in probes:
            rows = query(dsn, "SELECT seq FROM compute.probe_answers WHERE probe_id = $1 ORDER BY id", UUID(probe_id))
            assert [r["seq"] for r in rows] == list(range(20))
