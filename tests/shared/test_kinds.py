"""The step contract (shared/events/kinds.py): every step the compiler emits is a valid params model of its
kind, the orders and tables derived from the models agree with the compiled DAG and with the tables they
replace, and ApplyStepV2/DestroyStepV2 carry typed params through the envelope."""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import TypeAdapter, ValidationError

from services.planner.plans.compiler import Graph, Step, compile_plan
from services.planner.plans.spec import validate_plan
from shared.events import REGISTRY
from shared.events.envelope import decode, encode_headers, encode_value, kafka_headers
from shared.events.kinds import (
    CREATION_ORDER,
    DELETE_ORDER,
    DOMAIN_OF,
    KEY_PREFIX,
    MODELS,
    PREFIX_BY_NAME,
    Kind,
    ServerParams,
    StepError,
    StepParams,
    SubnetParams,
    creation_rank,
    delete_rank,
    domain_of,
    kind_of_key,
    params_model,
    parse_params,
    quota_cost,
    step_key,
)
from shared.events.steps import ApplyStepV1, ApplyStepV2, DestroyStepV2
from shared.executor.errors import CloudError

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))

#: A plan with every kind, and every optional field of a rule and a volume given once.
EVERY_KIND = {
    "name": "every-kind",
    "networks": [
        {
            "name": "front",
            "cidr": "10.7.0.0/24",
            "dns": ["10.7.0.2"],
            "router": {"name": "r", "external_network": "ext"},
        },
        {"name": "back", "cidr": "10.7.1.0/24"},
    ],
    "security_groups": [
        {"name": "web", "rules": [{"protocol": "tcp", "ports": "80-81", "remote_cidr": "0.0.0.0/0"}]},
        {"name": "db", "rules": [{"ports": 5432, "remote_group": "web"}, {"protocol": "icmp", "direction": "egress"}]},
    ],
    "volumes": [{"name": "shared", "size_gb": 10, "type": "ssd"}],
    "object_containers": [{"name": "Backups.v1"}],
    "instance_groups": [
        {
            "name": "db",
            "flavor": "m1.small",
            "image": "img",
            "count": 2,
            "networks": ["back"],
            "security_groups": ["db"],
            "server_group": {"policy": "anti-affinity"},
            "volumes": [{"name": "data", "size_gb": 5}],
        },
        {
            "name": "web",
            "flavor": "m1.tiny",
            "image": "img",
            "count": 3,
            "networks": ["front", "back"],
            "security_groups": ["web"],
            "key_pair": "ops",
            "floating_ip": True,
            "user_data": "#cloud-config\n",
            "metadata": {"tier": "web"},
            "depends_on": ["db"],
        },
    ],
    "load_balancers": [
        {
            "name": "lb",
            "network": "front",
            "listener": {"port": 80},
            "pool": {"members": {"group": "web", "port": 8080}},
            "health_monitor": {"type": "TCP", "delay": 4, "timeout": 2},
        }
    ],
    "rollout": {"batch_size": 2},
}


def graphs() -> list[tuple[str, Graph]]:
    out = [(path.name, compile_plan(validate_plan(yaml.safe_load(path.read_text())))) for path in EXAMPLES]
    return [*out, ("every-kind", compile_plan(validate_plan(EVERY_KIND)))]


GRAPHS = graphs()
STEPS = [pytest.param(step, id=f"{name}:{step.key}") for name, graph in GRAPHS for step in graph.steps.values()]


def spec_of(step: Step) -> Any:
    assert step.spec is not None, f"{step.key} has no typed params"
    return step.spec


