"""A validated plan compiles to a DAG of steps: what is created, by which service, in which order."""

from __future__ import annotations

import copy
import graphlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.planner.plans.compiler import Graph, Step, compile_plan
from services.planner.plans.spec import Plan, validate_plan

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "two-tier.yaml"


def example(**parameters: Any) -> Plan:
    return validate_plan(yaml.safe_load(EXAMPLE.read_text()), parameters)


def kinds(graph: Graph) -> Counter[str]:
    return Counter(s.kind for s in graph.steps.values())


def ancestors(graph: Graph, key: str) -> set[str]:
    """Every step that must be complete before ``key`` starts."""
    seen: set[str] = set()
    todo = list(graph.steps[key].after)
    while todo:
        k = todo.pop()
        if k not in seen:
            seen.add(k)
            todo += graph.steps[k].after
    return seen


def levels(graph: Graph) -> dict[str, int]:
    """How many steps, at least, must be done one after the other before a step can start."""
    out: dict[str, int] = {}
    for key in graph.order():
        out[key] = 1 + max((out[d] for d in graph.steps[key].after), default=-1)
    return out


def small_plan(count: int, batch_size: int, **group: Any) -> Plan:
    return validate_plan(
        {
            "name": "small",
            "networks": [{"name": "net", "cidr": "10.1.0.0/24"}],
            "instance_groups": [
                {"name": "g", "flavor": "f", "image": "i", "count": count, "networks": ["net"], **group}
            ],
            "rollout": {"batch_size": batch_size},
        }
    )


@pytest.fixture(scope="module")
def graph() -> Graph:
    return compile_plan(example())


class TestExample:
    def test_steps_per_kind_match_the_plan(self, graph: Graph) -> None:
        assert kinds(graph) == {
            "network": 1,
            "subnet": 1,
            "router": 1,
            "router_interface": 1,
            "security_group": 2,
            "security_group_rule": 3,
            "server_group": 1,
            "volume": 2,  # one data volume per app server
            "server": 4,
            "volume_attachment": 2,
            "floating_ip": 2,  # web only
            "load_balancer": 1,
            "listener": 1,
            "pool": 1,
            "member": 2,  # one per web server
            "health_monitor": 1,
        }

    def test_step_keys(self, graph: Graph) -> None:
        assert sorted(graph.steps) == sorted(
            [
                "network/two-tier-net",
                "subnet/two-tier-net",
                "router/two-tier-router",
                "router-interface/two-tier-router/two-tier-net",
                "security-group/web",
                "security-group/app",
                "security-group-rule/web/0",
                "security-group-rule/web/1",
                "security-group-rule/app/0",
                "server-group/app",
                "volume/app-0/data",
                "volume/app-1/data",
                "server/app-0",
                "server/app-1",
                "server/web-0",
                "server/web-1",
                "volume-attachment/app-0/data",
                "volume-attachment/app-1/data",
                "floating-ip/web-0",
                "floating-ip/web-1",
                "load-balancer/web-lb",
                "listener/web-lb",
                "pool/web-lb",
                "member/web-lb/web-0",
                "member/web-lb/web-1",
                "health-monitor/web-lb",
            ]
        )
        assert all(step.key == key for key, step in graph.steps.items())

    def test_each_step_belongs_to_one_domain_service(self, graph: Graph) -> None:
        by_kind = {s.kind: s.service for s in graph.steps.values()}
        assert {k for k, s in by_kind.items() if s == "compute"} == {"server", "server_group", "volume_attachment"}
        assert {k for k, s in by_kind.items() if s == "storage"} == {"volume"}
        assert set(by_kind.values()) == {"network", "compute", "storage"}

    def test_steps_say_where_in_the_plan_they_come_from(self, graph: Graph) -> None:
        assert graph.steps["server/web-1"].path == "$.instance_groups[1]"
        assert graph.steps["volume/app-0/data"].path == "$.instance_groups[0].volumes[0]"
        assert graph.steps["security-group-rule/web/1"].path == "$.security_groups[0].rules[1]"
        assert graph.steps["member/web-lb/web-0"].path == "$.load_balancers[0].pool.members"
        assert graph.steps["subnet/two-tier-net"].path == "$.networks[0].cidr"

    def test_server_steps_carry_the_substituted_plan(self, graph: Graph) -> None:
        web = graph.steps["server/web-1"].params
        assert web["name"] == "web-1"
        assert (web["group"], web["index"]) == ("web", 1)
        assert (web["flavor"], web["image"]) == ("m1.tiny", "devcloud-tiny")
        assert (web["networks"], web["security_groups"]) == (["two-tier-net"], ["web"])
        assert web["server_group"] is None
        assert web["metadata"] == {"tier": "web"}
        assert 'content: "app tier of 2 servers"' in web["user_data"]
        assert graph.steps["server/app-0"].params["server_group"] == "app"
        assert graph.steps["server-group/app"].params["policy"] == "soft-anti-affinity"

    def test_resource_steps_carry_what_the_service_needs(self, graph: Graph) -> None:
        assert graph.steps["subnet/two-tier-net"].params == {
            "network": "two-tier-net",
            "cidr": "10.42.0.0/24",
            "dns": ["10.42.0.2"],
        }
        assert graph.steps["router/two-tier-router"].params["external_network"] == "public"
        rule = graph.steps["security-group-rule/app/0"].params
        assert (rule["group"], rule["protocol"], rule["ports"], rule["remote_group"]) == ("app", "tcp", 8080, "web")
        assert graph.steps["volume/app-1/data"].params == {"name": "app-1-data", "size_gb": 1, "type": None}
        assert graph.steps["volume-attachment/app-1/data"].params == {"server": "app-1", "volume": "app-1-data"}
        assert graph.steps["member/web-lb/web-0"].params == {
            "lb": "web-lb",
            "server": "web-0",
            "port": 80,
            "network": "two-tier-net",
        }
        assert graph.steps["listener/web-lb"].params == {"lb": "web-lb", "protocol": "HTTP", "port": 80}
        assert graph.steps["health-monitor/web-lb"].params["url_path"] == "/"


