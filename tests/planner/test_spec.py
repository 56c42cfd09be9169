"""The plan document as an operator sees it: the example validates, parameters and templates are
substituted safely, and every mistake is reported with its JSON path and what is allowed."""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.planner.plans.spec import InvalidPlan, Plan, PlanError, json_path, plan_json_schema, validate_plan

# jsonschema ships no type information and mypy has no override for it (as in tests/deploy/test_helm.py)
jsonschema: Any = importlib.import_module("jsonschema")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "two-tier.yaml"

Mutation = Callable[[dict[str, Any]], object]


def load_example() -> dict[str, Any]:
    raw = yaml.safe_load(EXAMPLE.read_text())
    assert isinstance(raw, dict)
    return raw


@pytest.fixture
def raw() -> dict[str, Any]:
    return copy.deepcopy(load_example())


def errors_of(raw: Any, parameters: dict[str, Any] | None = None) -> list[PlanError]:
    with pytest.raises(InvalidPlan) as info:
        validate_plan(raw, parameters)
    assert str(info.value) == f"{len(info.value.errors)} error(s) in the plan"
    return info.value.errors


def group(raw: dict[str, Any], name: str) -> dict[str, Any]:
    found = next(g for g in raw["instance_groups"] if g["name"] == name)
    assert isinstance(found, dict)
    return found


class TestExample:
    def test_parses_and_validates(self, raw: dict[str, Any]) -> None:
        plan = validate_plan(raw)
        assert isinstance(plan, Plan)
        assert plan.name == "two-tier"
        assert plan.on_failure == "rollback"
        assert [n.name for n in plan.networks] == ["two-tier-net"]
        assert [s.name for s in plan.security_groups] == ["web", "app"]
        assert [g.name for g in plan.instance_groups] == ["app", "web"]
        assert [lb.name for lb in plan.load_balancers] == ["web-lb"]
        assert (plan.rollout.max_parallel, plan.rollout.batch_size) == (10, 5)

    def test_the_document_itself_is_not_modified(self, raw: dict[str, Any]) -> None:
        before = copy.deepcopy(raw)
        validate_plan(raw, {"web_count": 4})
        assert raw == before

    def test_parameter_defaults_are_substituted_with_their_type(self, raw: dict[str, Any]) -> None:
        plan = validate_plan(raw)
        app, web = plan.instance_groups
        assert (app.count, web.count) == (2, 2)
        assert isinstance(web.count, int)
        assert (web.flavor, web.image) == ("m1.tiny", "devcloud-tiny")
        router = plan.networks[0].router
        assert router is not None
        assert router.external_network == "public"

    def test_values_given_for_a_run_override_defaults(self, raw: dict[str, Any]) -> None:
        plan = validate_plan(raw, {"web_count": 3, "app_count": 0, "flavor": "m1.small"})
        app, web = plan.instance_groups
        assert (app.count, web.count) == (0, 3)
        assert web.flavor == app.flavor == "m1.small"

    def test_user_data_renders_with_parameters(self, raw: dict[str, Any]) -> None:
        assert 'content: "app tier of 2 servers"' in (validate_plan(raw).instance_groups[1].user_data or "")
        user_data = validate_plan(raw, {"app_count": 7}).instance_groups[1].user_data or ""
        assert user_data.startswith("#cloud-config\n")
        assert 'content: "app tier of 7 servers"' in user_data

    def test_template_mixing_text_and_expressions_renders_to_a_string(self, raw: dict[str, Any]) -> None:
        group(raw, "web")["metadata"] = {
            "tier": "web-{{ flavor }}",
            "size": "{{ web_count * 10 }}",
            "many": "{% if web_count > 1 %}yes{% else %}no{% endif %}",
        }
        plan = validate_plan(raw, {"web_count": 3})
        assert plan.instance_groups[1].metadata == {"tier": "web-m1.tiny", "size": "30", "many": "yes"}

    def test_defaults_of_the_models_are_filled_in(self, raw: dict[str, Any]) -> None:
        del raw["rollout"], raw["on_failure"]
        plan = validate_plan(raw)
        assert (plan.rollout.max_parallel, plan.rollout.batch_size) == (10, 10)
        assert plan.on_failure == "rollback"
        rule = plan.security_groups[0].rules[0]
        assert (rule.direction, rule.port_range) == ("ingress", (80, 80))

    def test_port_range_is_parsed(self, raw: dict[str, Any]) -> None:
        raw["security_groups"][0]["rules"][0]["ports"] = "8000-8080"
        assert validate_plan(raw).security_groups[0].rules[0].port_range == (8000, 8080)

    def test_minimal_plan(self) -> None:
        plan = validate_plan({"name": "empty"})
        assert (plan.networks, plan.instance_groups, plan.parameters) == ([], [], {})


