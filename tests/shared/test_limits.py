"""Limits on expensive endpoints: the planner's app in process (httpx on create_app, a started Runtime
on the test PostgreSQL and broker); the reader's token is a real one from devcloud's Keystone."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from keystoneauth1 import session
from keystoneauth1.identity import v3

from services.planner.__main__ import SPEC
from services.planner.app import create_app
from services.planner.settings import PlannerSettings
from shared.auth import TokenValidator
from shared.config import AuthStrategy
from shared.limits import Limiter, RateLimited, Rule
from shared.runtime import Runtime
from tests.fixtures.openstack import CloudUnderTest

PASSWORD = "limits-test-password"
LIMITED = {
    ("post", "/v1/probes"),
    ("post", "/v1/plans/{plan_id}/preview"),
    ("post", "/v1/plans/{plan_id}/runs"),
    ("post", "/v1/runs/{run_id}/resume"),
}


@pytest.fixture
def planner(pg_dsn: str, kafka_bootstrap: str, topic_prefix: str) -> Callable[..., Any]:
    """Start the planner's runtime with the given settings and yield an httpx client on its app."""

    @asynccontextmanager
    async def start(**settings: Any) -> AsyncIterator[httpx.AsyncClient]:
        s = PlannerSettings(
            database_url=pg_dsn,
            database_schema="planner_" + uuid.uuid4().hex[:8],
            kafka_bootstrap_servers=kafka_bootstrap,
            kafka_topic_prefix=topic_prefix,
            **{"auth_strategy": AuthStrategy.NOAUTH, **settings},
        )
        runtime = Runtime(SPEC, s)
        await runtime.start()
        app = create_app(runtime)
        try:
            # Both lanes' consumers have joined their groups (so stopping them later closes them cleanly).
            async with asyncio.timeout(60):
                await asyncio.gather(*(c.assigned.wait() for c in runtime.consumers))
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://planner") as client:
                yield client
        finally:
            validator: TokenValidator | None = getattr(app.state, "token_validator", None)
            if validator is not None:
                await validator.close()
            await runtime.stop()

    return start


@pytest.fixture
def reader(test_cloud: CloudUnderTest) -> Iterator[tuple[str, str]]:
    """A fresh Keystone project with a user who has only the reader role there: (Keystone URL, token)."""
    admin = test_cloud.connect(admin=True)
    ident = admin.identity
    auth_url = admin.config.config["auth"]["auth_url"]
    suffix = uuid.uuid4().hex[:8]
    project = ident.create_project(name=f"limits-{suffix}", domain_id="default")
    user = ident.create_user(name=f"limits-reader-{suffix}", password=PASSWORD, domain_id="default")
    try:
        ident.assign_project_role_to_user(project, user, ident.find_role("reader"))
        auth = v3.Password(
            auth_url=auth_url, username=user.name, password=PASSWORD, user_domain_name="Default", project_id=project.id
        )
        yield auth_url, str(session.Session(auth=auth).get_token())
    finally:
        ident.delete_user(user, ignore_missing=True)
        ident.delete_project(project, ignore_missing=True)


class TestProbeCount:
    @pytest.mark.devcloud
    async def test_reader_asking_for_more_than_one_command_gets_403_naming_the_admin_role(
        self, planner: Callable[..., Any], reader: tuple[str, str]
    ) -> None:
        keystone_url, token = reader
        async with planner(auth_strategy=AuthStrategy.KEYSTONE, keystone_url=keystone_url) as api:
            api.headers["X-Auth-Token"] = token
            r = await api.post("/v1/probes", json={"targets": ["compute"], "count": 2})
            assert r.status_code == 403, r.text
            body = r.json()
            assert body["error"] == "Forbidden"
            assert body["field"] == "count"
            assert "needs the admin role" in body["detail"]
            assert "your roles: reader" in body["detail"]
            # One command per target stays open to readers.
            r = await api.post("/v1/probes", json={"targets": ["compute"], "count": 1})
            assert r.status_code == 202, r.text

    async def test_count_above_the_deployments_largest_probe_is_refused_naming_the_setting(
        self, planner: Callable[..., Any]
    ) -> None:
        async with planner(limit_probe_max_count=50) as api:
            r = await api.post("/v1/probes", json={"targets": ["compute"], "count": 51})
            assert r.status_code == 422, r.text
            assert r.json()["field"] == "count"
            assert "DCOSTACK_LIMIT_PROBE_MAX_COUNT" in r.json()["detail"]
            r = await api.post("/v1/probes", json={"targets": ["compute"], "count": 50})
            assert r.status_code == 202, r.text