class TestCompiledStepsAreTyped:
    def test_the_examples_and_the_every_kind_plan_emit_every_kind(self) -> None:
        assert EXAMPLES, "examples/*.yaml is empty"
        assert {s.kind for _, g in GRAPHS for s in g.steps.values()} == set(Kind)

    @pytest.mark.parametrize("step", STEPS)
    def test_step_params_validate_into_their_kinds_model(self, step: Step) -> None:
        model = params_model(step.kind)
        assert type(spec_of(step)) is model
        assert model.model_validate({**step.params, "kind": step.kind}) == step.spec
        assert TypeAdapter(StepParams).validate_python({**step.params, "kind": step.kind}) == step.spec

    @pytest.mark.parametrize("step", STEPS)
    def test_service_and_key_prefix_come_from_the_kind(self, step: Step) -> None:
        assert step.service == domain_of(step.kind) == DOMAIN_OF[Kind(step.kind)]
        assert kind_of_key(step.key) == step.kind
        assert step.key.startswith(step_key(step.kind, ""))

    @pytest.mark.parametrize("step", STEPS)
    def test_the_dict_view_is_json_without_the_kind_tag(self, step: Step) -> None:
        assert "kind" not in step.params
        assert parse_params(step.kind, step.params).as_dict() == step.params

    def test_a_dict_stored_before_the_models_compares_equal(self) -> None:
        """Ledger rows hold the V1 dicts, and the planner compares them with what it compiles now."""
        graph = dict(GRAPHS)["every-kind"]
        assert graph.steps["security-group/web"].params == {"name": "web"}
        assert graph.steps["volume/db-0/data"].params == {"name": "db-0-data", "size_gb": 5, "type": None}
        assert graph.steps["security-group-rule/db/0"].params == {
            "group": "db",
            "protocol": "tcp",
            "ports": 5432,
            "remote_cidr": None,
            "remote_group": "web",
            "direction": "ingress",
        }

    def test_unknown_fields_are_ignored_and_a_missing_required_field_is_named(self) -> None:
        assert parse_params("subnet", {"network": "n", "cidr": "10.0.0.0/24", "future": 1}) == SubnetParams(
            network="n", cidr="10.0.0.0/24"
        )
        with pytest.raises(ValidationError, match="flavor"):
            parse_params("server", {"name": "web-0", "group": "web", "index": 0, "image": "i"})

    def test_a_step_whose_params_are_of_another_kind_is_refused(self) -> None:
        spec = spec_of(dict(GRAPHS)["every-kind"].steps["server/web-0"])
        with pytest.raises(ValueError, match="is of kind 'volume' but its params are of kind 'server'"):
            Step("server/web-0", "compute", "volume", "$", spec)

    def test_an_unknown_kind_names_the_known_ones(self) -> None:
        with pytest.raises(KeyError, match="unknown step kind 'gateway'; known kinds: network, subnet"):
            params_model("gateway")


class TestOrders:
    @pytest.mark.parametrize("step", STEPS)
    def test_a_steps_dependencies_have_a_lower_rank_or_its_own_kind(self, step: Step) -> None:
        graph = next(g for _, g in GRAPHS if step.key in g.steps and g.steps[step.key] is step)
        for dep in step.after:
            other = graph.steps[dep].kind
            if other == step.kind:
                assert step.kind == "server", f"{step.key} waits for {dep} of its own kind"
            else:
                assert creation_rank(other) < creation_rank(step.kind), f"{step.key} waits for {dep}"

    def test_ranks_follow_the_enum_and_are_each_used_once(self) -> None:
        assert CREATION_ORDER == tuple(Kind)
        assert [creation_rank(k) for k in CREATION_ORDER] == list(range(len(Kind)))

    def test_the_delete_order_is_the_reverse_of_the_creation_order(self) -> None:
        assert DELETE_ORDER == tuple(reversed(CREATION_ORDER))
        assert [delete_rank(k) for k in DELETE_ORDER] == list(range(len(Kind)))

    def test_unknown_kinds_rank_where_the_planner_puts_them(self) -> None:
        assert creation_rank("gateway") == len(Kind)  # runs.destroy_after: rank.get(kind, len(rank))
        assert delete_rank("gateway") == 0  # preview: _DELETE_ORDER.get(kind, 0)


