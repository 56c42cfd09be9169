"""Domain services act in the cloud through the run's Keystone trust, as Heat does: real compute, network
and storage processes with ``DCOSTACK_AUTH_STRATEGY=keystone``, real Keystone trusts from the demo user to
devcloud's ``dcostack`` service user, and ApplyStepV1/DestroyStepV1 commands published on the bus as the
planner would. What they did is read back from OpenStack as admin. Nothing is mocked."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import openstack
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from shared.config import CloudExecutorSettings
from shared.events.envelope import decode, encode_headers, encode_value, kafka_headers, new_event_id
from shared.events.steps import ApplyStepV1, DestroyStepV1, StepProgressedV1
from shared.executor.credentials import StepCredentials
from shared.executor.marks import plan_tag
from shared.topics import commands_topic, events_topic
from tests.fixtures.openstack import Cleanup, CloudUnderTest
from tests.fixtures.platform import Platform

pytestmark = pytest.mark.devcloud

#: The roles a run delegates: those the demo user holds in its project (Keystone refuses any other).
DELEGATED_ROLES = [{"name": "member"}, {"name": "reader"}, {"name": "load-balancer_member"}]


class StepBus:
    """Sends step commands to a domain service's command topic and waits for its final answer."""

    def __init__(self, platform: Platform) -> None:
        self.bootstrap = platform.bootstrap
        self.prefix = platform.prefix

    def run(self, service: str, cmd: ApplyStepV1 | DestroyStepV1, deadline: float = 240) -> StepProgressedV1:
        self.send(service, cmd)
        return self.result(service, cmd, deadline)

    def send(self, service: str, cmd: ApplyStepV1 | DestroyStepV1) -> None:
        async def send() -> None:
            producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap)
            await producer.start()
            try:
                headers = encode_headers(cmd, source="/tests/trusts", event_id=new_event_id(), subject=cmd.step_key)
                await producer.send_and_wait(
                    self.prefix + commands_topic(service),
                    value=encode_value(cmd),
                    key=str(cmd.run_id).encode(),
                    headers=kafka_headers(headers),
                )
            finally:
                await producer.stop()

        asyncio.run(send())

    def result(self, service: str, cmd: ApplyStepV1 | DestroyStepV1, deadline: float) -> StepProgressedV1:
        async def wait() -> StepProgressedV1:
            consumer = AIOKafkaConsumer(
                self.prefix + events_topic(service), bootstrap_servers=self.bootstrap, auto_offset_reset="earliest"
            )
            await consumer.start()
            seen: list[str] = []
            try:
                end = time.monotonic() + deadline
                while time.monotonic() < end:
                    batch = await consumer.getmany(timeout_ms=500)
                    for records in batch.values():
                        for record in records:
                            data = decode(record.headers, record.value).data
                            if isinstance(data, StepProgressedV1) and data.dispatch_id == cmd.dispatch_id:
                                seen.append(f"{data.state}: {data.message}")
                                if data.state != "running":
                                    return data
            finally:
                await consumer.stop()
            pytest.fail(f"{service} did not finish {cmd.step_key} within {deadline:.0f}s; seen: {seen}")

        return asyncio.run(wait())


def command(
    kind: type[ApplyStepV1 | DestroyStepV1],
    plan_id: uuid.UUID,
    run_id: uuid.UUID,
    step_key: str,
    step_kind: str,
    trust_id: str | None,
    **params: Any,
) -> ApplyStepV1 | DestroyStepV1:
    return kind(
        dispatch_id=uuid.uuid4(),
        run_id=run_id,
        plan_id=plan_id,
        step_key=step_key,
        kind=step_kind,
        path="$.test",
        params=params,
        timeout_seconds=180,
        trust_id=trust_id,
    )


def keystone_env(cloud: CloudUnderTest) -> dict[str, str]:
    auth_url = openstack.config.OpenStackConfig().get_one(cloud=cloud.member).config["auth"]["auth_url"]
    return {
        "DCOSTACK_AUTH_STRATEGY": "keystone",
        "DCOSTACK_KEYSTONE_URL": auth_url,
        "DCOSTACK_SERVICE_CLOUD": f"{cloud.member}-dcostack",
        "DCOSTACK_CLOUD": cloud.member,
    }