class TestSandbox:
    @pytest.mark.parametrize(
        "template",
        [
            pytest.param("{{ ''.__class__.__mro__ }}", id="dunder-attribute"),
            pytest.param("{{ image.__class__.__mro__[1].__subclasses__() }}", id="subclasses"),
            pytest.param("{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}", id="statement"),
            pytest.param("{{ image | attr('__class__') }}", id="attr-filter"),
            pytest.param("{{ '{0.__class__}'.format(image) }}", id="str-format"),
            pytest.param("{{ lipsum.__globals__ }}", id="function-globals"),
            pytest.param("{{ cycler.__init__.__globals__ }}", id="init-globals"),
            pytest.param("{{ self.__dict__ }}", id="template-self"),
            pytest.param("{{ [].append(1) }}", id="mutate-list"),
            pytest.param("{{ {}.update(a=1) }}", id="mutate-dict"),
        ],
    )
    def test_unsafe_construct_is_refused_with_a_clear_error(self, raw: dict[str, Any], template: str) -> None:
        group(raw, "web")["user_data"] = template
        errors = errors_of(raw)
        assert [e.path for e in errors] == ["$.instance_groups[1].user_data"]
        assert errors[0].message.startswith("template refused by the sandbox: access to attribute")
        assert "is unsafe" in errors[0].message
        assert "declare it under parameters" not in errors[0].message

    @pytest.mark.parametrize(
        ("template", "expected"),
        [
            pytest.param("{{ range(10**7) | list | length }}", "Range too big", id="huge-range"),
            pytest.param("{{ 1 / 0 }}", "ZeroDivisionError", id="division-by-zero"),
            pytest.param("{% include 'other' %}", "template error", id="include"),
            pytest.param("{{ image", "unexpected end of template", id="syntax"),
        ],
    )
    def test_a_template_that_fails_is_a_plan_error_not_a_crash(
        self, raw: dict[str, Any], template: str, expected: str
    ) -> None:
        group(raw, "web")["user_data"] = template
        errors = errors_of(raw)
        assert [e.path for e in errors] == ["$.instance_groups[1].user_data"]
        assert expected in errors[0].message

    def test_parameter_values_are_not_templates(self, raw: dict[str, Any]) -> None:
        plan = validate_plan(raw, {"image": "{{ ''.__class__ }}"})
        assert plan.instance_groups[0].image == "{{ ''.__class__ }}"

    def test_parameter_declarations_are_not_rendered(self, raw: dict[str, Any]) -> None:
        raw["parameters"]["image"]["description"] = "the image, e.g. {{ flavor }}"
        assert validate_plan(raw).parameters["image"].description == "the image, e.g. {{ flavor }}"


