"""The plan document: what an operator writes (YAML or JSON) and how it is checked.

A plan is validated in three passes, and every error of every pass is reported at once, each with
its JSON path and what is allowed:

1. parameters: declared types and defaults, then the values given for this run;
2. structure: the document after ``{{ parameter }}`` substitution, against the pydantic models below
   (the published JSON Schema is generated from them);
3. references: names unique per kind, every reference resolves, CIDRs do not overlap, rollout order has
   no cycle.

Checks against the live cloud (flavor, image, external network exist; quota) belong to the preview.
"""

from __future__ import annotations

import graphlib
import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import jinja2
import jinja2.meta
import jinja2.sandbox
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

NAME = r"^[a-z][a-z0-9-]{0,62}$"
Name = Annotated[str, Field(pattern=NAME, description="lower-case letters, digits and '-', starting with a letter")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Parameter(Strict):
    type: Literal["string", "integer", "number", "boolean"] = "string"
    default: str | int | float | bool | None = None
    description: str = ""
    minimum: float | None = None
    maximum: float | None = None
    allowed: list[str | int | float | bool] | None = None


class Router(Strict):
    name: Name
    external_network: str = Field(description="Name of the provider network that gives the gateway")


class Network(Strict):
    name: Name
    cidr: ipaddress.IPv4Network
    dns: list[ipaddress.IPv4Address] = []
    router: Router | None = None

    @field_validator("cidr", mode="before")
    @classmethod
    def _strict_cidr(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                ipaddress.IPv4Network(value, strict=True)
            except ValueError as e:
                raise ValueError(f"{value!r} is not an IPv4 network in CIDR form such as 10.0.0.0/24 ({e})") from e
        return value


class Rule(Strict):
    protocol: Literal["tcp", "udp", "icmp", "any"] = "tcp"
    ports: str | int | None = Field(default=None, description="a port or a range 'low-high'; none for icmp/any")
    remote_cidr: ipaddress.IPv4Network | None = None
    remote_group: Name | None = None
    direction: Literal["ingress", "egress"] = "ingress"

    @field_validator("ports")
    @classmethod
    def _port_range(cls, value: str | int | None) -> str | int | None:
        if value is None:
            return value
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", str(value))
        if not m:
            raise ValueError("must be a port (80) or a range (8000-8080)")
        low, high = int(m.group(1)), int(m.group(2) or m.group(1))
        if not 1 <= low <= high <= 65535:
            raise ValueError("ports must satisfy 1 <= low <= high <= 65535")
        return value

    @model_validator(mode="after")
    def _one_remote(self) -> Rule:
        if self.remote_cidr is not None and self.remote_group is not None:
            raise ValueError("give remote_cidr or remote_group, not both")
        if self.protocol in ("icmp", "any") and self.ports is not None:
            raise ValueError(f"protocol {self.protocol} takes no ports")
        return self

    @property
    def port_range(self) -> tuple[int, int] | None:
        if self.ports is None:
            return None
        low, _, high = str(self.ports).partition("-")
        return int(low), int(high or low)


class SecurityGroup(Strict):
    name: Name
    description: str = ""
    rules: list[Rule] = []


class VolumeSpec(Strict):
    name: Name
    size_gb: int = Field(ge=1, le=16384)
    type: str | None = None


class ServerGroup(Strict):
    policy: Literal["affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity"]


class InstanceGroup(Strict):
    name: Name
    flavor: str = Field(min_length=1)
    image: str = Field(min_length=1)
    count: int = Field(ge=0, le=1000)
    networks: list[Name] = Field(min_length=1)
    security_groups: list[Name] = []
    key_pair: str | None = None
    server_group: ServerGroup | None = None
    volumes: list[VolumeSpec] = []
    floating_ip: bool = False
    user_data: str | None = Field(default=None, max_length=65535)
    metadata: dict[str, str] = {}
    depends_on: list[Name] = Field(default=[], description="instance groups that must be complete first")


class Listener(Strict):
    protocol: Literal["HTTP", "HTTPS", "TCP", "UDP"] = "HTTP"
    port: int = Field(ge=1, le=65535)


class Members(Strict):
    group: Name
    port: int = Field(ge=1, le=65535)


class Pool(Strict):
    algorithm: Literal["ROUND_ROBIN", "LEAST_CONNECTIONS", "SOURCE_IP"] = "ROUND_ROBIN"
    members: Members


class HealthMonitor(Strict):
    type: Literal["HTTP", "HTTPS", "TCP", "PING"] = "HTTP"
    delay: int = Field(default=5, ge=1)
    timeout: int = Field(default=3, ge=1)
    max_retries: int = Field(default=3, ge=1, le=10)
    url_path: str = "/"

    @model_validator(mode="after")
    def _timeout_below_delay(self) -> HealthMonitor:
        if self.timeout > self.delay:
            raise ValueError("timeout must not exceed delay")
        return self


class LoadBalancer(Strict):
    name: Name
    network: Name
    listener: Listener
    pool: Pool
    health_monitor: HealthMonitor | None = None


class ObjectContainer(Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")]


class Rollout(Strict):
    max_parallel: int = Field(default=10, ge=1, le=500)
    batch_size: int = Field(default=10, ge=1, le=500, description="servers of one group created per batch")


class Plan(Strict):
    """A service described once: networks, security, instances, load balancers, storage, rollout."""

    name: Name
    description: str = ""
    parameters: dict[str, Parameter] = {}
    on_failure: Literal["rollback", "hold"] = "rollback"
    networks: list[Network] = []
    security_groups: list[SecurityGroup] = []
    instance_groups: list[InstanceGroup] = []
    load_balancers: list[LoadBalancer] = []
    volumes: list[VolumeSpec] = []
    object_containers: list[ObjectContainer] = []
    rollout: Rollout = Rollout()


@dataclass(frozen=True)
class PlanError:
    """One problem, where it is (a JSON path such as ``$.instance_groups[0].count``) and what is allowed."""

    path: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


class InvalidPlan(Exception):
    def __init__(self, errors: list[PlanError]) -> None:
        super().__init__(f"{len(errors)} error(s) in the plan")
        self.errors = errors


def json_path(loc: tuple[str | int, ...] | list[str | int]) -> str:
    out = "$"
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


_ENV = jinja2.sandbox.ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)
_WHOLE = re.compile(r"^\s*\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}\s*$")
#: How pydantic tags the members of ``str | int | ...`` unions in an error's location; not part of the document.
_UNION_TAGS = frozenset({"str", "int", "float", "bool"})
_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def _check_parameters(raw: dict[str, Any], given: dict[str, Any], errors: list[PlanError]) -> dict[str, Any]:
    declared_raw = raw.get("parameters") or {}
    if not isinstance(declared_raw, dict):
        errors.append(PlanError("$.parameters", "must be a mapping of parameter name to its declaration"))
        return {}
    values: dict[str, Any] = {}
    for name, decl_raw in declared_raw.items():
        path = f"$.parameters.{name}"
        try:
            decl = Parameter.model_validate(decl_raw)
        except ValidationError as e:
            errors += _structure_errors(e, decl_raw, ["parameters", name])
            continue
        if name in given:
            value, where = given[name], f"parameter {name!r} given for this run"
        elif decl.default is not None:
            value, where = decl.default, f"{path}.default"
        else:
            errors.append(PlanError(path, f"parameter {name!r} has no default; give a value when applying"))
            continue
        kinds = _TYPES[decl.type]
        if isinstance(value, bool) and decl.type != "boolean" or not isinstance(value, kinds):
            errors.append(PlanError(path, f"{where}: {value!r} is not of type {decl.type}"))
            continue
        number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        before = len(errors)
        if number is not None and decl.minimum is not None and number < decl.minimum:
            errors.append(PlanError(path, f"{where}: {value!r} is below the minimum {decl.minimum:g}"))
        if number is not None and decl.maximum is not None and number > decl.maximum:
            errors.append(PlanError(path, f"{where}: {value!r} is above the maximum {decl.maximum:g}"))
        if decl.allowed is not None and value not in decl.allowed:
            errors.append(PlanError(path, f"{where}: {value!r} is not one of {decl.allowed}"))
        if len(errors) == before:  # a refused value is not substituted: its uses point back here instead
            values[name] = value
    for name in sorted(set(given) - set(declared_raw)):
        errors.append(PlanError("$.parameters", f"a value was given for {name!r}, which the plan does not declare"))
    return values


def _render(node: Any, params: dict[str, Any], invalid: set[str], loc: list[str | int], errors: list[PlanError]) -> Any:
    """Substitute ``{{ name }}`` in every string; a string that is only a reference keeps the type.

    ``invalid`` names parameters that are declared but whose value was refused (already reported).
    """
    if isinstance(node, dict):
        return {
            k: _render(v, params, invalid, [*loc, k], errors) if k != "parameters" or loc else v
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_render(v, params, invalid, [*loc, i], errors) for i, v in enumerate(node)]
    if isinstance(node, str) and ("{{" in node or "{%" in node):
        whole = _WHOLE.match(node)
        if whole and whole.group(1) in params:
            return params[whole.group(1)]
        try:
            return _ENV.from_string(node).render(**params)
        except jinja2.exceptions.SecurityError as e:
            errors.append(PlanError(json_path(loc), f"template refused by the sandbox: {e}"))
        except jinja2.UndefinedError as e:
            bad = sorted(jinja2.meta.find_undeclared_variables(_ENV.parse(node)) & invalid)
            if bad:
                where = ", ".join(f"$.parameters.{b}" for b in bad)
                errors.append(PlanError(json_path(loc), f"uses a parameter whose value is invalid (see {where})"))
            else:
                errors.append(PlanError(json_path(loc), f"template error: {e}; declare it under parameters"))
        except jinja2.TemplateError as e:
            errors.append(PlanError(json_path(loc), f"template error: {e}"))
        except Exception as e:  # evaluating the operator's expression failed: 1/0, range(10**7) (sandbox limit), ...
            errors.append(PlanError(json_path(loc), f"template error: {type(e).__name__}: {e}"))
    return node


def _structure_errors(e: ValidationError, data: Any, prefix: list[str | int] | None = None) -> list[PlanError]:
    """pydantic's errors as plan errors: union member tags dropped from the path, one error per path."""
    merged: dict[str, list[str]] = {}
    for err in e.errors():
        node, loc = data, list(prefix or [])
        for part in err["loc"]:
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                node = node[part]
            elif part in _UNION_TAGS:
                continue
            else:
                node = None
            loc.append(part)
        messages = merged.setdefault(json_path(loc), [])
        if err["msg"] not in messages:
            messages.append(err["msg"])
    out = []
    for path, messages in merged.items():
        lead = "Input should be "
        if len(messages) > 1 and all(m.startswith(lead) for m in messages):
            messages = [messages[0], *(m.removeprefix(lead) for m in messages[1:])]
        out.append(PlanError(path, " or ".join(messages)))
    return out


def _references(plan: Plan, errors: list[PlanError]) -> None:
    def unique(kind: str, names: list[str]) -> set[str]:
        seen: set[str] = set()
        for i, n in enumerate(names):
            if n in seen:
                errors.append(PlanError(f"$.{kind}[{i}].name", f"{kind} name {n!r} is used twice"))
            seen.add(n)
        return seen

    networks = unique("networks", [n.name for n in plan.networks])
    groups_sg = unique("security_groups", [s.name for s in plan.security_groups])
    groups = unique("instance_groups", [g.name for g in plan.instance_groups])
    unique("load_balancers", [lb.name for lb in plan.load_balancers])
    unique("volumes", [v.name for v in plan.volumes])
    unique("object_containers", [c.name for c in plan.object_containers])
    routers = [(i, n.router.name) for i, n in enumerate(plan.networks) if n.router]
    seen_routers: dict[str, str] = {}
    for i, r in routers:
        ext = plan.networks[i].router
        assert ext is not None
        if r in seen_routers and seen_routers[r] != ext.external_network:
            errors.append(PlanError(f"$.networks[{i}].router", f"router {r!r} is declared with two gateways"))
        seen_routers[r] = ext.external_network

    def ref(path: str, kind: str, name: str, known: set[str]) -> None:
        if name not in known:
            choices = ", ".join(sorted(known)) or "none declared"
            errors.append(PlanError(path, f"{kind} {name!r} is not declared in this plan (declared: {choices})"))

    for i, sg in enumerate(plan.security_groups):
        for j, rule in enumerate(sg.rules):
            if rule.remote_group:
                ref(f"$.security_groups[{i}].rules[{j}].remote_group", "security group", rule.remote_group, groups_sg)
    for i, g in enumerate(plan.instance_groups):
        for j, n in enumerate(g.networks):
            ref(f"$.instance_groups[{i}].networks[{j}]", "network", n, networks)
        for j, s in enumerate(g.security_groups):
            ref(f"$.instance_groups[{i}].security_groups[{j}]", "security group", s, groups_sg)
        for j, d in enumerate(g.depends_on):
            ref(f"$.instance_groups[{i}].depends_on[{j}]", "instance group", d, groups)
        unique(f"instance_groups[{i}].volumes", [v.name for v in g.volumes])
        if g.floating_ip and not any(n.router for n in plan.networks if n.name in g.networks):
            errors.append(
                PlanError(
                    f"$.instance_groups[{i}].floating_ip",
                    "a floating IP needs a router with an external gateway on one of the group's networks",
                )
            )
    for i, lb in enumerate(plan.load_balancers):
        ref(f"$.load_balancers[{i}].network", "network", lb.network, networks)
        ref(f"$.load_balancers[{i}].pool.members.group", "instance group", lb.pool.members.group, groups)
        member = next((g for g in plan.instance_groups if g.name == lb.pool.members.group), None)
        if member is not None and lb.network not in member.networks:
            errors.append(
                PlanError(
                    f"$.load_balancers[{i}].network",
                    f"members of group {member.name!r} have no port on network {lb.network!r}",
                )
            )
    for i, a in enumerate(plan.networks):
        for j in range(i):
            b = plan.networks[j]
            if a.cidr.overlaps(b.cidr):
                errors.append(PlanError(f"$.networks[{i}].cidr", f"{a.cidr} overlaps {b.name!r} ({b.cidr})"))
    names = [g.name for g in plan.instance_groups]
    # a duplicated name is already reported; leaving it out keeps it from also showing as a false cycle
    order = graphlib.TopologicalSorter(
        {g.name: [d for d in g.depends_on if d in groups] for g in plan.instance_groups if names.count(g.name) == 1}
    )
    try:
        order.prepare()
    except graphlib.CycleError as e:
        cycle = " → ".join(e.args[1])
        errors.append(PlanError("$.instance_groups", f"depends_on forms a cycle: {cycle}"))


def validate_plan(raw: Any, parameters: dict[str, Any] | None = None) -> Plan:
    """Return the plan with parameters substituted, or raise :class:`InvalidPlan` listing every error."""
    if not isinstance(raw, dict):
        raise InvalidPlan([PlanError("$", "a plan is a mapping with at least a name")])
    errors: list[PlanError] = []
    values = _check_parameters(raw, parameters or {}, errors)
    declared = raw.get("parameters")
    invalid = set(declared) - set(values) if isinstance(declared, dict) else set()
    before = len(errors)
    rendered = _render(raw, values, invalid, [], errors)
    unrendered = {e.path for e in errors[before:]}
    try:
        plan = Plan.model_validate(rendered)
    except ValidationError as e:
        for err in _structure_errors(e, rendered):
            # parameters were checked in pass 1, and a template that failed is already reported where it is
            if err.path not in unrendered and not re.match(r"\$\.parameters(\W|$)", err.path):
                errors.append(err)
        raise InvalidPlan(errors) from None
    _references(plan, errors)
    if errors:
        raise InvalidPlan(errors)
    return plan


_TEMPLATE = {"type": "string", "pattern": r"\{\{|\{%", "description": "a template such as {{ name }}"}


def _allow_templates(schema: dict[str, Any]) -> dict[str, Any]:
    """Let every constrained scalar be written as a template, as the operator does (``count: "{{ n }}"``);
    its value is checked after substitution. Parameter declarations are not templated."""
    out = dict(schema)
    for key in ("properties", "$defs"):
        if key in out:
            out[key] = {
                k: v if (key, k) == ("$defs", "Parameter") else _allow_templates(v) for k, v in out[key].items()
            }
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = _allow_templates(out[key])
    if "anyOf" in out:
        out["anyOf"] = [_allow_templates(s) for s in out["anyOf"]]
    kind = out.get("type")
    if kind in ("integer", "number", "boolean") or (kind == "string" and {"pattern", "enum", "format"} & set(out)):
        lifted: dict[str, Any] = {k: out[k] for k in ("title", "description", "default") if k in out}
        return {**lifted, "anyOf": [out, _TEMPLATE]}
    return out


def plan_json_schema() -> dict[str, Any]:
    """The JSON Schema of a plan as written: templated scalars allowed, checked after substitution."""
    schema = _allow_templates(Plan.model_json_schema())
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://dcostack.io/schemas/plan.v1.json"
    return schema
