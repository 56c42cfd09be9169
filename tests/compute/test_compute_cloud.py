"""ComputeCloud against devcloud: every result is checked through openstacksdk directly, by the marks."""

from __future__ import annotations

import base64
import functools
import time
import uuid
from collections.abc import Callable
from typing import Any

import keystoneauth1.exceptions as ksa
import openstack
import pytest

from services.compute.cloud import OpenStackComputeCloud, translate
from shared.executor.errors import CloudError
from shared.executor.marks import Owner, StepWork, plan_tag, step_tag
from shared.executor.models import Server
from tests.fixtures.cloud_helpers import delete_server, http_error
from tests.fixtures.openstack import Cleanup, CloudUnderTest, Progress

pytestmark = pytest.mark.devcloud


def _work(plan_id: str, kind: str, key: str, path: str = "$.instance_groups[0]", **params: Any) -> StepWork:
    return StepWork(owner=Owner(plan_id, str(uuid.uuid4()), key), kind=kind, path=path, params=params)


def _server_work(plan_id: str, name: str, **overrides: Any) -> StepWork:
    params: dict[str, Any] = {
        "name": name,
        "group": name.rsplit("-", 1)[0],
        "index": 0,
        "flavor": "m1.tiny",
        "image": "devcloud-tiny",
        "networks": ["net"],
        "security_groups": ["web"],
        "key_pair": None,
        "server_group": None,
        "user_data": None,
        "metadata": {},
    }
    params.update(overrides)
    return _work(plan_id, "server", f"server/{name}", **params)


def _tagged(plan_id: str, key: str) -> str:
    return ",".join([plan_tag(plan_id), step_tag(key)])


class PlanNetwork:
    """A network and security group made directly with the marks the network service would set."""

    def __init__(self, conn: Any, plan_id: str, cleanup: Cleanup) -> None:
        prefix = f"dcs-{plan_id[:8]}"
        self.network = conn.network.create_network(name=f"{prefix}-net")
        cleanup.add("network", lambda: conn.network.delete_network(self.network))
        conn.network.set_tags(self.network, [plan_tag(plan_id), step_tag("network/net")])
        self.subnet = conn.network.create_subnet(
            name=f"{prefix}-net", network_id=self.network.id, ip_version=4, cidr="10.77.0.0/24"
        )
        cleanup.add("subnet", lambda: conn.network.delete_subnet(self.subnet))
        self.sg = conn.network.create_security_group(name=f"{prefix}-web")
        cleanup.add("security group", lambda: conn.network.delete_security_group(self.sg))
        conn.network.set_tags(self.sg, [plan_tag(plan_id), step_tag("security-group/web")])


@pytest.fixture
def plan_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def conn(test_cloud: CloudUnderTest) -> Any:
    return test_cloud.connect()


@pytest.fixture
def admin(test_cloud: CloudUnderTest) -> Any:
    return test_cloud.connect(admin=True)


@pytest.fixture
def net(conn: Any, plan_id: str, cleanup: Cleanup) -> PlanNetwork:
    return PlanNetwork(conn, plan_id, cleanup)


@pytest.fixture
def project(admin: Any, unique_name: str, cleanup: Cleanup) -> Callable[..., Any]:
    """Makes a fresh project (admin is its admin) with the given compute quota; a connection into it."""

    def make(**compute_quota: int) -> Any:
        created = admin.identity.create_project(name=unique_name, domain_id="default")
        cleanup.add("project", lambda: admin.identity.delete_project(created))
        admin_user = admin.identity.find_user("admin", domain_id="default")
        admin.identity.assign_project_role_to_user(created, admin_user, admin.identity.find_role("admin"))
        admin.set_compute_quotas(created.id, **compute_quota)
        return admin.connect_as_project(created.name)

    return make