# (plan mutation, values given for the run, expected [(JSON path, part of the message)])
INVALID: list[Any] = [
    pytest.param(
        lambda r: r["networks"][0].update(cidr="10.42.0.1/24"),
        None,
        [("$.networks[0].cidr", "is not an IPv4 network in CIDR form such as 10.0.0.0/24")],
        id="cidr-host-bits-set",
    ),
    pytest.param(
        lambda r: r["networks"][0].update(cidr="300.1.0.0/24"),
        None,
        [("$.networks[0].cidr", "'300.1.0.0/24' is not an IPv4 network")],
        id="cidr-bad-octet",
    ),
    pytest.param(
        lambda r: r["networks"].append({"name": "other", "cidr": "10.42.0.128/25"}),
        None,
        [("$.networks[1].cidr", "10.42.0.128/25 overlaps 'two-tier-net' (10.42.0.0/24)")],
        id="cidr-overlap",
    ),
    pytest.param(
        lambda r: r["networks"][0].update(dns=["ten.zero"]),
        None,
        [("$.networks[0].dns[0]", "not a valid IPv4 address")],
        id="dns-not-an-address",
    ),
    pytest.param(
        lambda r: r["instance_groups"][0].update(count=-1),
        None,
        [("$.instance_groups[0].count", "greater than or equal to 0")],
        id="negative-count",
    ),
    pytest.param(
        lambda r: r["instance_groups"][0].update(count=1001),
        None,
        [("$.instance_groups[0].count", "less than or equal to 1000")],
        id="count-too-large",
    ),
    pytest.param(
        lambda r: r["instance_groups"][0].update(count="three"),
        None,
        [("$.instance_groups[0].count", "valid integer")],
        id="count-not-an-integer",
    ),
    pytest.param(
        lambda r: r["instance_groups"][0].update(count=2.5),
        None,
        [("$.instance_groups[0].count", "fractional part")],
        id="count-fractional",
    ),
    pytest.param(
        lambda r: r["instance_groups"][0].update(networks="two-tier-net"),
        None,
        [("$.instance_groups[0].networks", "valid list")],
        id="networks-not-a-list",
    ),
    pytest.param(
        lambda r: r["instance_groups"][0].update(metadata={"tier": 1}),
        None,
        [("$.instance_groups[0].metadata.tier", "valid string")],
        id="metadata-value-not-a-string",
    ),
    pytest.param(
        lambda r: r["networks"][0].update(router="two-tier-router"),
        None,
        [("$.networks[0].router", "valid dictionary")],
        id="router-not-a-mapping",
    ),
    pytest.param(
        lambda r: r["security_groups"][0]["rules"][0].update(ports=[80, 443]),
        None,
        [("$.security_groups[0].rules[0].ports", "Input should be a valid string or a valid integer")],
        id="ports-wrong-type",
    ),
    pytest.param(
        lambda r: r.update(colour="blue"),
        None,
        [("$.colour", "Extra inputs are not permitted")],
        id="unknown-top-level-field",
    ),
    pytest.param(
        lambda r: r["instance_groups"][1].update(floating_ips=True),
        None,
        [("$.instance_groups[1].floating_ips", "Extra inputs are not permitted")],
        id="unknown-nested-field",
    ),
    pytest.param(
        lambda r: r["instance_groups"][0].update(networks=["two-tier-net", "nope"]),
        None,
        [("$.instance_groups[0].networks[1]", "network 'nope' is not declared in this plan (declared: two-tier-net)")],
        id="group-unknown-network",
    ),
    pytest.param(
        lambda r: r["instance_groups"][0].update(security_groups=["db"]),
        None,
        [
            (
                "$.instance_groups[0].security_groups[0]",
                "security group 'db' is not declared in this plan (declared: app, web)",
            )
        ],
        id="group-unknown-security-group",
    ),
    pytest.param(
        lambda r: r["security_groups"][1]["rules"][0].update(remote_group="lb"),
        None,
        [("$.security_groups[1].rules[0].remote_group", "security group 'lb' is not declared")],
        id="rule-unknown-remote-group",
    ),
    pytest.param(
        lambda r: r["instance_groups"][1].update(depends_on=["db"]),
        None,
        [
            (
                "$.instance_groups[1].depends_on[0]",
                "instance group 'db' is not declared in this plan (declared: app, web)",
            )
        ],
        id="depends-on-unknown-group",
    ),
    pytest.param(
        lambda r: r["load_balancers"][0]["pool"]["members"].update(group="api"),
        None,
        [
            (
                "$.load_balancers[0].pool.members.group",
                "instance group 'api' is not declared in this plan (declared: app, web)",
            )
        ],
        id="lb-members-unknown-group",
    ),
    pytest.param(
        lambda r: r["load_balancers"][0].update(network="dmz"),
        None,
        [
            ("$.load_balancers[0].network", "network 'dmz' is not declared in this plan"),
            ("$.load_balancers[0].network", "members of group 'web' have no port on network 'dmz'"),
        ],
        id="lb-unknown-network",
    ),
    pytest.param(
        lambda r: (
            r["networks"].append({"name": "dmz", "cidr": "10.43.0.0/24"}),
            r["load_balancers"][0].update(network="dmz"),
        ),
        None,
        [("$.load_balancers[0].network", "members of group 'web' have no port on network 'dmz'")],
        id="lb-network-without-members",
    ),
    pytest.param(
        lambda r: r["instance_groups"][0].update(depends_on=["web"]),
        None,
        [("$.instance_groups", "depends_on forms a cycle: ")],
        id="rollout-cycle",
    ),
    pytest.param(
        lambda r: r["instance_groups"][0].update(depends_on=["app"]),
        None,
        [("$.instance_groups", "depends_on forms a cycle: app → app")],
        id="rollout-self-dependency",
    ),
    pytest.param(
        lambda r: r["instance_groups"].append({**copy.deepcopy(r["instance_groups"][0]), "depends_on": ["web"]}),
        None,
        [("$.instance_groups[2].name", "instance_groups name 'app' is used twice")],
        id="duplicate-instance-group",
    ),
    pytest.param(
        lambda r: r["networks"].append({"name": "two-tier-net", "cidr": "10.43.0.0/24"}),
        None,
        [("$.networks[1].name", "networks name 'two-tier-net' is used twice")],
        id="duplicate-network",
    ),
    pytest.param(
        lambda r: r["security_groups"].append({"name": "web"}),
        None,
        [("$.security_groups[2].name", "security_groups name 'web' is used twice")],
        id="duplicate-security-group",
    ),
    pytest.param(
        lambda r: r["instance_groups"][0]["volumes"].append({"name": "data", "size_gb": 2}),
        None,
        [("$.instance_groups[0].volumes[1].name", "name 'data' is used twice")],
        id="duplicate-volume-in-group",
    ),
    pytest.param(
        lambda r: r.pop("name"),
        None,
        [("$.name", "Field required")],
        id="missing-plan-name",
    ),
    pytest.param(
        lambda r: r["instance_groups"][0].pop("flavor"),
        None,
        [("$.instance_groups[0].flavor", "Field required")],
        id="missing-flavor",
    ),
    pytest.param(
        lambda r: r["load_balancers"][0].pop("listener"),
        None,
        [("$.load_balancers[0].listener", "Field required")],
        id="missing-listener",
    ),
    pytest.param(
        lambda r: r["instance_groups"][0].update(networks=[]),
        None,
        [("$.instance_groups[0].networks", "at least 1 item")],
        id="group-without-network",
    ),
    pytest.param(
        lambda r: r["security_groups"][0]["rules"][0].update(ports="90-80"),
        None,
        [("$.security_groups[0].rules[0].ports", "ports must satisfy 1 <= low <= high <= 65535")],
        id="port-range-reversed",
    ),
    pytest.param(
        lambda r: r["security_groups"][0]["rules"][0].update(ports=70000),
        None,
        [("$.security_groups[0].rules[0].ports", "ports must satisfy 1 <= low <= high <= 65535")],
        id="port-too-large",
    ),
    pytest.param(
        lambda r: r["security_groups"][0]["rules"][0].update(ports="http"),
        None,
        [("$.security_groups[0].rules[0].ports", "must be a port (80) or a range (8000-8080)")],
        id="port-not-a-number",
    ),
    pytest.param(
        lambda r: r["security_groups"][0]["rules"][1].update(ports=8),
        None,
        [("$.security_groups[0].rules[1]", "protocol icmp takes no ports")],
        id="icmp-with-ports",
    ),
    pytest.param(
        lambda r: r["security_groups"][1]["rules"][0].update(remote_cidr="10.0.0.0/8"),
        None,
        [("$.security_groups[1].rules[0]", "give remote_cidr or remote_group, not both")],
        id="rule-with-two-remotes",
    ),
    pytest.param(
        lambda r: r["security_groups"][0]["rules"][0].update(protocol="sctp"),
        None,
        [("$.security_groups[0].rules[0].protocol", "Input should be 'tcp', 'udp', 'icmp' or 'any'")],
        id="unknown-protocol",
    ),
    pytest.param(
        lambda r: r["load_balancers"][0]["listener"].update(port=0),
        None,
        [("$.load_balancers[0].listener.port", "greater than or equal to 1")],
        id="listener-port-zero",
    ),
    pytest.param(
        lambda r: r["load_balancers"][0]["health_monitor"].update(timeout=10),
        None,
        [("$.load_balancers[0].health_monitor", "timeout must not exceed delay")],
        id="monitor-timeout-above-delay",
    ),
    pytest.param(
        lambda r: r.update(name="Two Tier"),
        None,
        [("$.name", "String should match pattern '^[a-z][a-z0-9-]{0,62}$'")],
        id="bad-name",
    ),
    pytest.param(
        lambda r: r["rollout"].update(batch_size=0),
        None,
        [("$.rollout.batch_size", "greater than or equal to 1")],
        id="rollout-batch-size-zero",
    ),
    pytest.param(
        lambda r: r["rollout"].update(max_parallel=501),
        None,
        [("$.rollout.max_parallel", "less than or equal to 500")],
        id="rollout-max-parallel-too-large",
    ),
    pytest.param(
        lambda r: r.update(on_failure="retry"),
        None,
        [("$.on_failure", "Input should be 'rollback' or 'hold'")],
        id="bad-on-failure",
    ),
    pytest.param(
        lambda r: r["networks"][0].pop("router"),
        None,
        [("$.instance_groups[1].floating_ip", "a floating IP needs a router with an external gateway")],
        id="floating-ip-without-router",
    ),
    pytest.param(
        lambda r: r["networks"].append(
            {"name": "dmz", "cidr": "10.43.0.0/24", "router": {"name": "two-tier-router", "external_network": "x"}}
        ),
        None,
        [("$.networks[1].router", "router 'two-tier-router' is declared with two gateways")],
        id="router-with-two-gateways",
    ),
    pytest.param(
        lambda r: r["parameters"]["web_count"].update(type="int"),
        None,
        [
            ("$.parameters.web_count.type", "Input should be 'string', 'integer', 'number' or 'boolean'"),
            ("$.instance_groups[1].count", "uses a parameter whose value is invalid (see $.parameters.web_count)"),
        ],
        id="parameter-unknown-type",
    ),
    pytest.param(
        lambda r: r["parameters"]["web_count"].update(default="two"),
        None,
        [
            ("$.parameters.web_count", "$.parameters.web_count.default: 'two' is not of type integer"),
            ("$.instance_groups[1].count", "see $.parameters.web_count"),
        ],
        id="parameter-default-wrong-type",
    ),
    pytest.param(
        lambda r: r["parameters"]["image"].update(default=["a"]),
        None,
        [
            ("$.parameters.image.default", "Input should be a valid string or a valid integer"),
            ("$.instance_groups[0].image", "see $.parameters.image"),
            ("$.instance_groups[1].image", "see $.parameters.image"),
        ],
        id="parameter-default-not-a-scalar",
    ),
    pytest.param(
        lambda r: r["parameters"]["web_count"].update(default=51),
        None,
        [
            ("$.parameters.web_count", "$.parameters.web_count.default: 51 is above the maximum 50"),
            ("$.instance_groups[1].count", "see $.parameters.web_count"),
        ],
        id="parameter-default-above-maximum",
    ),
    pytest.param(
        lambda r: r["parameters"]["flavor"].update(allowed=["m1.small", "m1.large"]),
        None,
        [
            ("$.parameters.flavor", "'m1.tiny' is not one of ['m1.small', 'm1.large']"),
            ("$.instance_groups[0].flavor", "see $.parameters.flavor"),
            ("$.instance_groups[1].flavor", "see $.parameters.flavor"),
        ],
        id="parameter-default-not-allowed",
    ),
    pytest.param(
        lambda r: r["parameters"]["external_network"].pop("default"),
        None,
        [
            ("$.parameters.external_network", "parameter 'external_network' has no default; give a value"),
            ("$.networks[0].router.external_network", "see $.parameters.external_network"),
        ],
        id="parameter-without-value",
    ),
    pytest.param(
        lambda r: None,
        {"web_count": -1},
        [
            ("$.parameters.web_count", "parameter 'web_count' given for this run: -1 is below the minimum 0"),
            ("$.instance_groups[1].count", "see $.parameters.web_count"),
        ],
        id="given-value-below-minimum",
    ),
    pytest.param(
        lambda r: None,
        {"web_count": "3"},
        [
            ("$.parameters.web_count", "given for this run: '3' is not of type integer"),
            ("$.instance_groups[1].count", "see $.parameters.web_count"),
        ],
        id="given-value-wrong-type",
    ),
    pytest.param(
        lambda r: None,
        {"web_count": True},
        [
            ("$.parameters.web_count", "given for this run: True is not of type integer"),
            ("$.instance_groups[1].count", "see $.parameters.web_count"),
        ],
        id="given-boolean-for-integer",
    ),
    pytest.param(
        lambda r: None,
        {"region": "north"},
        [("$.parameters", "a value was given for 'region', which the plan does not declare")],
        id="given-value-undeclared",
    ),
    pytest.param(
        lambda r: r["instance_groups"][0].update(flavor="{{ flavour }}"),
        None,
        [("$.instance_groups[0].flavor", "template error: 'flavour' is undefined; declare it under parameters")],
        id="template-undefined-variable",
    ),
    pytest.param(
        lambda r: r["instance_groups"][0].update(count="{{ app_count + }}"),
        None,
        [("$.instance_groups[0].count", "template error: unexpected")],
        id="template-syntax-error",
    ),
]


