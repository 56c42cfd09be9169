"""Previews in the planner: the diff and the checks as pure rules over what the domain services report, and
the preview API of a real planner process whose domain services cannot be reached.

What the domain services report here is written out as they answer it (see tests/e2e/test_preview.py for
the same against real services in devcloud): the rules are tested on every edge without a cloud.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from services.cli.processes import DEFAULT_PORTS
from services.planner.plans.domain import check_plan
from services.planner.previews.checks import Checker
from services.planner.previews.diff import Catalog, Live, compute_diff
from services.planner.settings import PlannerSettings
from shared.executor.marks import step_tag
from tests.fixtures.platform import Platform

PLAN_ID = uuid.UUID("12345678-aaaa-bbbb-cccc-123456789abc")

FLAVORS = [
    {"id": "1", "name": "m1.tiny", "vcpus": 1, "ram_mb": 512, "disk_gb": 1, "ephemeral_gb": 0, "swap_mb": 0},
    {"id": "3", "name": "m1.medium", "vcpus": 2, "ram_mb": 4096, "disk_gb": 40, "ephemeral_gb": 0, "swap_mb": 0},
]
IMAGES = [{"id": "img-1", "name": "cirros", "status": "active"}, {"id": "img-2", "name": "queued", "status": "queued"}]


def host(name: str, vcpu: int, ram: int, disk: int = 1000, usable: bool = True) -> dict[str, Any]:
    def r(free: int) -> dict[str, int]:
        return {"free": free, "max_unit": free}

    return {"name": name, "usable": usable, "resources": {"VCPU": r(vcpu), "MEMORY_MB": r(ram), "DISK_GB": r(disk)}}


def quota(limit: int | None, used: int = 0) -> dict[str, int | None]:
    return {"limit": limit, "used": used}


def live(**changes: Any) -> Live:
    values: dict[str, Any] = {
        "limits": {
            "instances": quota(10),
            "cores": quota(20),
            "ram_mb": quota(51200),
            "server_groups": quota(10),
            "server_group_members": {"limit": 10},
        },
        "flavors": FLAVORS,
        "images": IMAGES,
        "capacity": [host("h1", 8, 8192), host("h2", 8, 8192)],
        "capacity_not_run": None,
        "compute_resources": [],
        "network_quota": {
            k: quota(100)
            for k in (
                "networks",
                "subnets",
                "ports",
                "routers",
                "floating_ips",
                "security_groups",
                "security_group_rules",
                "load_balancers",
            )
        },
        "external_networks": [{"id": "ext-1", "name": "public", "free_ips": 50}],
        "network_resources": [],
        "storage_quota": {"volumes": quota(10), "gigabytes": quota(100)},
        "storage_resources": [],
    }
    values.update(changes)
    return Live(**values)


BASE: dict[str, Any] = {
    "name": "shop",
    "networks": [{"name": "net", "cidr": "10.0.0.0/24", "router": {"name": "r", "external_network": "public"}}],
    "security_groups": [{"name": "web", "rules": [{"protocol": "tcp", "ports": 80, "remote_cidr": "0.0.0.0/0"}]}],
    "instance_groups": [
        {
            "name": "web",
            "flavor": "m1.tiny",
            "image": "cirros",
            "count": 2,
            "networks": ["net"],
            "security_groups": ["web"],
            "floating_ip": True,
        }
    ],
    "volumes": [{"name": "data", "size_gb": 10}],
}


def document(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    doc.update(changes)
    return doc


def preview(doc: dict[str, Any], state: Live) -> tuple[Any, dict[str, Any]]:
    checked = check_plan(doc)
    catalog = Catalog(state)
    diff = compute_diff(PLAN_ID, checked.graph, {}, state, catalog)
    checks = {c.name: c for c in Checker(checked.plan, checked.graph, diff, state, catalog).run()}
    return diff, checks


def marked(kind: str, key: str, fields: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "step_key": None,
        "step_tag": step_tag(key),
        "id": f"id-{key}",
        "name": None,
        "fields": fields,
    }


def server(name: str, flavor: str = "m1.tiny", image: str = "img-1", status: str = "ACTIVE") -> dict[str, Any]:
    return {
        "kind": "server",
        "step_key": f"server/{name}",
        "step_tag": step_tag(f"server/{name}"),
        "id": f"id-{name}",
        "name": f"dcs-12345678-{name}",
        "fields": {"flavor": flavor, "image_id": image, "status": status},
        "vcpus": 1,
        "ram_mb": 512,
    }


class TestDiff:
    def test_nothing_live_means_every_step_is_a_create(self) -> None:
        diff, _ = preview(document(), live())
        counts = diff.counts()
        assert counts == {"create": len(check_plan(document()).graph.steps), "change": 0, "delete": 0, "unchanged": 0}

    def test_marked_resources_are_unchanged_changed_or_deleted(self) -> None:
        state = live(
            compute_resources=[server("web-0"), server("web-1", flavor="m1.medium"), server("web-2")],
            network_resources=[
                marked("network", "network/net", {}),
                marked("subnet", "subnet/net", {"cidr": "10.0.0.0/24", "dns": []}),
                marked(
                    "security_group_rule",
                    "security-group-rule/web/0",
                    {
                        "direction": "ingress",
                        "protocol": "tcp",
                        "ports": "8080",
                        "remote_cidr": "0.0.0.0/0",
                        "remote_group_step_tag": None,
                    },
                ),
                # a network resource of the plan that no version names: found by its display name and mark
                {
                    "kind": "security_group",
                    "step_key": None,
                    "step_tag": step_tag("security-group/old"),
                    "id": "sg-old",
                    "name": "dcs-12345678-old",
                    "fields": {},
                },
            ],
            storage_resources=[
                {
                    "kind": "volume",
                    "step_key": "volume/data",
                    "step_tag": step_tag("volume/data"),
                    "id": "v",
                    "name": "dcs-12345678-data",
                    "fields": {"size_gb": 5, "type": "lvm", "status": "available"},
                }
            ],
        )
        diff, _ = preview(document(), state)
        by_key = {e.key: e for e in diff.entries}
        assert by_key["server/web-0"].action == "unchanged"
        assert by_key["server/web-1"].action == "change"
        assert by_key["server/web-1"].changes == {"flavor": {"old": "m1.medium", "new": "m1.tiny"}}
        assert by_key["server/web-2"].action == "delete"
        assert by_key["network/net"].action == "unchanged"
        assert by_key["subnet/net"].action == "unchanged"
        assert by_key["security-group-rule/web/0"].changes == {"ports": {"old": "8080", "new": "80"}}
        assert by_key["volume/data"].changes == {"size_gb": {"old": 5, "new": 10}}
        assert by_key["security-group/old"].action == "delete"
        assert by_key["router/r"].action == "create"
        # deletes come last, in the order a destroy takes them
        actions = [e.action for e in diff.entries]
        assert actions.index("delete") == len(actions) - 2

    def test_a_server_in_error_is_a_change_because_apply_rebuilds_it(self) -> None:
        diff, _ = preview(document(), live(compute_resources=[server("web-0", status="ERROR")]))
        (entry,) = [e for e in diff.entries if e.key == "server/web-0"]
        assert entry.changes == {"status": {"old": "ERROR", "new": "ACTIVE"}}


class TestQuotaChecks:
    def test_shortfall_names_the_quota_the_amount_and_the_plan_field(self) -> None:
        doc = document()
        doc["instance_groups"][0]["count"] = 8
        limits = {**live().limits, "instances": quota(10, used=7)}
        _, checks = preview(doc, live(limits=limits))
        check = checks["quota: instances"]
        assert check.status == "failed"
        assert (check.needed, check.available, check.shortfall) == (8, 3, 5)
        assert check.paths == ["$.instance_groups[0].count"]
        assert "needs 8 more, 3 free of 10" in check.message
        assert "raise the quota or lower $.instance_groups[0].count" in check.message

    def test_deletes_give_back_what_they_hold(self) -> None:
        doc = document()
        doc["instance_groups"][0]["count"] = 3  # web-0..2 wanted; web-0..4 live: two deletes, no create
        live_servers = [server(f"web-{i}") for i in range(5)]
        limits = {**live().limits, "instances": quota(5, used=5)}
        diff, checks = preview(doc, live(limits=limits, compute_resources=live_servers))
        assert diff.counts()["delete"] == 2
        assert checks["quota: instances"].status == "passed"

    def test_ram_and_cores_follow_the_flavor(self) -> None:
        doc = document()
        doc["instance_groups"][0]["flavor"] = "m1.medium"
        limits = {**live().limits, "ram_mb": quota(8192, used=4096)}
        _, checks = preview(doc, live(limits=limits))
        assert checks["quota: RAM"].status == "failed"
        assert checks["quota: RAM"].shortfall == 4096
        assert checks["quota: cores"].status == "passed"

    def test_ports_count_servers_router_interface_and_dhcp(self) -> None:
        network_quota = {**live().network_quota, "ports": quota(5, used=2)}
        _, checks = preview(document(), live(network_quota=network_quota))
        # 2 servers + 1 router interface + 1 DHCP port = 4 > 3 free
        assert checks["quota: ports"].status == "failed"
        assert checks["quota: ports"].needed == 4

    def test_an_unreadable_quota_is_not_run_never_passed(self) -> None:
        network_quota = {k: v for k, v in live().network_quota.items() if k != "floating_ips"}
        network_quota["unreadable"] = {"floating_ips": "403 policy does not allow"}
        _, checks = preview(document(), live(network_quota=network_quota))
        assert checks["quota: floating IPs"].status == "not_run"
        assert "403 policy" in checks["quota: floating IPs"].message


class TestNames:
    def test_unknown_flavor_image_and_external_network_fail_with_their_paths(self) -> None:
        doc = document()
        doc["instance_groups"][0] |= {"flavor": "m9.huge", "image": "queued"}
        doc["networks"][0]["router"]["external_network"] = "internet"
        _, checks = preview(doc, live())
        assert checks["flavor 'm9.huge'"].paths == ["$.instance_groups[0].flavor"]
        assert "m1.medium, m1.tiny" in checks["flavor 'm9.huge'"].message
        assert "is queued, not active" in checks["image 'queued'"].message
        ext = checks["external network 'internet'"]
        assert ext.status == "failed"
        assert ext.paths == ["$.networks[0].router.external_network"]
        assert "public" in ext.fix

    def test_free_addresses_on_the_external_network_are_checked_when_readable(self) -> None:
        _, checks = preview(document(), live(external_networks=[{"id": "e", "name": "public", "free_ips": 2}]))
        # router gateway + 2 floating IPs
        assert checks["addresses on 'public'"].shortfall == 1
        unreadable = [{"id": "e", "name": "public", "free_ips": None, "free_ips_unreadable": "admin only"}]
        _, checks = preview(document(), live(external_networks=unreadable))
        assert checks["addresses on 'public'"].status == "not_run"


class TestSubnetRoom:
    def test_a_small_subnet_fails_with_the_prefix_that_would_fit(self) -> None:
        doc = document()
        doc["networks"][0]["cidr"] = "10.0.0.0/29"  # 5 usable addresses
        doc["instance_groups"][0]["count"] = 6
        _, checks = preview(doc, live())
        check = checks["subnet room: net"]
        assert check.status == "failed"
        assert check.needed == 8  # 6 servers, router, DHCP
        assert "$.networks[0].cidr a /28 or larger" in check.fix


class TestCapacity:
    def test_not_configured_is_reported_as_not_run_with_the_reason(self) -> None:
        _, checks = preview(document(), live(capacity=None, capacity_not_run="DCOSTACK_CAPACITY_CLOUD is not set"))
        check = checks["host capacity"]
        assert check.status == "not_run"
        assert check.ok is None
        assert "DCOSTACK_CAPACITY_CLOUD is not set" in check.message

    def test_a_flavor_larger_than_every_host_is_named(self) -> None:
        doc = document()
        doc["instance_groups"][0]["flavor"] = "m1.medium"
        _, checks = preview(doc, live(capacity=[host("h1", 8, 2048), host("h2", 8, 2048)]))
        check = checks["host capacity"]
        assert check.status == "failed"
        assert "flavor 'm1.medium'" in check.message
        assert check.paths == ["$.instance_groups[0].flavor"]

    def test_servers_are_packed_across_hosts(self) -> None:
        doc = document()
        doc["instance_groups"][0]["count"] = 6
        doc["instance_groups"][0]["flavor"] = "m1.medium"  # 4096 MB: two per 8192 MB host
        _, checks = preview(doc, live(capacity=[host("h1", 8, 8192), host("h2", 8, 8192)]))
        check = checks["host capacity"]
        assert check.status == "failed"
        assert (check.needed, check.available, check.shortfall) == (6, 4, 2)

    def test_anti_affinity_needs_a_host_per_server_and_skips_unusable_hosts(self) -> None:
        doc = document()
        doc["instance_groups"][0] |= {"count": 3, "server_group": {"policy": "anti-affinity"}}
        hosts = [host("h1", 64, 65536), host("h2", 64, 65536), host("h3", 64, 65536, usable=False)]
        _, checks = preview(doc, live(capacity=hosts))
        check = checks["host capacity"]
        assert check.status == "failed"
        assert "only 2 usable hosts" in check.message
        doc["instance_groups"][0]["server_group"] = {"policy": "soft-anti-affinity"}
        _, checks = preview(doc, live(capacity=hosts))
        assert checks["host capacity"].status == "passed"


# --- the API of a real planner whose domain services are not running -----------------------------------------


@pytest.fixture
def planner(platform_factory: Callable[..., Platform]) -> Platform:
    return platform_factory("planner")


class TestPreviewApi:
    def test_an_unknown_plan_is_404(self, planner: Platform) -> None:
        with planner.http("planner") as api:
            r = api.post(f"/v1/plans/{uuid.uuid4()}/preview", json={})
        assert r.status_code == 404, r.text
        assert r.json()["error"] == "PlanNotFound"

    def test_unreachable_domain_services_are_503_naming_the_service_and_its_setting(self, planner: Platform) -> None:
        with planner.http("planner") as api:
            r = api.post("/v1/plans", json=document())
            assert r.status_code == 201, r.text
            plan_id = r.json()["id"]
            r = api.post(f"/v1/plans/{plan_id}/preview")
        assert r.status_code == 503, r.text
        detail = r.json()["detail"]
        assert any(f"the {s} service at http://127.0.0.1:" in detail for s in ("compute", "network", "storage"))
        assert "_URL)" in detail
        assert "not reachable" in detail

    def test_without_compute_a_plan_is_stored_with_a_warning_not_refused(self, planner: Platform) -> None:
        with planner.http("planner") as api:
            r = api.post("/v1/plans/validate", json=document(name="warned"))
            assert r.status_code == 200, r.text
            (warning,) = r.json()["warnings"]
            assert "flavors and images were not checked" in warning
            assert "DCOSTACK_COMPUTE_URL" in warning
            r = api.post("/v1/plans", json=document(name="warned"))
            assert r.status_code == 201, r.text
            assert "DCOSTACK_COMPUTE_URL" in r.json()["warnings"][0]
            r = api.put(f"/v1/plans/{r.json()['id']}", json=document(name="warned", description="v2"))
            assert r.status_code == 200, r.text
            assert r.json()["version"]["version"] == 2
            assert r.json()["warnings"]

    def test_a_stored_preview_that_does_not_exist_is_404(self, planner: Platform) -> None:
        with httpx.Client(base_url=planner["planner"].base_url) as api:
            r = api.get(f"/v1/previews/{uuid.uuid4()}")
        assert r.status_code == 404
        assert "POST /v1/plans/{id}/preview" in r.json()["detail"]


class TestDomainServiceUrls:
    def test_defaults_are_the_ports_dcostack_up_gives_the_services(self) -> None:
        fields = PlannerSettings.model_fields
        for name in ("compute", "network", "storage"):
            assert fields[f"{name}_url"].default == f"http://127.0.0.1:{DEFAULT_PORTS[name]}"

    def test_compose_points_the_planner_at_the_domain_services(self) -> None:
        compose = yaml.safe_load((Path(__file__).parents[2] / "docker-compose.yml").read_text())
        env = compose["services"]["planner"]["environment"]
        for name in ("compute", "network", "storage"):
            assert env[f"DCOSTACK_{name.upper()}_URL"] == f"http://{name}:8080"
            assert name in compose["services"]
