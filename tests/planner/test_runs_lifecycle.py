"""A run's lifecycle in the real planner process, on real PostgreSQL and a real broker: scale by diff,
cancel, rollback, hold and resume.

Compute, network and storage are played by :class:`FakeDomains`, a consumer of their command topics that
answers every apply/destroy step command (V2, or V1) with StepProgressedV1 events on their event topics, as the test's
rule says (succeed, fail, hold until released, or succeed but lose the answer), and keeps which step keys
"exist" per plan. Like the real executors, it takes a command again under the same dispatch id as asking
for the latest progress: it does the step once and repeats its answer. It also
reads the planner's RunChangedV2 events. Nothing in the planner is mocked.
"""

from __future__ import annotations

import asyncio
import json
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from typer.testing import CliRunner

from services import planner
from services.cli import app
from services.planner.plans.compiler import compile_plan
from services.planner.plans.spec import validate_plan
from shared.db import SHARED_MIGRATIONS, discover, migrate
from shared.events.envelope import decode, encode_headers, encode_value, kafka_headers, new_event_id
from shared.events.steps import ApplyStepV1, ApplyStepV2, DestroyStepV1, DestroyStepV2, RunChangedV2, StepProgressedV1
from shared.topics import commands_topic, events_topic
from tests.fixtures.planner import planner_under_test
from tests.fixtures.platform import wait_for

DOMAINS = ("compute", "network", "storage")
runner = CliRunner()
Rule = Callable[[str, str], str]  # (action, step key) -> "succeed" | "fail" | "hold" | "lose"


@dataclass(frozen=True)
class Command:
    action: str
    key: str
    plan_id: str
    run_id: str
    dispatch_id: uuid.UUID
    service: str


def fake_id(key: str) -> str:
    """The id the fake cloud gives the resource of a step."""
    return "id-" + key.replace("/", "-")