@pytest.mark.parametrize(("mutate", "given", "expected"), INVALID)
def test_invalid_plan_reports_path_and_what_is_allowed(
    raw: dict[str, Any], mutate: Mutation, given: dict[str, Any] | None, expected: list[tuple[str, str]]
) -> None:
    mutate(raw)
    errors = errors_of(raw, given)
    assert sorted(e.path for e in errors) == sorted(path for path, _ in expected), errors
    for path, message in expected:
        assert any(e.path == path and message in e.message for e in errors), (path, message, errors)
    assert len(set(errors)) == len(errors), "an error is reported twice"


def test_there_are_at_least_a_dozen_kinds_of_invalid_plan() -> None:
    assert len(INVALID) >= 12


@pytest.mark.parametrize("document", [None, [], "name: x", 42])
def test_a_plan_must_be_a_mapping(document: Any) -> None:
    assert errors_of(document) == [PlanError("$", "a plan is a mapping with at least a name")]


def test_errors_of_parameters_and_structure_are_reported_together(raw: dict[str, Any]) -> None:
    raw["parameters"]["web_count"]["default"] = "many"
    raw["networks"][0]["cidr"] = "10.42.0.0/33"
    raw["networks"][0]["dns"] = ["dns.local"]
    raw["security_groups"][0]["rules"][0]["ports"] = "0-80"
    raw["security_groups"][1]["rules"][0]["protocol"] = "http"
    group(raw, "app")["count"] = -3
    group(raw, "app")["volumes"][0]["size_gb"] = 0
    group(raw, "app")["flavour"] = "m1.tiny"
    del group(raw, "app")["image"]
    group(raw, "web")["user_data"] = "{{ ''.__class__ }}"
    raw["load_balancers"][0]["listener"]["port"] = 70000
    raw["load_balancers"][0]["health_monitor"]["max_retries"] = 11
    raw["rollout"]["max_parallel"] = 0

    errors = errors_of(raw, {"undeclared": 1})

    assert sorted(e.path for e in errors) == sorted(
        [
            "$.parameters.web_count",
            "$.parameters",
            "$.instance_groups[1].count",
            "$.instance_groups[1].user_data",
            "$.networks[0].cidr",
            "$.networks[0].dns[0]",
            "$.security_groups[0].rules[0].ports",
            "$.security_groups[1].rules[0].protocol",
            "$.instance_groups[0].count",
            "$.instance_groups[0].volumes[0].size_gb",
            "$.instance_groups[0].flavour",
            "$.instance_groups[0].image",
            "$.load_balancers[0].listener.port",
            "$.load_balancers[0].health_monitor.max_retries",
            "$.rollout.max_parallel",
        ]
    )


