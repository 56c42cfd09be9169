"""devcloud is a real OpenStack: everything below goes through openstacksdk to the genuine APIs."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import openstack
import pytest

from devcloud.cloud import Devcloud
from devcloud.settings import DevcloudSettings
from tests.fixtures.cloud_helpers import delete_server
from tests.fixtures.openstack import Cleanup, CloudUnderTest

pytestmark = pytest.mark.devcloud


def _wait(check: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


def _wait_lb(conn: Any, lb_id: str) -> None:
    conn.load_balancer.wait_for_load_balancer(lb_id, status="ACTIVE", failures=["ERROR"], interval=1, wait=180)


def test_a_whole_service_is_built_and_torn_down_leaving_nothing(
    test_cloud: CloudUnderTest, unique_name: str, cleanup: Cleanup
) -> None:
    conn, admin = test_cloud.connect(), test_cloud.connect(admin=True)
    n = unique_name
    public = conn.network.find_network("public")
    assert public is not None
    assert public.is_router_external

    # Network, subnet, router with gateway, security group with rules.
    net = conn.network.create_network(name=f"{n}-net")
    cleanup.add("network", lambda: conn.network.delete_network(net))
    subnet = conn.network.create_subnet(name=f"{n}-subnet", network_id=net.id, ip_version=4, cidr="10.42.0.0/24")
    cleanup.add("subnet", lambda: conn.network.delete_subnet(subnet))
    router = conn.network.create_router(name=f"{n}-router", external_gateway_info={"network_id": public.id})
    cleanup.add("router", lambda: conn.network.delete_router(router))
    conn.network.add_interface_to_router(router, subnet_id=subnet.id)
    cleanup.add("router interface", lambda: conn.network.remove_interface_from_router(router, subnet_id=subnet.id))
    assert conn.network.get_router(router.id).external_gateway_info["network_id"] == public.id
    sg = conn.network.create_security_group(name=f"{n}-sg")
    cleanup.add("security group", lambda: conn.network.delete_security_group(sg))
    for port in (22, 80):
        conn.network.create_security_group_rule(
            security_group_id=sg.id, direction="ingress", protocol="tcp", ethertype="IPv4",
            port_range_min=port, port_range_max=port, remote_ip_prefix="0.0.0.0/0",
        )  # fmt: skip
    rules = [r for r in conn.network.security_group_rules(security_group_id=sg.id) if r.protocol == "tcp"]
    assert sorted(r.port_range_min for r in rules) == [22, 80]

    # Two servers, anti-affinity: on different compute hosts, each ACTIVE with a bound port.
    group = conn.compute.create_server_group(name=f"{n}-group", policy="anti-affinity")
    cleanup.add("server group", lambda: conn.compute.delete_server_group(group))
    flavor, image = conn.compute.find_flavor("m1.tiny"), conn.image.find_image("devcloud-tiny")
    servers = []
    for i in range(2):
        server = conn.compute.create_server(
            name=f"{n}-web{i}", flavor_id=flavor.id, image_id=image.id, networks=[{"uuid": net.id}],
            security_groups=[{"name": sg.name}], scheduler_hints={"group": group.id},
        )  # fmt: skip
        cleanup.add("server", functools.partial(delete_server, conn, server))
        servers.append(server)
    servers = [conn.compute.wait_for_server(s, status="ACTIVE", failures=["ERROR"], wait=180) for s in servers]
    hosts = {admin.compute.get_server(s.id).compute_host for s in servers}
    assert len(hosts) == 2, f"anti-affinity servers share a host: {hosts}"
    ports = []
    for server in servers:
        (port,) = conn.network.ports(device_id=server.id)
        bound = admin.network.get_port(port.id)
        assert bound.binding_vif_type == "ovs"
        assert bound.binding_host_id == admin.compute.get_server(server.id).compute_host
        assert set(port.security_group_ids) == {sg.id}
        ports.append(port)

    # A floating IP on the first server's port.
    fip = conn.network.create_ip(floating_network_id=public.id, port_id=ports[0].id)
    cleanup.add("floating ip", lambda: conn.network.delete_ip(fip))
    assert fip.fixed_ip_address == ports[0].fixed_ips[0]["ip_address"]
    assert fip.floating_ip_address.startswith("172.24.4.")

    # A volume, attached.
    volume = conn.block_storage.create_volume(name=f"{n}-vol", size=1)
    cleanup.add("volume", lambda: _delete_volume(conn, volume))
    conn.block_storage.wait_for_status(volume, status="available", failures=["error"], wait=120)
    conn.compute.create_volume_attachment(servers[0], volume_id=volume.id)
    cleanup.add("volume attachment", lambda: _detach(conn, servers[0], volume))
    conn.block_storage.wait_for_status(volume, status="in-use", failures=["error"], wait=120)
    assert conn.block_storage.get_volume(volume.id).attachments[0]["server_id"] == servers[0].id

    # A load balancer with listener, pool, and the two servers as members, ACTIVE.
    lb = conn.load_balancer.create_load_balancer(name=f"{n}-lb", vip_subnet_id=subnet.id)
    cleanup.add("load balancer", lambda: _delete_lb(conn, lb.id))
    _wait_lb(conn, lb.id)
    listener = conn.load_balancer.create_listener(
        name=f"{n}-http", protocol="HTTP", protocol_port=80, load_balancer_id=lb.id
    )
    _wait_lb(conn, lb.id)
    pool = conn.load_balancer.create_pool(protocol="HTTP", lb_algorithm="ROUND_ROBIN", listener_id=listener.id)
    _wait_lb(conn, lb.id)
    for port in ports:
        conn.load_balancer.create_member(
            pool, address=port.fixed_ips[0]["ip_address"], protocol_port=80, subnet_id=subnet.id
        )
        _wait_lb(conn, lb.id)
    members = list(conn.load_balancer.members(pool))
    assert sorted(m.address for m in members) == sorted(p.fixed_ips[0]["ip_address"] for p in ports)
    assert {m.provisioning_status for m in members} == {"ACTIVE"}
    assert conn.load_balancer.get_load_balancer(lb.id).provisioning_status == "ACTIVE"

    # An object stored and read back.
    container = conn.object_store.create_container(name=f"{n}-bucket")
    cleanup.add("container", lambda: conn.object_store.delete_container(container))
    conn.object_store.upload_object(container=container.name, name="hello.txt", data=b"hello devcloud")
    cleanup.add("object", lambda: conn.object_store.delete_object("hello.txt", container=container.name))
    assert conn.object_store.download_object("hello.txt", container=container.name) == b"hello devcloud"

    # Everything deleted, newest first; then nothing with our prefix is left anywhere.
    errors = cleanup.run()
    assert not errors, errors
    left = {
        "servers": [s.name for s in conn.compute.servers() if s.name.startswith(n)],
        "ports": [p.id for p in conn.network.ports(network_id=net.id)],
        "networks": [x.name for x in conn.network.networks() if x.name.startswith(n)],
        "routers": [x.name for x in conn.network.routers() if x.name.startswith(n)],
        "security groups": [x.name for x in conn.network.security_groups() if x.name.startswith(n)],
        "floating ips": [x.id for x in conn.network.ips() if x.id == fip.id],
        "volumes": [v.name for v in conn.block_storage.volumes() if (v.name or "").startswith(n)],
        "load balancers": [x.name for x in conn.load_balancer.load_balancers() if (x.name or "").startswith(n)],
        "containers": [c.name for c in conn.object_store.containers() if c.name.startswith(n)],
        "server groups": [g.name for g in conn.compute.server_groups() if g.name.startswith(n)],
    }
    assert not any(left.values()), left


def _delete_volume(conn: Any, volume: Any) -> None:
    conn.block_storage.delete_volume(volume)
    conn.block_storage.wait_for_delete(volume, wait=120)


def _detach(conn: Any, server: Any, volume: Any) -> None:
    conn.compute.delete_volume_attachment(volume.id, server)
    conn.block_storage.wait_for_status(volume, status="available", failures=["error"], wait=120)


def _delete_lb(conn: Any, lb_id: str) -> None:
    conn.load_balancer.delete_load_balancer(lb_id, cascade=True)
    _wait(lambda: conn.load_balancer.find_load_balancer(lb_id) is None, "load balancer deletion", 180)


def _project_with_quota(admin: Any, name: str, cleanup: Cleanup, **compute_quota: int) -> Any:
    """A fresh project (admin is a member) with the given compute quota; a connection into it.

    The project is deleted by ``cleanup`` after everything created in it (cleanup runs newest first)."""
    project = admin.identity.create_project(name=name, domain_id="default")
    cleanup.add("project", lambda: admin.identity.delete_project(project))
    admin_user = admin.identity.find_user("admin", domain_id="default")
    admin.identity.assign_project_role_to_user(project, admin_user, admin.identity.find_role("admin"))
    admin.set_compute_quotas(project.id, **compute_quota)
    return admin.connect_as_project(project.name)


def test_quota_exceeded_is_the_real_nova_error(test_cloud: CloudUnderTest, unique_name: str, cleanup: Cleanup) -> None:
    admin = test_cloud.connect(admin=True)
    flavor, image = admin.compute.find_flavor("m1.tiny"), admin.image.find_image("devcloud-tiny")
    conn = _project_with_quota(admin, unique_name, cleanup, instances=1)
    first = conn.compute.create_server(name=f"{unique_name}-1", flavor_id=flavor.id, image_id=image.id, networks="none")
    cleanup.add("server", lambda: delete_server(conn, first))
    # Nova's API counts instances in the cell database; a server still waiting for the conductor is not
    # there yet (a second request then passes the API check and fails later in the conductor's recheck).
    conn.compute.wait_for_server(first, status="ACTIVE", failures=["ERROR"], wait=120)
    with pytest.raises(openstack.exceptions.HttpException) as raised:
        conn.compute.create_server(name=f"{unique_name}-2", flavor_id=flavor.id, image_id=image.id, networks="none")
    assert raised.value.status_code == 403
    assert "Quota exceeded for instances" in str(raised.value.details or raised.value)


def test_no_valid_host_is_the_real_scheduler_error(
    test_cloud: CloudUnderTest, unique_name: str, cleanup: Cleanup
) -> None:
    admin = test_cloud.connect(admin=True)
    # More memory than any fake host has (800,000 MB each): the scheduler finds no host.
    huge = admin.compute.create_flavor(name=f"{unique_name}-huge", vcpus=1, ram=4_000_000, disk=1, is_public=True)
    cleanup.add("flavor", lambda: admin.compute.delete_flavor(huge))
    image = admin.image.find_image("devcloud-tiny")
    conn = _project_with_quota(admin, unique_name, cleanup, ram=-1)  # quota must not be what stops it
    server = conn.compute.create_server(name=unique_name, flavor_id=huge.id, image_id=image.id, networks="none")
    cleanup.add("server", lambda: delete_server(conn, server))
    with pytest.raises(openstack.exceptions.ResourceFailure):
        conn.compute.wait_for_server(server, status="ACTIVE", failures=["ERROR"], wait=120)
    failed = conn.compute.get_server(server.id)
    assert failed.status == "ERROR"
    assert "No valid host was found" in failed.fault["message"]


def test_the_dcostack_service_user_authenticates_and_holds_no_role_in_the_demo_project(
    test_cloud: CloudUnderTest,
) -> None:
    if test_cloud.member != DevcloudSettings().cloud_name:
        pytest.fail("the dcostack service user is devcloud's; unset DCOSTACK_TEST_CLOUD to run this test")
    service = openstack.connect(cloud=f"{test_cloud.member}-dcostack")
    service.authorize()
    assert service.current_project.name == "service"
    admin = test_cloud.connect(admin=True)
    user = admin.identity.find_user("dcostack", domain_id="default")
    assert user is not None
    assert user.id == service.current_user_id
    demo = admin.identity.find_project("demo", domain_id="default")
    assert list(admin.identity.role_assignments(user_id=user.id, scope_project_id=demo.id)) == []
    roles = {a.role["id"] for a in admin.identity.role_assignments(user_id=user.id)}
    assert roles == {admin.identity.find_role("service").id}, "the trustee must act only through trusts"


def test_down_then_up_again_is_warm_and_the_cloud_works(test_cloud: CloudUnderTest) -> None:
    if test_cloud.member != DevcloudSettings().cloud_name:
        pytest.fail("this test restarts devcloud itself; unset DCOSTACK_TEST_CLOUD to run it")
    cloud = Devcloud(DevcloudSettings())
    stopped = cloud.down()
    assert "keystone" in stopped
    assert "nova-compute-1" in stopped
    assert all(row.pid is None for row in cloud.status()), "down left processes running"
    result = cloud.up()
    assert "keystone" in result.started
    assert "install" in result.timings
    assert all(row.healthy is not False for row in cloud.status())
    conn = test_cloud.connect()
    server = conn.compute.create_server(
        name="warm-check", flavor_id=conn.compute.find_flavor("m1.tiny").id,
        image_id=conn.image.find_image("devcloud-tiny").id, networks="none",
    )  # fmt: skip
    try:
        conn.compute.wait_for_server(server, status="ACTIVE", failures=["ERROR"], wait=120)
    finally:
        delete_server(conn, server)