def delegate(demo: Any, cloud: CloudUnderTest, cleanup: Cleanup) -> Any:
    """A trust from the demo user to DCOSTACK's service user on the demo project, as a run gets one."""
    trustee = openstack.connect(cloud=f"{cloud.member}-dcostack")
    trust = demo.identity.create_trust(
        trustor_user_id=demo.current_user_id,
        trustee_user_id=trustee.current_user_id,
        project_id=demo.current_project_id,
        roles=DELEGATED_ROLES,
        impersonation=True,
    )
    cleanup.add("trust", lambda: demo.identity.delete_trust(trust))
    return trust


def remove_tagged(admin: Any, plan_id: uuid.UUID) -> Callable[[], None]:
    """Deletes what a test's plan left in any project, should its destroy steps not have run."""

    def remove() -> None:
        tag = plan_tag(str(plan_id))
        for server in admin.compute.servers(all_projects=True, tags=tag):
            admin.compute.delete_server(server)
            admin.compute.wait_for_delete(server, wait=120)
        for network in admin.network.networks(tags=tag):
            admin.network.delete_network(network)
        for volume in admin.block_storage.volumes(all_projects=True, details=True):
            if (volume.metadata or {}).get("dcostack_plan") == str(plan_id):
                admin.block_storage.delete_volume(volume)
                admin.block_storage.wait_for_delete(volume, wait=120)

    return remove


SUBNET = {"network": "net", "cidr": "10.77.0.0/24"}
VOLUME = {"name": "data", "size_gb": 1}
SERVER = {"name": "web-0", "flavor": "m1.tiny", "image": "devcloud-tiny", "networks": ["net"], "metadata": {}}


def test_steps_act_in_the_trustors_project_as_the_trustor_and_destroy_through_the_same_trust(
    platform_factory: Callable[..., Platform], test_cloud: CloudUnderTest, cleanup: Cleanup
) -> None:
    demo, admin = test_cloud.connect(), test_cloud.connect(admin=True)
    platform = platform_factory("compute", "network", "storage", env=keystone_env(test_cloud))
    bus = StepBus(platform)
    trust = delegate(demo, test_cloud, cleanup)
    plan_id, run_id = uuid.uuid4(), uuid.uuid4()
    cleanup.add("plan resources", remove_tagged(admin, plan_id))

    net = bus.run("network", command(ApplyStepV1, plan_id, run_id, "network/net", "network", trust.id, name="net"))
    assert net.state == "succeeded", net.error
    subnet = bus.run("network", command(ApplyStepV1, plan_id, run_id, "subnet/net", "subnet", trust.id, **SUBNET))
    assert subnet.state == "succeeded", subnet.error
    server = bus.run("compute", command(ApplyStepV1, plan_id, run_id, "server/web-0", "server", trust.id, **SERVER))
    assert server.state == "succeeded", server.error
    volume = bus.run("storage", command(ApplyStepV1, plan_id, run_id, "volume/data", "volume", trust.id, **VOLUME))
    assert volume.state == "succeeded", volume.error

    tag = plan_tag(str(plan_id))
    networks = list(admin.network.networks(tags=tag))
    servers = list(admin.compute.servers(all_projects=True, tags=tag))
    assert [n.project_id for n in networks] == [demo.current_project_id]
    assert [s.project_id for s in servers] == [demo.current_project_id]
    # Impersonation: Nova records the user who started the run, not DCOSTACK's service user.
    assert [s.user_id for s in servers] == [demo.current_user_id]
    assert servers[0].status == "ACTIVE"
    volumes = [
        v
        for v in admin.block_storage.volumes(all_projects=True, details=True)
        if (v.metadata or {}).get("dcostack_plan") == str(plan_id)
    ]
    assert [(v.project_id, v.user_id) for v in volumes] == [(demo.current_project_id, demo.current_user_id)]

    gone = bus.run("storage", command(DestroyStepV1, plan_id, run_id, "volume/data", "volume", trust.id, **VOLUME))
    assert gone.state == "succeeded", gone.error

    gone = bus.run("compute", command(DestroyStepV1, plan_id, run_id, "server/web-0", "server", trust.id, **SERVER))
    assert gone.state == "succeeded", gone.error
    gone = bus.run("network", command(DestroyStepV1, plan_id, run_id, "subnet/net", "subnet", trust.id, **SUBNET))
    assert gone.state == "succeeded", gone.error
    gone = bus.run("network", command(DestroyStepV1, plan_id, run_id, "network/net", "network", trust.id, name="net"))
    assert gone.state == "succeeded", gone.error
    assert list(admin.compute.servers(all_projects=True, tags=tag)) == []
    assert list(admin.network.networks(tags=tag)) == []