def test_reference_errors_are_reported_together(raw: dict[str, Any]) -> None:
    raw["networks"].append({"name": "two-tier-net", "cidr": "10.42.0.0/16"})
    raw["security_groups"][1]["rules"][0]["remote_group"] = "lb"
    group(raw, "app")["networks"] = ["backend"]
    group(raw, "app")["security_groups"] = ["app", "db"]
    group(raw, "app")["depends_on"] = ["web"]
    group(raw, "web")["depends_on"] = ["app", "cache"]
    raw["load_balancers"][0]["pool"]["members"]["group"] = "api"

    errors = errors_of(raw, {"web_count": 3})

    assert sorted(e.path for e in errors) == sorted(
        [
            "$.networks[1].name",
            "$.networks[1].cidr",
            "$.security_groups[1].rules[0].remote_group",
            "$.instance_groups[0].networks[0]",
            "$.instance_groups[0].security_groups[1]",
            "$.instance_groups[1].depends_on[1]",
            "$.load_balancers[0].pool.members.group",
            "$.instance_groups",  # app → web → app
        ]
    )


def test_plan_error_serialises_to_path_and_message() -> None:
    assert PlanError("$.a[0].b", "bad").to_dict() == {"path": "$.a[0].b", "message": "bad"}
    assert json_path(["instance_groups", 0, "networks", 1]) == "$.instance_groups[0].networks[1]"
    assert json_path([]) == "$"