class FakeDomains:
    """Compute, network and storage as seen on the bus, answering by per-plan rules."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.lock = threading.Lock()
        self.commands: list[Command] = []
        self.run_states: dict[str, list[str]] = {}
        self.exists: dict[str, set[str]] = {}
        self.rules: dict[str, Rule] = {}
        self.held: dict[str, Command] = {}
        #: per dispatch id, the answer given (succeed or fail); "lose" answers are given but never arrive
        self.answered: dict[uuid.UUID, str] = {}
        #: commands that came again under a dispatch id already seen (the planner asked again)
        self.repeated: list[Command] = []
        #: the command types received, per run (the planner sends V2 with typed params)
        self.command_types: dict[str, set[str]] = {}
        self._releases: queue.Queue[tuple[str, str]] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def start(self) -> FakeDomains:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)

    # --- what tests use ---
    def of(self, run_id: str, action: str | None = None) -> list[Command]:
        with self.lock:
            return [c for c in self.commands if c.run_id == run_id and (action is None or c.action == action)]

    def keys(self, plan_id: str) -> set[str]:
        with self.lock:
            return set(self.exists.get(plan_id, set()))

    def states(self, run_id: str) -> list[str]:
        """The states the planner's RunChangedV2 events gave the run, in order."""
        with self.lock:
            return list(self.run_states.get(run_id, []))

    def held_keys(self) -> set[str]:
        with self.lock:
            return {c.key for c in self.held.values()}

    def release(self, key: str, state: str = "succeed") -> None:
        self._releases.put((key, state))

    # --- the bus ---
    async def _main(self) -> None:
        topics = [self.prefix + commands_topic(d) for d in DOMAINS] + [self.prefix + events_topic("planner")]
        consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=self.bootstrap,
            group_id=f"{self.prefix}fake-domains",
            auto_offset_reset="earliest",
        )
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=1)
        await consumer.start()
        await producer.start()
        try:
            while not self._stop.is_set():
                batch = await consumer.getmany(timeout_ms=100)
                for records in batch.values():
                    for record in records:
                        await self._handle(producer, decode(record.headers, record.value).data)
                while True:
                    try:
                        key, state = self._releases.get_nowait()
                    except queue.Empty:
                        break
                    with self.lock:
                        found = [d for d, c in self.held.items() if c.key == key]
                        commands = [self.held.pop(d) for d in found]
                    for cmd in commands:
                        await self._answer(producer, cmd, state)
        finally:
            await consumer.stop()
            await producer.stop()

    async def _handle(self, producer: AIOKafkaProducer, data: Any) -> None:
        if isinstance(data, RunChangedV2):
            with self.lock:
                self.run_states.setdefault(str(data.run_id), []).append(data.state)
            return
        if not isinstance(data, ApplyStepV1 | DestroyStepV1 | ApplyStepV2 | DestroyStepV2):
            return
        action = "apply" if isinstance(data, ApplyStepV1 | ApplyStepV2) else "destroy"
        with self.lock:
            self.command_types.setdefault(str(data.run_id), set()).add(type(data).__name__)
        service = {"server": "compute", "server_group": "compute", "volume_attachment": "compute"}.get(data.kind)
        service = service or ("storage" if data.kind in ("volume", "object_container") else "network")
        cmd = Command(action, data.step_key, str(data.plan_id), str(data.run_id), data.dispatch_id, service)
        with self.lock:
            if cmd.dispatch_id in self.answered or str(cmd.dispatch_id) in self.held:
                self.repeated.append(cmd)
                again = self.answered.get(cmd.dispatch_id)  # None while held: still in progress
            else:
                self.commands.append(cmd)
                again = ""
            rule = self.rules.get(cmd.plan_id)
        if again is None:
            return
        if again:
            await self._answer(producer, cmd, again)  # done once; its latest progress, published again
            return
        decision = rule(action, cmd.key) if rule is not None else "succeed"
        if decision == "hold":
            with self.lock:
                self.held[str(cmd.dispatch_id)] = cmd
            return
        await self._answer(producer, cmd, decision)

    async def _answer(self, producer: AIOKafkaProducer, cmd: Command, decision: str) -> None:
        lost = decision == "lose"
        ok = decision in ("succeed", "lose")
        with self.lock:
            self.answered[cmd.dispatch_id] = "succeed" if ok else "fail"
            if ok:
                keys = self.exists.setdefault(cmd.plan_id, set())
                (keys.add if cmd.action == "apply" else keys.discard)(cmd.key)
        if lost:
            return  # done in the cloud, but the broker lost the progress event
        data = StepProgressedV1(
            dispatch_id=cmd.dispatch_id,
            run_id=uuid.UUID(cmd.run_id),
            step_key=cmd.key,
            service=cmd.service,
            state="succeeded" if ok else "failed",
            message=f"{cmd.action} done" if ok else f"{cmd.action} refused by the fake cloud",
            error=None if ok else {"message": "No valid host was found.", "hint": "pick a smaller flavor"},
            outputs={"id": fake_id(cmd.key)} if ok and cmd.action == "apply" else {},
            at=datetime.now(UTC),
        )
        headers = encode_headers(data, source="/tests/fake-domains", event_id=new_event_id(), subject=cmd.key)
        await producer.send_and_wait(
            self.prefix + events_topic(cmd.service),
            value=encode_value(data),
            key=cmd.run_id.encode(),
            headers=kafka_headers(headers),
        )


@pytest.fixture(scope="module")
def lifecycle(
    pg_server: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, FakeDomains, str]]:
    # a lost answer is asked for again after 1 s, looked for every 0.5 s; the step timeout stays 600 s
    reask = {"DCOSTACK_STEP_REASK_SECONDS": "1", "DCOSTACK_TIMEOUT_CHECK_SECONDS": "0.5"}
    with planner_under_test(pg_server, kafka_bootstrap, tmp_path_factory.mktemp("planner"), reask) as planner:
        fake = FakeDomains(kafka_bootstrap, planner.prefix).start()
        try:
            yield planner.url, fake, planner.dsn
        finally:
            fake.stop()


@pytest.fixture
def fake(lifecycle: tuple[str, FakeDomains, str]) -> FakeDomains:
    return lifecycle[1]