class TestOrder:
    def test_is_a_complete_topological_order(self, graph: Graph) -> None:
        order = graph.order()
        assert sorted(order) == sorted(graph.steps)
        position = {k: i for i, k in enumerate(order)}
        for key, step in graph.steps.items():
            assert step.after <= graph.steps.keys(), f"{key} depends on a step that does not exist"
            for dep in step.after:
                assert position[dep] < position[key], f"{key} before {dep}"

    # (a step, steps that must be complete before it starts)
    CHAIN = [
        ("subnet/two-tier-net", ["network/two-tier-net"]),
        ("router-interface/two-tier-router/two-tier-net", ["router/two-tier-router", "subnet/two-tier-net"]),
        ("security-group-rule/app/0", ["security-group/app", "security-group/web"]),
        (
            "server/app-0",
            [
                "network/two-tier-net",
                "subnet/two-tier-net",
                "router/two-tier-router",
                "router-interface/two-tier-router/two-tier-net",
                "security-group/app",
                "security-group-rule/app/0",
                "server-group/app",
            ],
        ),
        ("volume-attachment/app-0/data", ["volume/app-0/data", "server/app-0"]),
        ("server/web-0", ["security-group/web", "security-group-rule/web/0", "security-group-rule/web/1"]),
        ("server/web-0", ["server/app-0", "server/app-1"]),  # depends_on: [app]
        ("floating-ip/web-0", ["server/web-0", "router-interface/two-tier-router/two-tier-net"]),
        ("load-balancer/web-lb", ["network/two-tier-net", "subnet/two-tier-net"]),
        ("listener/web-lb", ["load-balancer/web-lb"]),
        ("pool/web-lb", ["listener/web-lb", "load-balancer/web-lb"]),
        ("member/web-lb/web-1", ["pool/web-lb", "listener/web-lb", "load-balancer/web-lb", "server/web-1"]),
        ("health-monitor/web-lb", ["pool/web-lb"]),
    ]

    @pytest.mark.parametrize(("key", "before"), CHAIN, ids=[f"{k}-{i}" for i, (k, _) in enumerate(CHAIN)])
    def test_respects_what_the_cloud_needs(self, graph: Graph, key: str, before: list[str]) -> None:
        assert set(before) <= ancestors(graph, key)
        position = {k: i for i, k in enumerate(graph.order())}
        assert all(position[b] < position[key] for b in before)

    # (kind, a kind of which every such step waits for at least one)
    KIND_CHAIN = [
        ("subnet", "network"),
        ("router_interface", "router"),
        ("router_interface", "subnet"),
        ("security_group_rule", "security_group"),
        ("server", "subnet"),
        ("server", "router_interface"),
        ("server", "security_group_rule"),
        ("volume_attachment", "volume"),
        ("volume_attachment", "server"),
        ("floating_ip", "server"),
        ("floating_ip", "router_interface"),
        ("load_balancer", "subnet"),
        ("listener", "load_balancer"),
        ("pool", "listener"),
        ("member", "pool"),
        ("member", "server"),
        ("health_monitor", "pool"),
    ]

    @pytest.mark.parametrize(("later", "earlier"), KIND_CHAIN, ids=[f"{a}-after-{b}" for a, b in KIND_CHAIN])
    def test_every_step_of_a_kind_waits_for_its_prerequisites(self, graph: Graph, later: str, earlier: str) -> None:
        steps = [k for k, s in graph.steps.items() if s.kind == later]
        assert steps
        for key in steps:
            assert any(graph.steps[a].kind == earlier for a in ancestors(graph, key)), key

    def test_members_wait_only_for_their_own_server(self, graph: Graph) -> None:
        assert "server/web-1" not in ancestors(graph, "member/web-lb/web-0")
        assert "server/web-0" not in ancestors(graph, "floating-ip/web-1")

    def test_reverse_order_is_the_exact_reverse(self, graph: Graph) -> None:
        assert graph.reverse_order() == list(reversed(graph.order()))

    def test_reverse_order_removes_a_step_only_after_everything_that_depends_on_it(self, graph: Graph) -> None:
        position = {k: i for i, k in enumerate(graph.reverse_order())}
        for key, step in graph.steps.items():
            for dep in step.after:
                assert position[key] < position[dep], f"{dep} removed before {key}, which depends on it"
        assert not graph.steps[graph.reverse_order()[-1]].after
        assert position["member/web-lb/web-0"] < position["server/web-0"] < position["subnet/two-tier-net"]

    def test_order_is_sorted_within_a_level(self, graph: Graph) -> None:
        level = levels(graph)
        order = graph.order()
        # order() releases steps in waves; each wave is sorted by key
        waves: list[list[str]] = []
        done: set[str] = set()
        remaining = list(order)
        while remaining:
            wave = [k for k in remaining if graph.steps[k].after <= done]
            assert remaining[: len(wave)] == sorted(wave)
            waves.append(wave)
            done |= set(wave)
            remaining = remaining[len(wave) :]
        assert [max(level[k] for k in w) for w in waves] == list(range(len(waves)))

    def test_a_cyclic_graph_is_refused(self) -> None:
        cyclic = Graph(
            {
                "a": Step("a", "network", "network", "$", after=frozenset({"b"})),
                "b": Step("b", "network", "network", "$", after=frozenset({"a"})),
            }
        )
        with pytest.raises(graphlib.CycleError):
            cyclic.order()


