"""The embedded broker heals: ``dcostack up``'s supervisor restarts a broker killed with kill -9, on the
same port, says so, and services reconnect to the new, empty broker by themselves."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rich.text import Text

from services.cli.infra import TansuBroker, port_open
from services.cli.supervisor import Supervisor
from tests.fixtures.platform import Platform, wait_for


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[TansuBroker]:
    """A broker of this test's own: the test kills it."""
    broker = TansuBroker(log_path=tmp_path / "kafka.log").start()
    yield broker
    broker.stop()


@pytest.fixture
def supervised(
    platform_factory: Callable[..., Platform], own_broker: TansuBroker
) -> Iterator[tuple[Platform, Supervisor, list[str]]]:
    """planner and compute on ``own_broker``, under the supervisor ``dcostack up`` uses; its lines as
    plain text."""
    platform = platform_factory("planner", "compute", bootstrap=own_broker.bootstrap)
    lines: list[str] = []
    supervisor = Supervisor(
        own_broker, platform.services, say=lambda m: lines.append(Text.from_markup(m).plain), interval=0.2
    ).start()
    supervisor.watch_services()
    yield platform, supervisor, lines
    supervisor.stop()


def probe(platform: Platform, count: int = 5) -> str:
    with platform.http("planner") as planner:
        r = planner.post("/v1/probes", json={"targets": ["compute"], "count": count})
        assert r.status_code == 202, r.text
        return str(r.json()["probe_id"])


def probe_complete(platform: Platform, probe_id: str) -> bool:
    with platform.http("planner") as planner:
        return bool(planner.get(f"/v1/probes/{probe_id}").json()["complete"])


def kill_broker_and_wait_for_restart(broker: TansuBroker, platform: Platform, lines: list[str]) -> None:
    old_pid = broker.pid
    broker.kill9()
    wait_for(lambda: [line for line in lines if "restarted on" in line], 30, "the supervisor's restart line")
    assert broker.pid != old_pid
    assert port_open("127.0.0.1", broker.port)
    assert broker.restarts == 1
    for name in platform.services:
        wait_for(platform[name].ready, 60, f"{name} ready again after the broker restart")


@pytest.mark.slow
class TestBrokerKilled:
    def test_supervisor_restarts_it_on_the_same_port_says_why_and_services_become_ready(
        self, supervised: tuple[Platform, Supervisor, list[str]], own_broker: TansuBroker
    ) -> None:
        platform, supervisor, lines = supervised
        before = probe(platform)
        wait_for(lambda: probe_complete(platform, before), 60, "a probe before the kill")
        kill_broker_and_wait_for_restart(own_broker, platform, lines)
        died = next(line for line in lines if "died" in line)
        assert died.startswith("kafka died (killed by SIGKILL)"), lines
        restarted = next(line for line in lines if "restarted on" in line)
        assert own_broker.bootstrap in restarted
        assert "came back empty" in restarted
        assert supervisor.status["kafka"] == "ready"
        # The services reconnected by themselves: none was restarted.
        assert [p.restarts for p in platform.services.values()] == [0, 0]

    def test_events_published_after_the_restart_are_consumed(
        self, supervised: tuple[Platform, Supervisor, list[str]], own_broker: TansuBroker
    ) -> None:
        platform, _, lines = supervised
        before = probe(platform)
        wait_for(lambda: probe_complete(platform, before), 60, "a probe before the kill")
        kill_broker_and_wait_for_restart(own_broker, platform, lines)
        after = probe(platform)
        wait_for(lambda: probe_complete(platform, after), 60, "the first probe sent after the broker restart")

    def test_a_killed_service_is_restarted_and_says_so(
        self, supervised: tuple[Platform, Supervisor, list[str]]
    ) -> None:
        platform, _, lines = supervised
        platform["compute"].kill9()
        wait_for(lambda: platform["compute"].restarts == 1, 30, "the supervisor to restart compute")
        assert any(line.startswith("compute died (killed by SIGKILL)") for line in lines), lines
        wait_for(platform["compute"].ready, 60, "compute ready again")
        after = probe(platform)
        wait_for(lambda: probe_complete(platform, after), 60, "a probe after compute's restart")
