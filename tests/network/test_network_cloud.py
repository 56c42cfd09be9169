"""NetworkCloud against devcloud: every network-service step kind of one small plan is applied,
checked in OpenStack directly, applied again, and destroyed in reverse order."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import keystoneauth1.exceptions
import openstack
import pytest

from services.network.cloud import OpenStackNetworkCloud, translate
from services.planner.plans.compiler import Step, compile_plan
from services.planner.plans.spec import validate_plan
from shared.executor.errors import IMMUTABLE_HINT, IN_USE_HINT, OVERLAP_HINT, QUOTA_HINT, CloudError
from shared.executor.marks import Owner, StepWork, plan_tag, resource_name, step_tag
from tests.fixtures.cloud_helpers import delete_server, http_error
from tests.fixtures.openstack import CloudUnderTest

pytestmark = pytest.mark.devcloud

log = logging.getLogger(__name__)

PLAN: dict[str, Any] = {
    "name": "netcloud",
    "networks": [
        {
            "name": "web-net",
            "cidr": "10.77.1.0/24",
            "dns": ["10.77.1.2"],
            "router": {"name": "edge", "external_network": "public"},
        }
    ],
    "security_groups": [
        {
            "name": "web",
            "rules": [
                {"protocol": "tcp", "ports": 80, "remote_cidr": "0.0.0.0/0"},
                {"protocol": "icmp", "remote_cidr": "10.77.1.0/24"},
            ],
        },
        {"name": "app", "rules": [{"protocol": "tcp", "ports": "8000-8080", "remote_group": "web"}]},
    ],
    "instance_groups": [
        {
            "name": "web",
            "flavor": "m1.tiny",
            "image": "devcloud-tiny",
            "count": 2,
            "networks": ["web-net"],
            "security_groups": ["web"],
            "floating_ip": True,
        }
    ],
    "load_balancers": [
        {
            "name": "front",
            "network": "web-net",
            "listener": {"protocol": "HTTP", "port": 80},
            "pool": {"algorithm": "LEAST_CONNECTIONS", "members": {"group": "web", "port": 8080}},
            "health_monitor": {"type": "HTTP", "delay": 5, "timeout": 3, "max_retries": 2, "url_path": "/healthz"},
        }
    ],
}


def _noop(message: str) -> None:
    log.debug("progress: %s", message)


@dataclass
class Built:
    conn: Any
    cloud: OpenStackNetworkCloud
    plan_id: str
    steps: list[Step]
    works: dict[str, StepWork]
    outputs: dict[str, dict[str, Any]]
    timings: dict[str, float]
    servers: dict[str, Any] = field(default_factory=dict)
    progress: list[str] = field(default_factory=list)

    def tags(self, key: str) -> str:
        return f"{plan_tag(self.plan_id)},{step_tag(key)}"

    def name(self, name: str) -> str:
        return resource_name(self.plan_id, name)


def _create_server(conn: Any, work: StepWork, built: Built) -> Any:
    """What the compute service does for a server step, enough for floating_ip and member to find it."""
    p = work.params
    server = conn.compute.create_server(
        name=work.owner.name(p["name"]),
        flavor_id=conn.compute.find_flavor(p["flavor"]).id,
        image_id=conn.image.find_image(p["image"]).id,
        networks=[{"uuid": conn.network.find_network(built.name(n)).id} for n in p["networks"]],
        security_groups=[{"name": built.name(g)} for g in p["security_groups"]],
        tags=work.owner.tags,
        metadata=work.owner.metadata,
    )
    return conn.compute.wait_for_server(server, status="ACTIVE", failures=["ERROR"], interval=1, wait=180)


def _apply_all(built: Built) -> None:
    for step in built.steps:
        if step.service == "compute":
            if step.key not in built.servers:
                built.servers[step.key] = _create_server(built.conn, built.works[step.key], built)
            continue
        started = time.monotonic()
        built.outputs[step.key] = built.cloud.apply(built.works[step.key], built.progress.append)
        built.timings[step.key] = time.monotonic() - started


def _destroy_all(built: Built) -> dict[str, bool]:
    done = {}
    for step in reversed(built.steps):
        if step.service == "compute":
            server = built.servers.pop(step.key, None)
            if server is not None:
                delete_server(built.conn, server)
            continue
        done[step.key] = built.cloud.destroy(built.works[step.key], built.progress.append)
    return done


def _leftovers(conn: Any, plan_id: str) -> dict[str, list[str]]:
    tag = plan_tag(plan_id)
    lbc = conn.load_balancer
    return {
        "networks": [x.id for x in conn.network.networks(tags=tag)],
        "subnets": [x.id for x in conn.network.subnets(tags=tag)],
        "routers": [x.id for x in conn.network.routers(tags=tag)],
        "security groups": [x.id for x in conn.network.security_groups(tags=tag)],
        "floating ips": [x.id for x in conn.network.ips(tags=tag)],
        "load balancers": [x.id for x in lbc.load_balancers(tags=tag) if x.provisioning_status != "DELETED"],
        "listeners": [x.id for x in lbc.listeners(tags=tag)],
        "pools": [x.id for x in lbc.pools(tags=tag)],
        "health monitors": [x.id for x in lbc.health_monitors(tags=tag)],
        "servers": [x.id for x in conn.compute.servers(tags=tag)],
    }


@pytest.fixture(scope="module")
def built(test_cloud: CloudUnderTest) -> Iterator[Built]:
    conn = test_cloud.connect()
    plan_id, run_id = str(uuid.uuid4()), str(uuid.uuid4())
    graph = compile_plan(validate_plan(PLAN))
    steps = [graph.steps[k] for k in graph.order()]
    works = {s.key: StepWork(Owner(plan_id, run_id, s.key), s.kind, s.path, dict(s.params)) for s in steps}
    built = Built(conn, OpenStackNetworkCloud(conn), plan_id, steps, works, {}, {})
    try:
        _apply_all(built)
        log.info("apply timings (s): %s", {k: round(v, 2) for k, v in built.timings.items()})
        yield built
    finally:
        for step in reversed(steps):  # whatever the tests left, even after a failure half-way
            try:
                if step.service == "compute":
                    for server in conn.compute.servers(tags=built.tags(step.key)):
                        delete_server(conn, server)
                else:
                    built.cloud.destroy(works[step.key], _noop)
            except (CloudError, openstack.exceptions.SDKException) as exc:
                log.warning("cleanup of %s failed: %s", step.key, exc)


def _one(items: Any) -> Any:
    found = list(items)
    assert len(found) == 1, f"expected exactly one, found {len(found)}: {[getattr(x, 'id', x) for x in found]}"
    return found[0]


class TestApplyEveryKind:
    def test_network_subnet_router_and_interface_exist_with_their_marks(self, built: Built) -> None:
        conn = built.conn
        net = _one(conn.network.networks(tags=built.tags("network/web-net")))
        assert net.name == built.name("web-net")
        assert set(net.tags) == {plan_tag(built.plan_id), step_tag("network/web-net")}
        assert built.outputs["network/web-net"]["id"] == net.id

        subnet = _one(conn.network.subnets(tags=built.tags("subnet/web-net")))
        assert subnet.network_id == net.id
        assert subnet.cidr == "10.77.1.0/24"
        assert subnet.dns_nameservers == ["10.77.1.2"]
        assert built.outputs["subnet/web-net"] == {
            "id": subnet.id,
            "network_id": net.id,
            "cidr": "10.77.1.0/24",
            "gateway_ip": subnet.gateway_ip,
        }

        public = conn.network.find_network("public")
        router = _one(conn.network.routers(tags=built.tags("router/edge")))
        assert router.name == built.name("edge")
        assert router.external_gateway_info["network_id"] == public.id
        gateway_ip = router.external_gateway_info["external_fixed_ips"][0]["ip_address"]
        assert gateway_ip.startswith("172.24.4.")
        assert built.outputs["router/edge"]["external_gateway_ip"] == gateway_ip

        (port,) = conn.network.ports(device_id=router.id, network_id=net.id)
        assert port.fixed_ips[0] == {"subnet_id": subnet.id, "ip_address": subnet.gateway_ip}
        assert built.outputs["router-interface/edge/web-net"]["id"] == port.id

    def test_security_groups_and_rules_exist_with_their_marks(self, built: Built) -> None:
        conn = built.conn
        web = _one(conn.network.security_groups(tags=built.tags("security-group/web")))
        app = _one(conn.network.security_groups(tags=built.tags("security-group/app")))
        assert (web.name, app.name) == (built.name("web"), built.name("app"))

        http = _one(
            conn.network.security_group_rules(
                security_group_id=web.id, description=step_tag("security-group-rule/web/0")
            )
        )
        assert (http.security_group_id, http.direction, http.protocol) == (web.id, "ingress", "tcp")
        assert (http.port_range_min, http.port_range_max, http.remote_ip_prefix) == (80, 80, "0.0.0.0/0")
        icmp = _one(
            conn.network.security_group_rules(
                security_group_id=web.id, description=step_tag("security-group-rule/web/1")
            )
        )
        assert (icmp.protocol, icmp.port_range_min, icmp.remote_ip_prefix) == ("icmp", None, "10.77.1.0/24")
        ranged = _one(
            conn.network.security_group_rules(
                security_group_id=app.id, description=step_tag("security-group-rule/app/0")
            )
        )
        assert ranged.security_group_id == app.id
        assert ranged.remote_group_id == web.id
        assert (ranged.port_range_min, ranged.port_range_max, ranged.remote_ip_prefix) == (8000, 8080, None)
        assert built.outputs["security-group-rule/app/0"]["id"] == ranged.id

    def test_floating_ip_is_on_the_servers_port_in_the_routers_external_network(self, built: Built) -> None:
        conn = built.conn
        server = built.servers["server/web-0"]
        (port,) = conn.network.ports(device_id=server.id)
        fip = _one(conn.network.ips(tags=built.tags("floating-ip/web-0")))
        assert fip.port_id == port.id
        assert fip.fixed_ip_address == port.fixed_ips[0]["ip_address"]
        assert fip.floating_network_id == conn.network.find_network("public").id
        out = built.outputs["floating-ip/web-0"]
        assert (out["id"], out["floating_ip_address"]) == (fip.id, fip.floating_ip_address)
        assert out["fixed_ip_address"] == port.fixed_ips[0]["ip_address"]
        other = _one(conn.network.ips(tags=built.tags("floating-ip/web-1")))
        assert other.port_id != fip.port_id

    def test_load_balancer_chain_is_active_with_the_servers_as_members(self, built: Built) -> None:
        lbc = built.conn.load_balancer
        subnet = _one(built.conn.network.subnets(tags=built.tags("subnet/web-net")))
        lb = _one(lbc.load_balancers(tags=built.tags("load-balancer/front")))
        assert (lb.name, lb.vip_subnet_id, lb.provisioning_status) == (built.name("front"), subnet.id, "ACTIVE")
        assert built.outputs["load-balancer/front"]["vip_address"] == lb.vip_address

        listener = _one(lbc.listeners(tags=built.tags("listener/front")))
        assert (listener.protocol, listener.protocol_port) == ("HTTP", 80)
        assert listener.load_balancers == [{"id": lb.id}]
        assert listener.provisioning_status == "ACTIVE"

        pool = _one(lbc.pools(tags=built.tags("pool/front")))
        assert (pool.protocol, pool.lb_algorithm, pool.provisioning_status) == ("HTTP", "LEAST_CONNECTIONS", "ACTIVE")
        assert pool.listeners == [{"id": listener.id}]

        addresses = {}
        for key in ("server/web-0", "server/web-1"):
            (port,) = built.conn.network.ports(device_id=built.servers[key].id)
            addresses[key.removeprefix("server/")] = port.fixed_ips[0]["ip_address"]
        for name, address in addresses.items():
            member = _one(lbc.members(pool, tags=built.tags(f"member/front/{name}")))
            assert (member.address, member.protocol_port, member.subnet_id) == (address, 8080, subnet.id)
            assert member.provisioning_status == "ACTIVE"
            assert built.outputs[f"member/front/{name}"]["address"] == address

        hm = _one(lbc.health_monitors(tags=built.tags("health-monitor/front")))
        assert (hm.type, hm.delay, hm.timeout, hm.max_retries, hm.url_path) == ("HTTP", 5, 3, 2, "/healthz")
        assert hm.pools == [{"id": pool.id}]
        assert lbc.get_load_balancer(lb.id).provisioning_status == "ACTIVE"

    def test_octavia_transitions_are_reported_and_each_kind_is_active_within_two_minutes(self, built: Built) -> None:
        assert any("PENDING_CREATE" in m for m in built.progress), built.progress
        for kind in (
            "load-balancer/front",
            "listener/front",
            "pool/front",
            "member/front/web-0",
            "health-monitor/front",
        ):
            assert built.timings[kind] < 120, built.timings


class TestApplyAgain:
    def test_every_step_returns_the_same_id_and_nothing_is_duplicated(self, built: Built) -> None:
        first = {k: v["id"] for k, v in built.outputs.items()}
        _apply_all(built)
        assert {k: v["id"] for k, v in built.outputs.items()} == first
        conn, lbc, tag = built.conn, built.conn.load_balancer, plan_tag(built.plan_id)
        counts = {
            "networks": len(list(conn.network.networks(tags=tag))),
            "subnets": len(list(conn.network.subnets(tags=tag))),
            "routers": len(list(conn.network.routers(tags=tag))),
            "security groups": len(list(conn.network.security_groups(tags=tag))),
            "floating ips": len(list(conn.network.ips(tags=tag))),
            "load balancers": len(list(lbc.load_balancers(tags=tag))),
            "listeners": len(list(lbc.listeners(tags=tag))),
            "pools": len(list(lbc.pools(tags=tag))),
            "members": sum(len(list(lbc.members(p, tags=tag))) for p in lbc.pools(tags=tag)),
            "health monitors": len(list(lbc.health_monitors(tags=tag))),
        }
        assert counts == {
            "networks": 1,
            "subnets": 1,
            "routers": 1,
            "security groups": 2,
            "floating ips": 2,
            "load balancers": 1,
            "listeners": 1,
            "pools": 1,
            "members": 2,
            "health monitors": 1,
        }
        router_id = built.outputs["router/edge"]["id"]
        assert len(list(conn.network.ports(device_id=router_id, device_owner="network:router_interface"))) == 1
        web_id = built.outputs["security-group/web"]["id"]
        assert len(list(conn.network.security_group_rules(security_group_id=web_id, protocol="tcp"))) == 1

    def test_read_helpers_list_the_plans_resources(self, built: Built) -> None:
        cloud = built.cloud
        assert [n.id for n in cloud.list_networks(built.plan_id)] == [built.outputs["network/web-net"]["id"]]
        (router,) = cloud.list_routers(built.plan_id)
        assert router.external_ip == built.outputs["router/edge"]["external_gateway_ip"]
        assert {g.name for g in cloud.list_security_groups(built.plan_id)} == {built.name("web"), built.name("app")}
        fips = {f.floating_ip_address for f in cloud.list_floating_ips(built.plan_id)}
        assert fips == {built.outputs[f"floating-ip/web-{i}"]["floating_ip_address"] for i in range(2)}
        (lb,) = cloud.list_load_balancers(built.plan_id)
        assert (lb.status, lb.vip_address) == ("ACTIVE", built.outputs["load-balancer/front"]["vip_address"])
        assert plan_tag(built.plan_id) in lb.tags


class TestErrors:
    def test_a_missing_reference_names_the_path_and_step_and_is_retriable(self, built: Built) -> None:
        owner = Owner(str(uuid.uuid4()), str(uuid.uuid4()), "subnet/ghost")
        work = StepWork(owner, "subnet", "$.networks[3].cidr", {"network": "ghost", "cidr": "10.9.0.0/24", "dns": []})
        with pytest.raises(CloudError) as raised:
            built.cloud.apply(work, _noop)
        assert "$.networks[3].cidr" in raised.value.message
        assert "network/ghost" in raised.value.message
        assert raised.value.retriable

    def test_a_missing_load_balancer_for_a_listener_is_a_retriable_reference_error(self, built: Built) -> None:
        owner = Owner(built.plan_id, "run", "listener/ghost")
        work = StepWork(
            owner, "listener", "$.load_balancers[5].listener", {"lb": "ghost", "protocol": "HTTP", "port": 80}
        )
        with pytest.raises(CloudError, match=r"\$\.load_balancers\[5\]\.listener.*load-balancer/ghost") as raised:
            built.cloud.apply(work, _noop)
        assert raised.value.retriable

    def test_an_overlapping_cidr_carries_neutrons_own_message(self, built: Built) -> None:
        owner = Owner(built.plan_id, "run", "subnet/web-net-overlap")
        work = StepWork(owner, "subnet", "$.networks[0].cidr", {"network": "web-net", "cidr": "10.77.1.128/25"})
        with pytest.raises(CloudError) as raised:
            built.cloud.apply(work, _noop)
        err = raised.value
        assert "overlaps with another subnet" in err.message, err.message
        assert "10.77.1.128/25" in err.message
        assert (err.http_status, err.hint, err.retriable) == (400, OVERLAP_HINT, False)
        assert len(list(built.conn.network.subnets(tags=plan_tag(built.plan_id)))) == 1

    def test_a_second_listener_on_the_same_port_carries_octavias_message(self, built: Built) -> None:
        owner = Owner(built.plan_id, "run", "listener/front-again")
        work = StepWork(
            owner, "listener", "$.load_balancers[0].listener", {"lb": "front", "protocol": "HTTP", "port": 80}
        )
        with pytest.raises(CloudError) as raised:
            built.cloud.apply(work, _noop)
        err = raised.value
        assert err.http_status == 409
        assert "80" in err.message, err.message
        assert "already using protocol HTTP and protocol_port 80" in err.message, err.message
        assert err.hint
        assert not err.retriable

    def test_an_unknown_external_network_lists_the_ones_there_are(self, built: Built) -> None:
        owner = Owner(built.plan_id, "run", "router/nowhere")
        work = StepWork(owner, "router", "$.networks[0].router", {"name": "nowhere", "external_network": "no-such"})
        with pytest.raises(CloudError, match="no-such") as raised:
            built.cloud.apply(work, _noop)
        assert "public" in raised.value.hint
        assert not raised.value.retriable

    def test_quota_exceeded_carries_neutrons_message_and_the_quota_hint(
        self, test_cloud: CloudUnderTest, unique_name: str
    ) -> None:
        admin = test_cloud.connect(admin=True)
        project = admin.identity.create_project(name=unique_name, domain_id="default")
        try:
            user = admin.identity.find_user("admin", domain_id="default")
            admin.identity.assign_project_role_to_user(project, user, admin.identity.find_role("member"))
            admin.network.update_quota(project.id, networks=0)
            conn = admin.connect_as_project(project.name)
            owner = Owner(str(uuid.uuid4()), str(uuid.uuid4()), "network/n")
            with pytest.raises(CloudError) as raised:
                OpenStackNetworkCloud(conn).apply(StepWork(owner, "network", "$.networks[0]", {"name": "n"}), _noop)
            err = raised.value
            assert "Quota exceeded for resources: ['network']" in err.message, err.message
            assert (err.http_status, err.hint, err.retriable) == (409, QUOTA_HINT, False)
        finally:
            admin.network.delete_quota(project.id)
            admin.identity.delete_project(project)


def _neutron(kind: str, message: str) -> dict[str, Any]:
    return {"NeutronError": {"type": kind, "message": message, "detail": ""}}


def _octavia(message: str) -> dict[str, Any]:
    return {"faultcode": "Client", "faultstring": message, "debuginfo": None}


class TestTranslate:
    WORK = StepWork(Owner("p", "r", "member/front/web-0"), "member", "$.load_balancers[0].pool.members")

    @pytest.mark.parametrize(
        ("exc", "message", "hint", "retriable"),
        [
            (
                http_error(409, _neutron("OverQuota", "Quota exceeded for resources: ['port'].")),
                "Quota exceeded for resources: ['port'].",
                QUOTA_HINT,
                False,
            ),
            (
                http_error(403, _octavia("Quota has been met for resources: Load Balancer")),
                "Quota has been met for resources: Load Balancer",
                QUOTA_HINT,
                False,
            ),
            (
                http_error(409, _octavia("Load Balancer 1d8c is immutable and cannot be updated.")),
                "Load Balancer 1d8c is immutable and cannot be updated.",
                IMMUTABLE_HINT,
                True,
            ),
            (
                http_error(
                    409, _neutron("IpAddressAlreadyAllocated", "IP address 10.0.0.5 already allocated in subnet s.")
                ),
                "IP address 10.0.0.5 already allocated in subnet s.",
                IN_USE_HINT,
                False,
            ),
            (
                http_error(
                    409,
                    _neutron(
                        "NetworkInUse",
                        "Unable to complete operation on network n. There are one or more ports still in use.",
                    ),
                ),
                "Unable to complete operation on network n. There are one or more ports still in use.",
                None,
                True,
            ),
            (http_error(503, {"message": "Service Unavailable"}), "Service Unavailable", None, True),
            (http_error(400, _neutron("HTTPBadRequest", "Invalid input")), "Invalid input", None, False),
        ],
    )
    def test_http_errors_keep_the_clouds_message_and_say_whether_to_retry(
        self, exc: Exception, message: str, hint: str | None, retriable: bool
    ) -> None:
        err = translate(exc, self.WORK)
        assert err.message == message
        assert err.http_status == getattr(exc, "status_code", None)
        if hint is not None:
            assert err.hint == hint
        assert err.hint
        assert err.retriable is retriable

    @pytest.mark.parametrize(
        "exc",
        [
            keystoneauth1.exceptions.ConnectFailure("Unable to establish connection to http://127.0.0.1:25004"),
            openstack.exceptions.ResourceTimeout("Timeout waiting for the load balancer"),
        ],
    )
    def test_unreachable_or_slow_clouds_are_retriable(self, exc: Exception) -> None:
        err = translate(exc, self.WORK)
        assert err.retriable
        assert "$.load_balancers[0].pool.members" in err.message
        assert str(exc) in err.message


class TestDestroy:
    def test_destroy_in_reverse_order_leaves_nothing_then_destroy_again_is_false(self, built: Built) -> None:
        done = _destroy_all(built)
        assert all(done.values()), done
        assert not any(_leftovers(built.conn, built.plan_id).values())
        assert not any(_destroy_all(built).values())