def test_a_step_without_a_usable_trust_fails_at_once_saying_why(
    platform_factory: Callable[..., Platform], test_cloud: CloudUnderTest, cleanup: Cleanup
) -> None:
    demo, admin = test_cloud.connect(), test_cloud.connect(admin=True)
    env = keystone_env(test_cloud)
    platform = platform_factory("network", env=env)
    bus = StepBus(platform)
    plan_id, run_id = uuid.uuid4(), uuid.uuid4()
    cleanup.add("plan resources", remove_tagged(admin, plan_id))

    # No trust under Keystone: the service's own cloud entry is never used.
    failed = bus.run("network", command(ApplyStepV1, plan_id, run_id, "network/a", "network", None, name="a"))
    assert failed.state == "failed"
    assert failed.error is not None
    assert failed.error["retriable"] is False
    assert "no delegated credential (trust)" in failed.message
    assert "planner API with a Keystone token" in failed.error["hint"]

    # A deleted trust: Keystone refuses it, and the step fails without retrying.
    trust = delegate(demo, test_cloud, cleanup)
    demo.identity.delete_trust(trust)
    failed = bus.run("network", command(ApplyStepV1, plan_id, run_id, "network/b", "network", trust.id, name="b"))
    assert failed.state == "failed"
    assert failed.error is not None
    assert failed.error["retriable"] is False
    assert f"Keystone refused trust {trust.id}" in failed.message
    assert "resume the run to delegate again" in failed.error["hint"]
    assert failed.error["http_status"] == 401

    # A trust while the service user is not configured: the setting is named.
    storage = platform_factory("storage", env={**env, "DCOSTACK_SERVICE_CLOUD": ""})
    trust = delegate(demo, test_cloud, cleanup)
    failed = StepBus(storage).run(
        "storage", command(ApplyStepV1, plan_id, run_id, "volume/c", "volume", trust.id, name="c", size_gb=1)
    )
    assert failed.state == "failed"
    assert "DCOSTACK_SERVICE_CLOUD" in failed.message
    assert list(admin.network.networks(tags=plan_tag(str(plan_id)))) == []


def test_without_keystone_a_step_acts_with_the_services_own_cloud_entry(
    platform_factory: Callable[..., Platform], test_cloud: CloudUnderTest, cleanup: Cleanup
) -> None:
    """noauth (development, tests): commands carry no trust and the service acts as ``DCOSTACK_CLOUD``."""
    demo, admin = test_cloud.connect(), test_cloud.connect(admin=True)
    platform = platform_factory("network", env={"DCOSTACK_CLOUD": test_cloud.member})
    bus = StepBus(platform)
    plan_id, run_id = uuid.uuid4(), uuid.uuid4()
    cleanup.add("plan resources", remove_tagged(admin, plan_id))

    net = bus.run("network", command(ApplyStepV1, plan_id, run_id, "network/net", "network", None, name="net"))
    assert net.state == "succeeded", net.error
    networks = list(admin.network.networks(tags=plan_tag(str(plan_id))))
    assert [n.project_id for n in networks] == [demo.current_project_id]
    gone = bus.run("network", command(DestroyStepV1, plan_id, run_id, "network/net", "network", None, name="net"))
    assert gone.state == "succeeded", gone.error
    assert list(admin.network.networks(tags=plan_tag(str(plan_id)))) == []


def test_one_cloud_session_per_trust_scoped_by_the_trust_alone(
    test_cloud: CloudUnderTest, cleanup: Cleanup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The executors' credentials against the real Keystone: every step of a run shares its trust's session
    (one token); another trust gets another; the token names the trust's project and the trustor."""
    for name, value in keystone_env(test_cloud).items():
        monkeypatch.setenv(name, value)
    credentials = StepCredentials(CloudExecutorSettings(), size=2)
    demo = test_cloud.connect()
    one, two, three = (delegate(demo, test_cloud, cleanup) for _ in range(3))

    region = credentials.region(one.id)
    assert credentials.region(one.id) is region
    assert credentials.region(two.id) is not region
    access = region.get_session().auth.get_access(region.get_session())
    assert access.trust_id == one.id
    assert access.project_id == demo.current_project_id
    assert access.user_id == demo.current_user_id  # impersonation
    assert set(access.role_names) == {"member", "reader", "load-balancer_member"}
    credentials.region(three.id)  # beyond the cache's size: the least recently used trust (one) goes
    assert credentials.region(one.id) is not region