class TestJsonSchema:
    def test_is_a_valid_schema_of_the_draft_it_declares(self) -> None:
        schema = plan_json_schema()
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"].startswith("https://")
        cls = jsonschema.validators.validator_for(schema)
        assert cls is jsonschema.Draft202012Validator
        cls.check_schema(schema)

    def test_accepts_the_example_as_written(self) -> None:
        validator = jsonschema.Draft202012Validator(plan_json_schema())
        assert [e.json_path for e in validator.iter_errors(load_example())] == []

    def test_accepts_the_example_after_substitution(self, raw: dict[str, Any]) -> None:
        validator = jsonschema.Draft202012Validator(plan_json_schema())
        document = validate_plan(raw).model_dump(mode="json")
        assert [e.json_path for e in validator.iter_errors(document)] == []

    @pytest.mark.parametrize(
        ("mutate", "path"),
        [
            pytest.param(lambda r: r.update(colour="blue"), "$", id="unknown-field"),
            pytest.param(lambda r: r["instance_groups"][0].update(count="three"), "$.instance_groups[0].count"),
            pytest.param(lambda r: r["instance_groups"][0].update(count=-1), "$.instance_groups[0].count"),
            pytest.param(lambda r: r["instance_groups"][0].pop("flavor"), "$.instance_groups[0]", id="missing"),
            pytest.param(lambda r: r.update(name="Two Tier"), "$.name", id="bad-name"),
            pytest.param(lambda r: r["rollout"].update(batch_size=0), "$.rollout.batch_size", id="batch-size"),
            pytest.param(
                lambda r: r["security_groups"][0]["rules"][0].update(protocol="sctp"),
                "$.security_groups[0].rules[0].protocol",
                id="protocol",
            ),
        ],
    )
    def test_rejects_what_validation_rejects(self, raw: dict[str, Any], mutate: Mutation, path: str) -> None:
        mutate(raw)
        validator = jsonschema.Draft202012Validator(plan_json_schema())
        assert path in {e.json_path for e in validator.iter_errors(raw)}
        with pytest.raises(InvalidPlan):
            validate_plan(raw)

    def test_templates_are_allowed_where_a_value_is_substituted(self) -> None:
        validator = jsonschema.Draft202012Validator(plan_json_schema())
        document = {"name": "x", "rollout": {"batch_size": "{{ n }}"}, "on_failure": "{{ policy }}"}
        assert list(validator.iter_errors(document)) == []
        declaration = {"name": "x", "parameters": {"n": {"type": "{{ t }}"}}}
        assert [e.json_path for e in validator.iter_errors(declaration)] == ["$.parameters.n.type"]