class TestRate:
    async def test_burst_beyond_the_rate_gets_429_with_retry_after_and_other_projects_go_on(
        self, planner: Callable[..., Any]
    ) -> None:
        async with planner(limit_probe_rate="3/minute") as api:
            busy = {"X-Project-Id": f"p-{uuid.uuid4().hex[:8]}"}
            answers = [await api.post("/v1/probes", json={"targets": ["compute"]}, headers=busy) for _ in range(5)]
            assert [r.status_code for r in answers] == [202, 202, 202, 429, 429]
            refused = answers[3]
            assert 1 <= int(refused.headers["Retry-After"]) <= 60
            body = refused.json()
            assert body["error"] == "RateLimited"
            assert "reached the limit of 3 self-checks (POST /v1/probes) per minute" in body["detail"]
            assert "DCOSTACK_LIMIT_PROBE_RATE (now 3/minute)" in body["detail"]
            assert body["context"]["limit"] == "probe rate"
            # Nothing was recorded for the refused calls.
            other = {"X-Project-Id": f"p-{uuid.uuid4().hex[:8]}"}
            r = await api.post("/v1/probes", json={"targets": ["compute"]}, headers=other)
            assert r.status_code == 202, r.text

    async def test_run_starts_and_previews_are_limited_before_any_work(self, planner: Callable[..., Any]) -> None:
        async with planner(limit_run_rate="1/hour", limit_preview_rate="1/hour") as api:
            api.headers["X-Project-Id"] = f"p-{uuid.uuid4().hex[:8]}"
            plan = uuid.uuid4()
            for path, body in ((f"/v1/plans/{plan}/runs", {"action": "apply"}), (f"/v1/plans/{plan}/preview", {})):
                assert (await api.post(path, json=body)).status_code == 404  # counted: the limit is per call
                r = await api.post(path, json=body)
                assert r.status_code == 429, r.text
                assert int(r.headers["Retry-After"]) > 60
            r = await api.post(f"/v1/runs/{uuid.uuid4()}/resume")  # resume shares the run starts' limit
            assert r.status_code == 429, r.text
            assert "DCOSTACK_LIMIT_RUN_RATE (now 1/hour)" in r.json()["detail"]

    async def test_openapi_documents_429_with_retry_after_on_every_limited_endpoint(
        self, planner: Callable[..., Any]
    ) -> None:
        async with planner() as api:
            doc = (await api.get("/openapi.json")).json()
        documented = {
            (method, path)
            for path, ops in doc["paths"].items()
            for method, op in ops.items()
            if "429" in op.get("responses", {})
        }
        assert documented == LIMITED
        for method, path in LIMITED:
            assert "Retry-After" in doc["paths"][path][method]["responses"]["429"]["headers"]


class TestConcurrency:
    async def test_more_requests_at_once_than_allowed_are_refused_until_one_ends(self) -> None:
        limiter = Limiter(
            {"preview": Rule("1000/minute", 2), "probe": Rule("1000/minute", 1), "run": Rule("1/hour", 1)}
        )
        await limiter.enter("preview", "a")
        await limiter.enter("preview", "a")
        with pytest.raises(RateLimited) as caught:
            await limiter.enter("preview", "a")
        assert caught.value.status_code == 429
        assert caught.value.headers == {"Retry-After": "1"}
        assert "already has 2 previews" in caught.value.detail
        assert "DCOSTACK_LIMIT_PREVIEW_CONCURRENCY (now 2)" in caught.value.detail
        await limiter.enter("preview", "b")  # per project
        limiter.leave("preview", "a")
        await limiter.enter("preview", "a")

    async def test_a_call_refused_by_the_rate_holds_no_slot(self) -> None:
        limiter = Limiter({"preview": Rule("1/hour", 1), "probe": Rule("1/hour", 1), "run": Rule("1/hour", 1)})
        await limiter.enter("run", "a")
        limiter.leave("run", "a")
        with pytest.raises(RateLimited, match="DCOSTACK_LIMIT_RUN_RATE"):
            await limiter.enter("run", "a")
        assert limiter._running == {}