class TestDeterminism:
    def test_two_compilations_are_identical(self) -> None:
        first, second = compile_plan(example()), compile_plan(example())
        assert first.order() == second.order()
        assert first.reverse_order() == second.reverse_order()
        assert first.steps == second.steps
        for key, step in first.steps.items():
            other = second.steps[key]
            assert (step.service, step.kind, step.path, step.after, step.params) == (
                other.service,
                other.kind,
                other.path,
                other.after,
                other.params,
            )

    def test_order_does_not_depend_on_declaration_order(self) -> None:
        raw = yaml.safe_load(EXAMPLE.read_text())
        shuffled = copy.deepcopy(raw)
        shuffled["security_groups"].reverse()
        a, b = compile_plan(validate_plan(raw)), compile_plan(validate_plan(shuffled))
        assert a.order() == b.order()
        assert {k: s.after for k, s in a.steps.items()} == {k: s.after for k, s in b.steps.items()}

    def test_scaling_keeps_the_keys_of_existing_steps(self) -> None:
        small, large = compile_plan(example(web_count=2)), compile_plan(example(web_count=4))
        assert set(small.steps) < set(large.steps)
        assert set(large.steps) - set(small.steps) == {
            "server/web-2",
            "server/web-3",
            "floating-ip/web-2",
            "floating-ip/web-3",
            "member/web-lb/web-2",
            "member/web-lb/web-3",
        }


class TestCounts:
    @pytest.mark.parametrize(("web", "app"), [(0, 0), (1, 0), (3, 2), (7, 11)])
    def test_steps_follow_the_counts(self, web: int, app: int) -> None:
        graph = compile_plan(example(web_count=web, app_count=app))
        n = kinds(graph)
        assert n["server"] == web + app
        assert sorted(k for k, s in graph.steps.items() if s.kind == "server" and s.params["group"] == "web") == sorted(
            f"server/web-{i}" for i in range(web)
        )
        assert (n["floating_ip"], n["member"]) == (web, web)
        assert (n["volume"], n["volume_attachment"]) == (app, app)
        assert (n["load_balancer"], n["listener"], n["pool"]) == (1, 1, 1)

    def test_count_three_gives_three_servers(self) -> None:
        graph = compile_plan(small_plan(3, 10))
        assert sorted(k for k, s in graph.steps.items() if s.kind == "server") == [
            "server/g-0",
            "server/g-1",
            "server/g-2",
        ]

    def test_shared_router_is_created_once_with_an_interface_per_network(self) -> None:
        plan = validate_plan(
            {
                "name": "shared",
                "networks": [
                    {"name": "a", "cidr": "10.1.0.0/24", "router": {"name": "r", "external_network": "public"}},
                    {"name": "b", "cidr": "10.2.0.0/24", "router": {"name": "r", "external_network": "public"}},
                ],
                "volumes": [{"name": "shared-data", "size_gb": 10}],
                "object_containers": [{"name": "Backups.2024"}],
            }
        )
        graph = compile_plan(plan)
        assert kinds(graph) == {
            "network": 2,
            "subnet": 2,
            "router": 1,
            "router_interface": 2,
            "volume": 1,
            "object_container": 1,
        }
        assert graph.steps["router-interface/r/b"].after == {"router/r", "subnet/b"}
        assert graph.steps["volume/shared-data"].params == {"name": "shared-data", "size_gb": 10, "type": None}
        assert graph.steps["container/Backups.2024"].service == "storage"