class TestReplacesThePlannerTables:
    """The tables the planner repeated before they were derived (runs.KIND_ORDER, preview._DELETE_ORDER,
    preview._KEY_PREFIX, preview.quota_taken), as they were at 0f689ef; the derived ones must agree."""

    KIND_ORDER = (
        "network",
        "subnet",
        "router",
        "router_interface",
        "security_group",
        "security_group_rule",
        "volume",
        "object_container",
        "server_group",
        "server",
        "volume_attachment",
        "floating_ip",
        "load_balancer",
        "listener",
        "pool",
        "member",
        "health_monitor",
    )
    PREVIEW_DELETE_ORDER = (
        "health_monitor",
        "member",
        "pool",
        "listener",
        "load_balancer",
        "floating_ip",
        "volume_attachment",
        "server",
        "server_group",
        "volume",
        "object_container",
        "security_group_rule",
        "security_group",
        "router_interface",
        "router",
        "subnet",
        "network",
    )
    PREVIEW_KEY_PREFIX = {
        "network": "network",
        "subnet": "subnet",
        "router": "router",
        "security_group": "security-group",
        "load_balancer": "load-balancer",
        "listener": "listener",
        "pool": "pool",
        "health_monitor": "health-monitor",
        "floating_ip": "floating-ip",
        "object_container": "container",
    }

    def test_creation_order_is_runs_kind_order(self) -> None:
        assert self.KIND_ORDER == CREATION_ORDER

    def test_delete_order_differs_from_previews_only_between_kinds_that_never_depend_on_each_other(self) -> None:
        swapped = [(a, b) for a, b in zip(self.PREVIEW_DELETE_ORDER, DELETE_ORDER, strict=True) if a != b]
        assert swapped == [("volume", "object_container"), ("object_container", "volume")]
        containers = [s for _, g in GRAPHS for s in g.steps.values() if s.kind == "object_container"]
        volumes = {s.key for _, g in GRAPHS for s in g.steps.values() if s.kind == "volume"}
        assert containers
        assert all(not (s.after & volumes) for s in containers)

    def test_prefix_by_name_is_previews_table_plus_servers(self) -> None:
        """Servers are also named after their key; compute reports their step key, so preview never needs it."""
        assert dict(PREFIX_BY_NAME) == {**self.PREVIEW_KEY_PREFIX, "server": "server"}
        assert {k: v for k, v in KEY_PREFIX.items() if k in self.PREVIEW_KEY_PREFIX} == self.PREVIEW_KEY_PREFIX

    @pytest.mark.parametrize(
        ("kind", "params", "flavor", "expected"),
        [
            (
                "server",
                {"networks": ["a", "b"]},
                {"vcpus": 2, "ram_mb": 512},
                {"instances": 1, "cores": 2, "ram_mb": 512, "ports": 2},
            ),
            ("server", {}, {}, {"instances": 1, "cores": 0, "ram_mb": 0, "ports": 1}),
            ("volume", {"size_gb": 3}, {}, {"volumes": 1, "gigabytes": 3}),
            ("volume", {"size_gb": None}, {}, {"volumes": 1, "gigabytes": 0}),
            ("subnet", {}, {}, {"subnets": 1, "ports": 1}),
            ("router_interface", {}, {}, {"ports": 1}),
            ("load_balancer", {}, {}, {"load_balancers": 1, "ports": 1}),
            ("security_group", {}, {}, {"security_groups": 1, "security_group_rules": 2}),
            ("network", {}, {}, {"networks": 1}),
            ("router", {}, {}, {"routers": 1}),
            ("floating_ip", {}, {}, {"floating_ips": 1}),
            ("server_group", {}, {}, {"server_groups": 1}),
            ("security_group_rule", {}, {}, {"security_group_rules": 1}),
            ("listener", {}, {}, {}),
            ("pool", {}, {}, {}),
            ("member", {}, {}, {}),
            ("health_monitor", {}, {}, {}),
            ("volume_attachment", {}, {}, {}),
            ("object_container", {}, {}, {}),
            ("gateway", {}, {}, {}),
        ],
    )
    def test_quota_cost_is_previews_quota_taken(
        self, kind: str, params: dict[str, Any], flavor: dict[str, Any], expected: dict[str, int]
    ) -> None:
        assert quota_cost(kind, params, flavor) == Counter(expected)

    def test_every_kind_is_in_some_table(self) -> None:
        assert set(MODELS) == set(Kind) == set(KEY_PREFIX) == set(DOMAIN_OF)


