"""Every service as a real process; the planner's probe crosses Kafka to each domain service and back."""

from __future__ import annotations

from collections.abc import Callable

from tests.fixtures.platform import Platform, wait_for


class TestRoundTrip:
    def test_probe_reaches_every_service_and_answers_come_back_through_outboxes(
        self, platform_factory: Callable[..., Platform]
    ) -> None:
        platform = platform_factory()
        with platform.http("planner") as planner:
            started = planner.post("/v1/probes", json={"count": 3})
            assert started.status_code == 202, started.text
            probe = started.json()
            assert probe["targets"] == ["compute", "network", "storage", "monitor", "metering", "hybrid"]
            probe_id = probe["probe_id"]

            def complete() -> dict[str, object] | None:
                body: dict[str, object] = planner.get(f"/v1/probes/{probe_id}").json()
                return body if body["complete"] else None

            done = wait_for(complete, 60, "every service to answer the probe")
        assert done["answered"] == {t: 3 for t in probe["targets"]}
        # Each domain service wrote its own state, visible through its own HTTP API.
        for name in probe["targets"]:
            with platform.http(name) as client:
                answers = client.get(f"/v1/{name}/probes/{probe_id}").json()["answers"]
            assert [a["seq"] for a in answers] == [0, 1, 2]
        # What happened is visible to Prometheus.
        with platform.http("compute") as compute:
            metrics = compute.get("/metrics").text
        assert (
            'dcostack_events_consumed_total{outcome="handled",service="compute",'
            f'topic="{platform.prefix}dcostack.compute.bulk.commands",type="io.dcostack.platform.probe.run.v1"}} 3.0'
        ) in metrics
        with platform.http("planner") as planner:
            metrics = planner.get("/metrics").text
        assert 'dcostack_events_published_total{service="planner",topic="dcostack.compute.bulk.commands"' in metrics
        assert (
            'dcostack_http_requests_total{method="POST",route="/v1/probes",service="planner",status="202"} 1.0'
            in metrics
        )

    def test_unknown_target_is_refused_with_the_field_and_the_choices(
        self, platform_factory: Callable[..., Platform]
    ) -> None:
        platform = platform_factory("planner")
        with platform.http("planner") as planner:
            r = planner.post("/v1/probes", json={"targets": ["compute", "dns"]})
            assert r.status_code == 422
            body = r.json()
            assert body["field"] == "targets"
            assert "dns" in body["detail"]
            assert "compute" in body["detail"]
            r = planner.post("/v1/probes", json={"count": 0})
            assert r.status_code == 422
            assert r.json()["errors"][0]["path"] == "body.count"

    def test_unbuilt_capabilities_answer_501_naming_what_is_missing(
        self, platform_factory: Callable[..., Platform]
    ) -> None:
        platform = platform_factory("monitor")
        with platform.http("monitor") as monitor:
            r = monitor.get("/v1/monitor/alarms")
        assert r.status_code == 501
        assert r.json()["error"] == "NotImplementedYet"
        assert "alarms is not implemented yet" in r.json()["detail"]