class TestRollout:
    def servers_before(self, graph: Graph, key: str) -> set[str]:
        return {k for k in graph.steps[key].after if k.startswith("server/")}

    def test_servers_come_in_batches_each_after_the_previous_one(self) -> None:
        graph = compile_plan(small_plan(5, 2))
        assert self.servers_before(graph, "server/g-0") == set()
        assert self.servers_before(graph, "server/g-1") == set()
        assert self.servers_before(graph, "server/g-2") == {"server/g-0", "server/g-1"}
        assert self.servers_before(graph, "server/g-3") == {"server/g-0", "server/g-1"}
        assert self.servers_before(graph, "server/g-4") == {"server/g-2", "server/g-3"}
        level = levels(graph)
        assert [level[f"server/g-{i}"] for i in range(5)] == [2, 2, 3, 3, 4]

    @pytest.mark.parametrize(("count", "batch_size"), [(1, 1), (4, 1), (10, 3), (9, 3), (6, 10), (500, 7)])
    def test_batch_sizes(self, count: int, batch_size: int) -> None:
        graph = compile_plan(small_plan(count, batch_size))
        level = levels(graph)
        by_level = Counter(level[k] for k, s in graph.steps.items() if s.kind == "server")
        batches = -(-count // batch_size)
        assert len(by_level) == batches
        assert max(by_level.values()) == min(count, batch_size)
        for i in range(count):
            batch = i // batch_size
            expected = (
                {f"server/g-{j}" for j in range((batch - 1) * batch_size, batch * batch_size)} if batch else set()
            )
            assert self.servers_before(graph, f"server/g-{i}") == expected

    def test_batches_of_one_group_do_not_hold_back_another(self) -> None:
        graph = compile_plan(example(app_count=12))
        # app servers are batched by 5 (rollout.batch_size); web depends on every app server
        assert self.servers_before(graph, "server/app-4") == set()
        assert self.servers_before(graph, "server/app-5") == {f"server/app-{i}" for i in range(5)}
        assert self.servers_before(graph, "server/app-10") == {f"server/app-{i}" for i in range(5, 10)}
        assert self.servers_before(graph, "server/web-0") == {f"server/app-{i}" for i in range(12)}
        assert self.servers_before(graph, "server/web-1") == {f"server/app-{i}" for i in range(12)}

    def test_depends_on_waits_for_every_server_of_the_group(self) -> None:
        graph = compile_plan(example(app_count=3, web_count=7))
        app = {f"server/app-{i}" for i in range(3)}
        for i in range(7):
            assert app <= ancestors(graph, f"server/web-{i}")
        # and web's own batches of 5 still apply
        assert self.servers_before(graph, "server/web-6") == app | {f"server/web-{i}" for i in range(5)}

    def test_groups_without_depends_on_start_together(self) -> None:
        raw = yaml.safe_load(EXAMPLE.read_text())
        del raw["instance_groups"][1]["depends_on"]
        graph = compile_plan(validate_plan(raw))
        level = levels(graph)
        assert level["server/web-0"] == level["server/app-0"]
        assert not self.servers_before(graph, "server/web-0")

    def test_max_parallel_is_left_to_the_executor(self) -> None:
        """The graph encodes dependencies and batches only; max_parallel caps concurrency when it runs."""
        raw = yaml.safe_load(EXAMPLE.read_text())
        one, many = copy.deepcopy(raw), copy.deepcopy(raw)
        one["rollout"]["max_parallel"], many["rollout"]["max_parallel"] = 1, 500
        a, b = compile_plan(validate_plan(one)), compile_plan(validate_plan(many))
        assert a.order() == b.order()
        assert {k: s.after for k, s in a.steps.items()} == {k: s.after for k, s in b.steps.items()}