@pytest.fixture
def api(lifecycle: tuple[str, FakeDomains, str]) -> Iterator[httpx.Client]:
    headers = {"X-Project-Id": f"p-{uuid.uuid4().hex[:12]}"}
    with httpx.Client(base_url=lifecycle[0], timeout=30, headers=headers) as client:
        yield client


def web_plan(count: int, *, on_failure: str = "rollback", max_parallel: int = 10, flavor: str = "m1.tiny") -> Any:
    """A web group with a data volume and a floating IP each, behind a load balancer."""
    return {
        "name": "web",
        "on_failure": on_failure,
        "networks": [{"name": "net", "cidr": "10.60.0.0/24", "router": {"name": "r", "external_network": "public"}}],
        "instance_groups": [
            {
                "name": "web",
                "flavor": flavor,
                "image": "devcloud-tiny",
                "count": count,
                "networks": ["net"],
                "floating_ip": True,
                "volumes": [{"name": "data", "size_gb": 1}],
            }
        ],
        "load_balancers": [
            {
                "name": "lb",
                "network": "net",
                "listener": {"protocol": "HTTP", "port": 80},
                "pool": {"members": {"group": "web", "port": 80}},
            }
        ],
        "rollout": {"max_parallel": max_parallel},
    }


def servers_plan(count: int, *, on_failure: str = "rollback", max_parallel: int = 10, flavor: str = "m1.tiny") -> Any:
    return {
        "name": "servers",
        "on_failure": on_failure,
        "networks": [{"name": "net", "cidr": "10.61.0.0/24"}],
        "instance_groups": [
            {"name": "w", "flavor": flavor, "image": "devcloud-tiny", "count": count, "networks": ["net"]}
        ],
        "rollout": {"max_parallel": max_parallel},
    }


def graph_keys(document: Any) -> set[str]:
    return set(compile_plan(validate_plan(document)).steps)


def create(api: httpx.Client, document: Any) -> str:
    r = api.post("/v1/plans", json=document)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def update(api: httpx.Client, plan_id: str, document: Any) -> int:
    r = api.put(f"/v1/plans/{plan_id}", json=document)
    assert r.status_code == 200, r.text
    return int(r.json()["version"]["version"])