class TestApplyServer:
    def test_creates_a_marked_active_server_once_and_destroys_it(
        self, conn: Any, admin: Any, plan_id: str, net: PlanNetwork, cleanup: Cleanup
    ) -> None:
        cloud = OpenStackComputeCloud(conn)
        work = _server_work(plan_id, "web-0", user_data="#cloud-config\n", metadata={"tier": "web"})
        progress = Progress()
        started = time.monotonic()
        out = cloud.apply(work, progress)
        elapsed = time.monotonic() - started
        cleanup.add("server", lambda: delete_server(conn, out["id"]))

        server = admin.compute.get_server(out["id"])
        assert server.status == "ACTIVE"
        assert server.name == work.owner.name("web-0") == out["name"]
        assert set(work.owner.tags) <= set(server.tags)
        assert server.metadata == {**work.owner.metadata, "tier": "web"}
        assert server.flavor.original_name == "m1.tiny"
        assert base64.b64decode(server.user_data) == b"#cloud-config\n"
        assert "host" not in out  # a project member does not see compute hosts
        (port,) = conn.network.ports(device_id=server.id)
        assert set(port.security_group_ids) == {net.sg.id}
        assert out["addresses"] == {net.network.name: [port.fixed_ips[0]["ip_address"]]}
        assert progress.messages[-1] == "server ACTIVE"
        assert any(m.startswith("server BUILD") for m in progress.messages)
        assert elapsed < 120, f"create→ACTIVE took {elapsed:.1f}s"

        again = cloud.apply(work, Progress())
        assert again["id"] == out["id"]
        assert [s.id for s in conn.compute.servers(tags=_tagged(plan_id, "server/web-0"))] == [out["id"]]

        assert cloud.destroy(work, Progress()) is True
        assert list(conn.compute.servers(tags=_tagged(plan_id, "server/web-0"))) == []
        assert conn.compute.find_server(out["id"], ignore_missing=True) is None
        assert cloud.destroy(work, Progress()) is False

    def test_a_network_recreated_within_the_same_run_is_found_again(
        self, conn: Any, plan_id: str, net: PlanNetwork, cleanup: Cleanup
    ) -> None:
        """A run's networks are remembered; a resumed run that rolled back recreates them (new ids, same
        run): the server step still lands on the live network, not on the remembered one."""
        cloud = OpenStackComputeCloud(conn)
        first = _server_work(plan_id, "web-0")
        out = cloud.apply(first, Progress())
        cleanup.add("server", lambda: delete_server(conn, out["id"]))
        delete_server(conn, out["id"])
        old = net.network.id
        conn.network.delete_network(old)  # its subnet and port went with the server
        replacement = PlanNetwork(conn, plan_id, cleanup)
        second = StepWork(
            owner=Owner(plan_id, first.owner.run_id, "server/web-1"),
            kind="server",
            path=first.path,
            params={**first.params, "name": "web-1"},
        )
        again = cloud.apply(second, Progress())
        cleanup.add("server", lambda: delete_server(conn, again["id"]))
        (port,) = conn.network.ports(device_id=again["id"])
        assert port.network_id == replacement.network.id != old

    def test_read_helpers_list_frozen_models(self, conn: Any) -> None:
        cloud = OpenStackComputeCloud(conn)
        assert "m1.tiny" in {f.name for f in cloud.list_flavors()}
        assert "devcloud-tiny" in {i.name for i in cloud.list_images()}
        assert all(isinstance(s, Server) for s in cloud.list_servers())

    def test_unknown_flavor_names_the_plan_path_and_the_flavors(self, conn: Any, plan_id: str) -> None:
        work = _server_work(plan_id, "web-0", flavor="m1.huge")
        with pytest.raises(CloudError) as raised:
            OpenStackComputeCloud(conn).apply(work, Progress())
        assert "m1.huge" in raised.value.message
        assert "$.instance_groups[0]" in raised.value.message
        assert "m1.tiny" in raised.value.message
        assert raised.value.retriable is False

    def test_unknown_image_names_the_plan_path(self, conn: Any, plan_id: str, net: PlanNetwork) -> None:
        work = _server_work(plan_id, "web-0", image="no-such-image")
        with pytest.raises(CloudError) as raised:
            OpenStackComputeCloud(conn).apply(work, Progress())
        assert "no-such-image" in raised.value.message
        assert "$.instance_groups[0]" in raised.value.message
        assert "devcloud-tiny" in raised.value.message
        assert raised.value.retriable is False

    def test_missing_network_is_retriable_and_names_its_step(self, conn: Any, plan_id: str) -> None:
        with pytest.raises(CloudError) as raised:
            OpenStackComputeCloud(conn).apply(_server_work(plan_id, "web-0"), Progress())
        assert "network/net" in raised.value.message
        assert raised.value.retriable is True
        assert list(conn.compute.servers(tags=_tagged(plan_id, "server/web-0"))) == []

    def test_no_valid_host_reports_novas_fault_and_keeps_the_server(
        self, admin: Any, project: Callable[..., Any], unique_name: str, plan_id: str, cleanup: Cleanup
    ) -> None:
        # More memory than any fake host has (800,000 MB each); private, so nobody else sees it.
        huge = admin.compute.create_flavor(name=f"{unique_name}-huge", vcpus=1, ram=4_000_000, disk=1, is_public=False)
        cleanup.add("flavor", lambda: admin.compute.delete_flavor(huge))
        pconn = project(ram=-1)  # the quota must not be what stops it
        admin.compute.flavor_add_tenant_access(huge, pconn.current_project_id)
        PlanNetwork(pconn, plan_id, cleanup)
        cloud = OpenStackComputeCloud(pconn)
        work = _server_work(plan_id, "big-0", flavor=huge.name)

        with pytest.raises(CloudError) as raised:
            cloud.apply(work, Progress())
        error = raised.value
        cleanup.add("server", lambda: delete_server(pconn, str(error.resource_id)))
        assert "No valid host was found" in error.message
        assert huge.name in error.message
        assert error.hint == "pick a smaller flavor or free capacity"
        assert error.retriable is False
        assert pconn.compute.get_server(error.resource_id).status == "ERROR"

        # Applying again replaces the ERROR server rather than adding a second one.
        progress = Progress()
        with pytest.raises(CloudError) as again:
            cloud.apply(work, progress)
        cleanup.add("server", lambda: delete_server(pconn, str(again.value.resource_id)))
        assert again.value.resource_id != error.resource_id
        assert any("deleting it to create it again" in m for m in progress.messages)
        assert [s.id for s in pconn.compute.servers(tags=_tagged(plan_id, "server/big-0"))] == [again.value.resource_id]
        assert cloud.destroy(work, Progress()) is True
        assert list(pconn.compute.servers(tags=_tagged(plan_id, "server/big-0"))) == []

    def test_quota_exceeded_is_novas_message_and_not_retriable(
        self, project: Callable[..., Any], plan_id: str, cleanup: Cleanup
    ) -> None:
        pconn = project(instances=1)
        PlanNetwork(pconn, plan_id, cleanup)
        cloud = OpenStackComputeCloud(pconn)
        first = cloud.apply(_server_work(plan_id, "web-0"), Progress())
        cleanup.add("server", lambda: delete_server(pconn, first["id"]))
        with pytest.raises(CloudError) as raised:
            cloud.apply(_server_work(plan_id, "web-1"), Progress())
        assert "Quota exceeded for instances" in raised.value.message
        assert raised.value.http_status == 403
        assert raised.value.retriable is False
        assert raised.value.hint == "raise the project's quota or lower the plan's count"