def command_of(step: Step, cls: type[ApplyStepV2] | type[DestroyStepV2]) -> ApplyStepV2 | DestroyStepV2:
    return cls(
        dispatch_id=uuid.uuid4(),
        run_id=uuid.uuid4(),
        plan_id=uuid.uuid4(),
        step_key=step.key,
        kind=Kind(step.kind),
        path=step.path,
        params=spec_of(step),
        timeout_seconds=600,
        trust_id=None,
    )


class TestStepCommandsV2:
    @pytest.mark.parametrize("cls", [ApplyStepV2, DestroyStepV2])
    @pytest.mark.parametrize("step", STEPS)
    def test_round_trips_through_the_envelope_with_typed_params(
        self, cls: type[ApplyStepV2] | type[DestroyStepV2], step: Step
    ) -> None:
        cmd = command_of(step, cls)
        headers = encode_headers(cmd, source="/dcostack/planner", event_id="e-1", correlation_id=step.key)
        env = decode(kafka_headers(headers), encode_value(cmd))
        assert isinstance(env.data, cls)
        assert env.data == cmd
        assert type(env.data.params) is params_model(step.kind)
        assert env.data.params == step.spec
        assert env.data.params.as_dict() == step.params

    def test_registered_next_to_v1(self) -> None:
        assert REGISTRY["io.dcostack.planner.step.apply.v2"] is ApplyStepV2
        assert REGISTRY["io.dcostack.planner.step.destroy.v2"] is DestroyStepV2
        assert REGISTRY["io.dcostack.planner.step.apply.v1"] is ApplyStepV1

    def test_a_kind_that_disagrees_with_the_params_is_refused(self) -> None:
        step = dict(GRAPHS)["every-kind"].steps["server/web-0"]
        raw = command_of(step, ApplyStepV2).model_dump(mode="json") | {"kind": "volume"}
        with pytest.raises(ValidationError, match="kind is 'volume' but params are of kind 'server'"):
            ApplyStepV2.model_validate(raw)

    def test_params_without_a_kind_tag_are_refused(self) -> None:
        step = dict(GRAPHS)["every-kind"].steps["server/web-0"]
        raw = command_of(step, ApplyStepV2).model_dump(mode="json")
        raw["params"] = step.params
        with pytest.raises(ValidationError, match="discriminator 'kind'"):
            ApplyStepV2.model_validate(raw)

    def test_a_v1_command_converts_to_v2(self) -> None:
        step = dict(GRAPHS)["every-kind"].steps["server/web-0"]
        v2 = command_of(step, ApplyStepV2)
        v1 = ApplyStepV1(**v2.model_dump(exclude={"params", "kind"}), kind=step.kind, params=step.params)
        converted = ApplyStepV2(**v1.model_dump(exclude={"params"}), params=parse_params(v1.kind, v1.params))
        assert converted == v2
        assert isinstance(converted.params, ServerParams)
        assert converted.params.flavor == "m1.tiny"


class TestStepError:
    def test_reads_what_a_cloud_error_reports(self) -> None:
        error = CloudError("Quota exceeded for cores", hint="raise the quota", http_status=403, resource_id="x")
        typed = StepError.model_validate(error.to_event())
        assert typed.model_dump(exclude={"path"}) == error.to_event()
        assert (typed.retriable, typed.path) == (False, None)

    def test_reads_what_the_planner_writes_at_a_steps_deadline(self) -> None:
        """runs.py's jsonb_build_object('message', ..., 'hint', ..., 'retriable', true)."""
        typed = StepError.model_validate({"message": "no result", "hint": "check the service", "retriable": True})
        assert (typed.retriable, typed.http_status, typed.resource_id) == (True, None, None)