def start(api: httpx.Client, plan_id: str, action: str = "apply", version: int | None = None) -> str:
    r = api.post(f"/v1/plans/{plan_id}/runs", json={"action": action, "version": version})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def run_of(api: httpx.Client, run_id: str) -> dict[str, Any]:
    r = api.get(f"/v1/runs/{run_id}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def ended(api: httpx.Client, run_id: str, timeout: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        run = run_of(api, run_id)
        return run if run["state"] not in ("running", "cancelling", "rolling_back") else None

    result: dict[str, Any] = wait_for(check, timeout, f"run {run_id} to end", interval=0.2)
    return result


def by_key(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["key"]: s for s in run["steps"]}


class TestScaleByDiff:
    def test_scale_in_removes_exactly_the_surplus_newest_first_then_destroy_leaves_nothing(
        self, api: httpx.Client, fake: FakeDomains
    ) -> None:
        plan_id = create(api, web_plan(5))
        first = ended(api, start(api, plan_id))
        assert first["state"] == "succeeded", first["message"]
        assert fake.keys(plan_id) == graph_keys(web_plan(5))

        update(api, plan_id, web_plan(2, max_parallel=1))
        run_id = start(api, plan_id)
        run = ended(api, run_id)
        assert run["state"] == "succeeded", run["message"]
        removed = [s["key"] for s in run["steps"] if s["action"] == "destroy"]
        surplus = graph_keys(web_plan(5)) - graph_keys(web_plan(2))
        assert set(removed) == surplus
        # One at a time (max_parallel 1), in the order dispatched: what hangs on a server first, newest first.
        assert [c.key for c in fake.of(run_id, "destroy")] == [
            "floating-ip/web-4", "member/lb/web-4", "volume-attachment/web-4/data",
            "floating-ip/web-3", "member/lb/web-3", "volume-attachment/web-3/data",
            "floating-ip/web-2", "member/lb/web-2", "volume-attachment/web-2/data",
            "server/web-4", "volume/web-4/data",
            "server/web-3", "volume/web-3/data",
            "server/web-2", "volume/web-2/data",
        ]  # fmt: skip
        assert fake.keys(plan_id) == graph_keys(web_plan(2))
        assert {s["state"] for s in run["steps"]} == {"succeeded"}
        assert "15 removed" in run["message"]
        assert fake.command_types[run_id] == {"ApplyStepV2", "DestroyStepV2"}, "typed V2 commands only"

        # Scaling out again only adds, and a re-apply of the same version changes nothing.
        update(api, plan_id, web_plan(3))
        out = ended(api, start(api, plan_id))
        assert out["state"] == "succeeded"
        assert not [s for s in out["steps"] if s["action"] == "destroy"]
        assert fake.keys(plan_id) == graph_keys(web_plan(3))

        destroyed = ended(api, start(api, plan_id, "destroy", version=1))  # the v1 graph: 5 servers' keys
        assert destroyed["state"] == "succeeded", destroyed["message"]
        assert fake.keys(plan_id) == set()


class TestCancel:
    def test_cancel_stops_dispatching_in_flight_steps_finish_and_resume_completes_without_redoing(
        self, api: httpx.Client, fake: FakeDomains
    ) -> None:
        plan_id = create(api, servers_plan(12, max_parallel=3))
        resumed = threading.Event()
        fake.rules[plan_id] = lambda action, key: (
            "hold" if key.startswith("server/") and not resumed.is_set() else ("succeed")
        )
        run_id = start(api, plan_id)
        wait_for(lambda: len(fake.held_keys()) == 3, 30, "three servers in flight")
        before = len(fake.of(run_id))

        r = api.post(f"/v1/runs/{run_id}/cancel")
        assert r.status_code == 202, r.text
        assert r.json()["state"] == "cancelling"
        assert api.post(f"/v1/runs/{run_id}/cancel").status_code == 202  # asked twice: still cancelling
        busy = api.post(f"/v1/plans/{plan_id}/runs", json={"action": "apply"})
        assert busy.status_code == 409
        assert "cancelling" in busy.json()["detail"]
        for key in sorted(fake.held_keys()):
            fake.release(key)
        run = ended(api, run_id)
        assert run["state"] == "cancelled", run["message"]
        assert len(fake.of(run_id)) == before, "something was dispatched after the cancel"
        states = by_key(run)
        assert sum(1 for s in run["steps"] if s["state"] == "succeeded") == 2 + 3
        cancelled = [s for s in run["steps"] if s["state"] == "cancelled"]
        assert len(cancelled) == 9
        assert all(s["message"] == "cancelled before it started" for s in cancelled)
        assert states["network/net"]["state"] == "succeeded"
        wait_for(lambda: "cancelled" in fake.states(run_id), 10, "the run's last RunChangedV2")
        assert fake.states(run_id) == ["running", "cancelling", "cancelled"]

        again = api.post(f"/v1/runs/{run_id}/cancel")
        assert again.status_code == 409
        assert "already ended cancelled" in again.json()["detail"]

        resumed.set()
        r = api.post(f"/v1/runs/{run_id}/resume")
        assert r.status_code == 202, r.text
        assert "5 succeeded step(s) kept, 9 to do" in r.json()["message"]
        run = ended(api, run_id)
        assert run["state"] == "succeeded", run["message"]
        assert run["resumed"] == 1
        applied = [c.key for c in fake.of(run_id, "apply")]
        assert sorted(applied) == sorted(graph_keys(servers_plan(12))), "a step was redone or left out"
        assert fake.keys(plan_id) == graph_keys(servers_plan(12))


class TestRollback:
    def test_a_failure_rolls_back_only_what_this_run_created_in_reverse_order(
        self, api: httpx.Client, fake: FakeDomains
    ) -> None:
        plan_id = create(api, web_plan(1))
        assert ended(api, start(api, plan_id))["state"] == "succeeded"
        before = fake.keys(plan_id)

        update(api, plan_id, web_plan(3))
        fake.rules[plan_id] = lambda action, key: "fail" if (action, key) == ("apply", "server/web-2") else "succeed"
        run_id = start(api, plan_id)
        run = ended(api, run_id)
        assert run["state"] == "rolled_back", run["message"]
        assert "server/web-2" in run["message"]
        wait_for(lambda: "rolled_back" in fake.states(run_id), 10, "the run's last RunChangedV2")
        assert fake.states(run_id) == ["running", "rolling_back", "rolled_back"]

        created = {c.key for c in fake.of(run_id, "apply")} - before  # what this run made (web-2 half-made)
        undone = [c.key for c in fake.of(run_id, "destroy")]
        assert set(undone) == created
        assert "server/web-2" in undone
        assert fake.keys(plan_id) == before, "something of this run is left, or something older was removed"
        graph = compile_plan(validate_plan(web_plan(3)))
        for key in undone:  # a resource is removed only after everything that depended on it
            for dep in graph.steps[key].after & set(undone):
                assert undone.index(key) < undone.index(dep), (key, dep)
        steps = by_key(run)
        assert {steps[k]["state"] for k in undone} == {"rolled_back"}
        assert all(steps[k]["rollback"] and steps[k]["action"] == "destroy" for k in undone)
        assert steps["server/web-2"]["error"]["message"] == "No valid host was found."  # the cause stays visible
        assert not [s for s in run["steps"] if s["state"] in ("pending", "dispatched", "running")]

        # The ledger forgot the rolled back keys: a new apply makes them again.
        fake.rules.pop(plan_id)
        again = ended(api, start(api, plan_id))
        assert again["state"] == "succeeded"
        assert fake.keys(plan_id) == graph_keys(web_plan(3))

    def test_what_cannot_be_undone_is_marked_error_and_named_and_nothing_stays_pending(
        self, api: httpx.Client, fake: FakeDomains
    ) -> None:
        plan_id = create(api, servers_plan(2))
        fake.rules[plan_id] = lambda action, key: (
            "fail"
            if key in ("server/w-1", "server/w-0") and (action == "destroy" or key == "server/w-1")
            else "succeed"
        )
        run = ended(api, start(api, plan_id))
        assert run["state"] == "failed", run["message"]
        steps = by_key(run)
        assert steps["server/w-0"]["state"] == "error"
        assert steps["server/w-1"]["state"] == "error"
        assert steps["subnet/net"]["state"] == "error"
        assert "server/w-0 could not be removed first" in steps["subnet/net"]["message"] or (
            "server/w-1 could not be removed first" in steps["subnet/net"]["message"]
        )
        assert steps["network/net"]["state"] == "error"
        for key in ("network/net", "server/w-0", "server/w-1", "subnet/net"):
            assert key in run["message"]
        assert "rollback incomplete" in run["message"]
        assert {s["state"] for s in run["steps"]} == {"error"}


class TestDeadlines:
    def test_a_step_past_its_deadline_fails_and_is_rolled_back_and_its_late_answer_is_ignored(
        self, lifecycle: tuple[str, FakeDomains, str], api: httpx.Client, fake: FakeDomains
    ) -> None:
        plan_id = create(api, servers_plan(1))
        fake.rules[plan_id] = lambda action, key: "hold" if (action, key) == ("apply", "server/w-0") else "succeed"
        run_id = start(api, plan_id)
        wait_for(lambda: fake.held_keys() == {"server/w-0"}, 30, "the server in flight")

        async def overdue() -> None:
            conn = await asyncpg.connect(lifecycle[2])
            try:
                await conn.execute(
                    "UPDATE planner.run_steps SET deadline = now() - interval '1 minute' "
                    "WHERE run_id = $1 AND key = $2",
                    uuid.UUID(run_id),
                    "server/w-0",
                )
            finally:
                await conn.close()

        asyncio.run(overdue())
        run = ended(api, run_id, timeout=30)  # the planner looks for overdue steps every 5 s
        assert run["state"] == "rolled_back", run["message"]
        steps = by_key(run)
        assert "before the deadline" in steps["server/w-0"]["error"]["message"]
        assert [c.key for c in fake.of(run_id, "destroy")] == ["server/w-0", "subnet/net", "network/net"]
        fake.release("server/w-0")  # the service answers at last: too late, and changes nothing
        time.sleep(1)
        assert run_of(api, run_id)["state"] == "rolled_back"
        assert by_key(run_of(api, run_id))["server/w-0"]["state"] == "rolled_back"


class TestReask:
    def test_a_step_whose_progress_is_lost_is_asked_again_and_the_run_succeeds_before_its_timeout(
        self, lifecycle: tuple[str, FakeDomains, str], api: httpx.Client, fake: FakeDomains
    ) -> None:
        plan_id = create(api, servers_plan(2))
        fake.rules[plan_id] = lambda action, key: "lose" if key == "server/w-1" else "succeed"
        run_id = start(api, plan_id)
        # The step timeout is 600 s: a run that ends within this wait did not wait it out.
        run = ended(api, run_id, timeout=60)
        assert run["state"] == "succeeded", run["message"]
        assert fake.keys(plan_id) == graph_keys(servers_plan(2))
        # asked once and done once; asked again under the same dispatch id
        first = [c for c in fake.of(run_id) if c.key == "server/w-1"]
        assert len(first) == 1
        again = [c for c in fake.repeated if c.run_id == run_id and c.key == "server/w-1"]
        assert again
        assert {c.dispatch_id for c in again} == {first[0].dispatch_id}

        async def reasks() -> dict[str, int]:
            conn = await asyncpg.connect(lifecycle[2])
            try:
                rows = await conn.fetch(
                    "SELECT key, reasks FROM planner.run_steps WHERE run_id = $1", uuid.UUID(run_id)
                )
                return {r["key"]: r["reasks"] for r in rows}
            finally:
                await conn.close()

        assert asyncio.run(reasks())["server/w-1"] >= 1


class TestHoldAndResume:
    def test_hold_keeps_everything_and_resume_with_the_fixed_version_redoes_only_what_failed(
        self, api: httpx.Client, fake: FakeDomains
    ) -> None:
        plan_id = create(api, servers_plan(3, on_failure="hold", flavor="huge"))
        fake.rules[plan_id] = lambda action, key: "fail" if key == "server/w-2" else "succeed"
        run_id = start(api, plan_id)
        run = ended(api, run_id)
        assert run["state"] == "failed"
        assert run["on_failure"] == "hold"
        assert run["message"].startswith("held: 1 step(s) failed: server/w-2")
        assert f"dcostack run resume {run_id}" in run["message"]
        assert not fake.of(run_id, "destroy")
        assert fake.keys(plan_id) == {"network/net", "subnet/net", "server/w-0", "server/w-1"}

        first_applies = len(fake.of(run_id, "apply"))
        fixed = update(api, plan_id, servers_plan(3, on_failure="hold", flavor="m1.tiny"))
        fake.rules.pop(plan_id)
        r = api.post(f"/v1/runs/{run_id}/resume", json={"version": fixed})
        assert r.status_code == 202, r.text
        assert r.json()["plan_version"] == fixed
        run = ended(api, run_id)
        assert run["state"] == "succeeded", run["message"]
        again = [c.key for c in fake.of(run_id, "apply")][first_applies:]
        # The flavor changed, so every server is redone (an idempotent look-up for those that exist);
        # the network and subnet did not change and are not.
        assert sorted(again) == ["server/w-0", "server/w-1", "server/w-2"]
        assert fake.keys(plan_id) == graph_keys(servers_plan(3))

    def test_resume_is_refused_unless_the_run_is_the_plans_latest_and_failed_or_cancelled(
        self, api: httpx.Client, fake: FakeDomains
    ) -> None:
        plan_id = create(api, servers_plan(1, on_failure="hold"))
        fake.rules[plan_id] = lambda action, key: "fail" if key == "server/w-0" else "succeed"
        held = ended(api, start(api, plan_id))
        assert held["state"] == "failed"
        assert api.post(f"/v1/runs/{uuid.uuid4()}/resume").status_code == 404
        assert api.post(f"/v1/runs/{uuid.uuid4()}/cancel").status_code == 404
        assert api.post(f"/v1/runs/{held['id']}/resume", json={"version": 0}).status_code == 422
        assert api.post(f"/v1/runs/{held['id']}/resume", json={"version": 9}).status_code == 404

        fake.rules[plan_id] = lambda action, key: "hold"
        busy = start(api, plan_id, "destroy")
        r = api.post(f"/v1/runs/{busy}/resume")
        assert r.status_code == 409
        assert "in progress" in r.json()["detail"]
        r = api.post(f"/v1/runs/{held['id']}/resume")
        assert r.status_code == 409
        assert f"run {busy} of this plan is still running" in r.json()["detail"]
        assert api.post(f"/v1/runs/{busy}/cancel").status_code == 202
        wait_for(lambda: fake.held_keys(), 30, "the destroy's first step in flight")
        for key in sorted(fake.held_keys()):
            fake.release(key)
        assert ended(api, busy)["state"] == "cancelled"

        r = api.post(f"/v1/runs/{held['id']}/resume")
        assert r.status_code == 409
        assert f"run {busy} of this plan started after" in r.json()["detail"]
        fake.rules.pop(plan_id)
        assert api.post(f"/v1/runs/{busy}/resume").status_code == 202
        assert ended(api, busy)["state"] == "succeeded"
        r = api.post(f"/v1/runs/{busy}/resume")
        assert r.status_code == 409
        assert "ended succeeded" in r.json()["detail"]
        assert fake.keys(plan_id) == set()


class TestCommandLine:
    def test_scale_cancel_and_resume_with_dcostack(
        self, lifecycle: tuple[str, FakeDomains, str], api: httpx.Client, fake: FakeDomains
    ) -> None:
        common = ["--planner-url", lifecycle[0], "--project", str(api.headers["X-Project-Id"])]
        plan_id = create(api, servers_plan(2))
        assert ended(api, start(api, plan_id))["state"] == "succeeded"

        result = runner.invoke(app, ["plan", "scale", "servers", "w", "1", "--watch", *common, "-o", "json"])
        assert result.exit_code == 0, result.output
        run = json.loads(result.stdout)
        assert (run["state"], run["plan_version"]) == ("succeeded", 2)
        assert [s["key"] for s in run["steps"] if s["action"] == "destroy"] == ["server/w-1"]
        assert fake.keys(plan_id) == graph_keys(servers_plan(1))

        result = runner.invoke(app, ["plan", "scale", "servers", "db", "3", *common])
        assert result.exit_code == 1
        assert "plan 'servers' has no instance group 'db'; its groups: w" in result.stderr

        fake.rules[plan_id] = lambda action, key: "hold" if key.startswith("server/") else "succeed"
        result = runner.invoke(app, ["plan", "scale", "servers", "w", "3", *common])
        assert result.exit_code == 0, result.output
        assert "w count 1 → 3" in result.stdout
        run_id = api.get(f"/v1/plans/{plan_id}/runs").json()["runs"][0]["id"]
        wait_for(lambda: fake.held_keys(), 30, "a server in flight")
        result = runner.invoke(app, ["run", "cancel", run_id, "--no-wait", *common])
        assert result.exit_code == 0, result.output
        assert f"run {run_id} cancelling" in result.stdout
        for key in sorted(fake.held_keys()):
            fake.release(key)
        result = runner.invoke(app, ["run", "watch", run_id, *common, "-o", "json"])
        assert result.exit_code == 1  # it did not succeed
        assert json.loads(result.stdout)["state"] == "cancelled"
        result = runner.invoke(app, ["run", "cancel", run_id, *common])
        assert result.exit_code == 1
        assert "already ended cancelled" in result.stderr

        fake.rules.pop(plan_id)
        result = runner.invoke(app, ["run", "resume", run_id, *common])
        assert result.exit_code == 0, result.output
        assert "resumed with plan version 3" in result.stdout
        assert run_of(api, run_id)["state"] == "succeeded"
        assert fake.keys(plan_id) == graph_keys(servers_plan(3))


class TestRunTable:
    def test_each_step_shows_its_resource_id_and_how_long_it_took_in_the_api_and_in_run_show(
        self, lifecycle: tuple[str, FakeDomains, str], api: httpx.Client
    ) -> None:
        plan_id = create(api, servers_plan(1))
        run_id = start(api, plan_id)
        run = ended(api, run_id)
        assert run["state"] == "succeeded", run["message"]
        for step in run["steps"]:
            assert step["resource_id"] == fake_id(step["key"])
            assert step["took_seconds"] is not None
            assert step["took_seconds"] >= 0
            assert isinstance(step["reasks"], int)

        common = ["--planner-url", lifecycle[0], "--project", str(api.headers["X-Project-Id"])]
        result = runner.invoke(app, ["run", "show", run_id, *common], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        rows = [[cell.strip() for cell in re.split("[│┃]", line)] for line in result.stdout.splitlines()]
        assert ["step", "state", "resource", "took", "what the cloud says"] in rows
        for step in run["steps"]:
            row = next(r for r in rows if r[0] == step["key"])
            assert row[2] == fake_id(step["key"])
            assert row[3].endswith("s")  # e.g. 0.4s


class TestLedgerMigration:
    async def test_the_ledger_is_filled_from_the_runs_before_it(self, pg_conn: asyncpg.Connection) -> None:
        schema = f"mig_{uuid.uuid4().hex[:8]}"
        every = discover(SHARED_MIGRATIONS, Path(planner.__file__).parent / "migrations")
        before = [m for m in every if not m.version.startswith("service/0004")]
        assert len(before) == len(every) - 1
        await migrate(pg_conn, schema, before)
        try:
            await pg_conn.execute(f"SET search_path TO {schema}")
            plan = uuid.uuid4()
            await pg_conn.execute(
                "INSERT INTO plans (id, project_id, name, latest_version) VALUES ($1, 'p', 'n', 1)", plan
            )
            steps = {"apply": ["network/a", "network/b"], "destroy": ["network/b"], "apply-again": ["network/c"]}
            ids = {}
            for n, (what, keys) in enumerate(steps.items()):
                ids[what] = uuid.uuid4()
                action = what.removesuffix("-again")
                state = "failed" if what == "apply-again" else "succeeded"
                await pg_conn.execute(
                    """INSERT INTO runs (id, plan_id, plan_version, project_id, action, state, max_parallel,
                                         created_at)
                       VALUES ($1, $2, 1, 'p', $3, $4, 1, now() + make_interval(secs => $5))""",
                    ids[what],
                    plan,
                    action,
                    state,
                    float(n),
                )
                for key in keys:
                    await pg_conn.execute(
                        """INSERT INTO run_steps (run_id, key, seq, service, kind, path, params, after_keys, state,
                                                  finished_at)
                           VALUES ($1, $2, 0, 'network', 'network', '$.networks[0]', '{}', '{}', $3,
                                   now() + make_interval(secs => $4))""",
                        ids[what],
                        key,
                        state,
                        float(n),
                    )
            await migrate(pg_conn, schema, every)
            ledger = await pg_conn.fetch("SELECT key, run_id FROM applied_steps WHERE plan_id = $1", plan)
            assert [(r["key"], r["run_id"]) for r in ledger] == [("network/a", ids["apply"])]
            actions = await pg_conn.fetch("SELECT run_id, action FROM run_steps")
            assert {(r["run_id"], r["action"]) for r in actions} == {
                (ids["apply"], "apply"),
                (ids["destroy"], "destroy"),
                (ids["apply-again"], "apply"),
            }
            assert await pg_conn.fetchval("SELECT on_failure FROM runs LIMIT 1") == "hold"
        finally:
            await pg_conn.execute("RESET search_path")
            await pg_conn.execute(f"DROP SCHEMA {schema} CASCADE")