class TestServerGroup:
    def test_anti_affinity_servers_land_on_two_hosts(
        self, conn: Any, admin: Any, plan_id: str, net: PlanNetwork, cleanup: Cleanup
    ) -> None:
        cloud = OpenStackComputeCloud(conn)
        group_work = _work(
            plan_id, "server_group", "server-group/app", "$.instance_groups[0].server_group", name="app",
            policy="anti-affinity",
        )  # fmt: skip
        group = cloud.apply(group_work, Progress())
        cleanup.add("server group", lambda: conn.compute.delete_server_group(group["id"]))
        name = group_work.owner.name("group-app")
        assert cloud.apply(group_work, Progress())["id"] == group["id"]
        found = [g for g in conn.compute.server_groups() if g.name == name]
        assert [g.id for g in found] == [group["id"]]
        assert found[0].policy == "anti-affinity"

        ids = []
        for i in range(2):
            out = cloud.apply(_server_work(plan_id, f"app-{i}", server_group="app"), Progress())
            cleanup.add("server", functools.partial(delete_server, conn, out["id"]))
            ids.append(out["id"])
        hosts = {admin.compute.get_server(i).compute_host for i in ids}
        assert len(hosts) == 2, f"anti-affinity servers share a host: {hosts}"
        assert set(conn.compute.get_server_group(group["id"]).member_ids) == set(ids)

        for i in range(2):
            assert cloud.destroy(_server_work(plan_id, f"app-{i}", server_group="app"), Progress()) is True
        assert cloud.destroy(group_work, Progress()) is True
        assert [g for g in conn.compute.server_groups() if g.name == name] == []
        assert cloud.destroy(group_work, Progress()) is False

    def test_missing_server_group_is_retriable_and_names_its_step(
        self, conn: Any, plan_id: str, net: PlanNetwork
    ) -> None:
        with pytest.raises(CloudError) as raised:
            OpenStackComputeCloud(conn).apply(_server_work(plan_id, "app-0", server_group="app"), Progress())
        assert "server-group/app" in raised.value.message
        assert raised.value.retriable is True


class TestVolumeAttachment:
    def test_attach_and_detach_round_trip(self, conn: Any, plan_id: str, net: PlanNetwork, cleanup: Cleanup) -> None:
        cloud = OpenStackComputeCloud(conn)
        server = cloud.apply(_server_work(plan_id, "app-0"), Progress())
        cleanup.add("server", lambda: delete_server(conn, server["id"]))
        # The volume as the storage service makes it: Cinder metadata marks of step volume/app-0/data.
        volume_owner = Owner(plan_id, str(uuid.uuid4()), "volume/app-0/data")
        volume = conn.block_storage.create_volume(
            name=volume_owner.name("app-0-data"), size=1, metadata=volume_owner.metadata
        )
        cleanup.add("volume", lambda: _delete_volume(conn, volume))
        conn.block_storage.wait_for_status(volume, status="available", failures=["error"], wait=120)
        work = _work(
            plan_id, "volume_attachment", "volume-attachment/app-0/data", "$.instance_groups[0].volumes[0]",
            server="app-0", volume="app-0-data",
        )  # fmt: skip

        progress = Progress()
        out = cloud.apply(work, progress)
        assert out["volume_id"] == volume.id
        assert out["server_id"] == server["id"]
        current = conn.block_storage.get_volume(volume.id)
        assert current.status == "in-use"
        assert [a["server_id"] for a in current.attachments] == [server["id"]]
        assert progress.messages[-1] == "volume in-use"

        assert cloud.apply(work, Progress()) == out
        assert len(list(conn.compute.volume_attachments(server["id"]))) == 1

        assert cloud.destroy(work, Progress()) is True
        current = conn.block_storage.get_volume(volume.id)
        assert current.status == "available"
        assert current.attachments == []
        assert cloud.destroy(work, Progress()) is False

    def test_missing_volume_is_retriable_and_names_its_step(
        self, conn: Any, plan_id: str, net: PlanNetwork, cleanup: Cleanup
    ) -> None:
        cloud = OpenStackComputeCloud(conn)
        work = _work(plan_id, "volume_attachment", "volume-attachment/app-0/data", server="app-0", volume="app-0-data")
        with pytest.raises(CloudError) as raised:
            cloud.apply(work, Progress())
        assert "server/app-0" in raised.value.message
        assert raised.value.retriable is True
        server = cloud.apply(_server_work(plan_id, "app-0"), Progress())
        cleanup.add("server", lambda: delete_server(conn, server["id"]))
        with pytest.raises(CloudError) as raised:
            cloud.apply(work, Progress())
        assert "volume/app-0/data" in raised.value.message
        assert raised.value.retriable is True
        assert cloud.destroy(work, Progress()) is False


def _delete_volume(conn: Any, volume: Any) -> None:
    conn.block_storage.delete_volume(volume, ignore_missing=True)
    conn.block_storage.wait_for_delete(volume, wait=120)


class TestTranslate:
    work = _work("p", "server", "server/web-0")

    def test_quota_keeps_novas_message(self) -> None:
        message = "Quota exceeded for instances: Requested 1, but already used 10 of 10 instances"
        exc = http_error(403, cls=openstack.exceptions.ForbiddenException, body={"forbidden": {"message": message}})
        error = translate(exc, self.work)
        assert error.message == message
        assert error.http_status == 403
        assert error.hint == "raise the project's quota or lower the plan's count"
        assert error.retriable is False

    @pytest.mark.parametrize(
        ("status", "message", "retriable"),
        [
            (500, "Unexpected API Error.", True),
            (503, "Service Unavailable", True),
            (409, "Cannot 'delete' instance x while it is in task_state spawning", True),
            (409, "Volume x is in-use", True),
            (400, "Invalid input for field/attribute name.", False),
            (404, "Flavor m1.huge could not be found.", False),
        ],
    )
    def test_status_decides_retriable(self, status: int, message: str, retriable: bool) -> None:
        exc = http_error(status, cls=openstack.exceptions.HttpException, body={"error": {"message": message}})
        error = translate(exc, self.work)
        assert (error.message, error.http_status, error.retriable) == (message, status, retriable)

    def test_connection_failures_are_retriable(self) -> None:
        assert translate(ksa.ConnectFailure("refused"), self.work).retriable is True
        assert translate(openstack.exceptions.ResourceTimeout("slow"), self.work).retriable is True
