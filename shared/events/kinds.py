"""The step contract between the planner and the executing services: what each kind of resource is.

One params model per kind (``ServerParams``, ``SubnetParams``, ...) holds exactly the fields the
planner's compiler produces and the domain service's adapter reads, and carries as class variables
what the rest of the platform needs to know about the kind:

- ``RANK``: its creation rank. A step depends only on steps of a lower rank (or of its own kind, as a
  rollout batch waits for the previous one), so creating kinds in rank order and destroying them in
  the reverse is always safe, even for a resource no compiled plan version explains any more;
- ``PREFIX``: the first segment of its step keys (``server/web-0``, ``security-group-rule/web/1``);
- ``DOMAIN``: the service that applies and destroys it;
- ``QUOTA``: what one resource counts against the project's quotas (servers and volumes add what
  depends on their flavor or size, see :func:`quota_cost`);
- ``NAMED_BY_KEY``: whether its cloud display name is ``dcs-<plan>-<key without the prefix>``, so a
  resource that lost its marks can be matched back to its step by its name.

Every order and lookup table below is derived from the models, so adding a kind is one class and one
line in :data:`StepParams`. The models are published contract (``ApplyStepV2.params``): a change that
is not a new field with a default needs a new command version.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field


class Kind(StrEnum):
    """The kinds of resource a plan step creates, in creation order."""

    NETWORK = "network"
    SUBNET = "subnet"
    ROUTER = "router"
    ROUTER_INTERFACE = "router_interface"
    SECURITY_GROUP = "security_group"
    SECURITY_GROUP_RULE = "security_group_rule"
    VOLUME = "volume"
    OBJECT_CONTAINER = "object_container"
    SERVER_GROUP = "server_group"
    SERVER = "server"
    VOLUME_ATTACHMENT = "volume_attachment"
    FLOATING_IP = "floating_ip"
    LOAD_BALANCER = "load_balancer"
    LISTENER = "listener"
    POOL = "pool"
    MEMBER = "member"
    HEALTH_MONITOR = "health_monitor"


class Domain(StrEnum):
    """The domain services that execute steps."""

    COMPUTE = "compute"
    NETWORK = "network"
    STORAGE = "storage"


#: Rules Neutron adds to every new security group (egress IPv4 and IPv6), counted against the rule quota.
DEFAULT_RULES_PER_GROUP = 2


class KindParams(BaseModel):
    """Base of every params model: frozen, and tolerant of fields it does not know (forward compatible)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    KIND: ClassVar[Kind]
    RANK: ClassVar[int]
    PREFIX: ClassVar[str]
    DOMAIN: ClassVar[Domain]
    QUOTA: ClassVar[Mapping[str, int]] = {}
    NAMED_BY_KEY: ClassVar[bool] = False

    @classmethod
    def quota(cls, params: Mapping[str, Any], flavor: Mapping[str, Any]) -> Counter[str]:
        """What one resource of this kind counts against each quota. ``params`` is a mapping, not the
        model, because a resource being deleted may be known only by what the cloud reports of it."""
        return Counter(cls.QUOTA)

    def as_dict(self) -> dict[str, Any]:
        """The params as the V1 commands and the planner's tables (ledger, run steps) carry them: JSON
        values, without the ``kind`` tag."""
        return self.model_dump(mode="json", exclude={"kind"})


Name = Annotated[str, Field(description="The name in the plan; the cloud's display name is dcs-<plan>-<name>")]
StepRef = Annotated[str, Field(description="The plan name of a resource another step of the same plan creates")]


class NetworkParams(KindParams):
    """A Neutron network."""

    KIND = Kind.NETWORK
    RANK = 0
    PREFIX = "network"
    DOMAIN = Domain.NETWORK
    QUOTA = {"networks": 1}
    NAMED_BY_KEY = True
    kind: Literal[Kind.NETWORK] = Kind.NETWORK
    name: Name


class SubnetParams(KindParams):
    """The IPv4 subnet of a plan network (one per network, named after it)."""

    KIND = Kind.SUBNET
    RANK = 1
    PREFIX = "subnet"
    DOMAIN = Domain.NETWORK
    QUOTA = {"subnets": 1, "ports": 1}  # its DHCP port
    NAMED_BY_KEY = True
    kind: Literal[Kind.SUBNET] = Kind.SUBNET
    network: StepRef
    cidr: str = Field(description="IPv4 network in CIDR form, e.g. 10.42.0.0/24")
    dns: list[str] = Field(default=[], description="DNS name servers handed out by DHCP")


class RouterParams(KindParams):
    """A Neutron router with its gateway on a provider network."""

    KIND = Kind.ROUTER
    RANK = 2
    PREFIX = "router"
    DOMAIN = Domain.NETWORK
    QUOTA = {"routers": 1}
    NAMED_BY_KEY = True
    kind: Literal[Kind.ROUTER] = Kind.ROUTER
    name: Name
    external_network: str = Field(description="Name or id of the provider network that gives the gateway")


class RouterInterfaceParams(KindParams):
    """A router's port on a plan network's subnet. Key: ``router-interface/<router>/<network>``."""

    KIND = Kind.ROUTER_INTERFACE
    RANK = 3
    PREFIX = "router-interface"
    DOMAIN = Domain.NETWORK
    QUOTA = {"ports": 1}
    kind: Literal[Kind.ROUTER_INTERFACE] = Kind.ROUTER_INTERFACE
    router: StepRef
    network: StepRef


class SecurityGroupParams(KindParams):
    """A Neutron security group (Neutron adds its default egress rules)."""

    KIND = Kind.SECURITY_GROUP
    RANK = 4
    PREFIX = "security-group"
    DOMAIN = Domain.NETWORK
    QUOTA = {"security_groups": 1, "security_group_rules": DEFAULT_RULES_PER_GROUP}
    NAMED_BY_KEY = True
    kind: Literal[Kind.SECURITY_GROUP] = Kind.SECURITY_GROUP
    name: Name


class SecurityGroupRuleParams(KindParams):
    """One rule of a plan security group. Key: ``security-group-rule/<group>/<index>``."""

    KIND = Kind.SECURITY_GROUP_RULE
    RANK = 5
    PREFIX = "security-group-rule"
    DOMAIN = Domain.NETWORK
    QUOTA = {"security_group_rules": 1}
    kind: Literal[Kind.SECURITY_GROUP_RULE] = Kind.SECURITY_GROUP_RULE
    group: StepRef = Field(description="The security group the rule belongs to")
    protocol: Literal["tcp", "udp", "icmp", "any"] = "tcp"
    ports: str | int | None = Field(default=None, description="A port or a range 'low-high'; none for icmp/any")
    remote_cidr: str | None = Field(default=None, description="IPv4 network the traffic comes from (or goes to)")
    remote_group: StepRef | None = Field(default=None, description="Plan security group the traffic comes from")
    direction: Literal["ingress", "egress"] = "ingress"


class VolumeParams(KindParams):
    """A Cinder volume: a plan volume (``volume/<name>``) or one of a server's (``volume/<server>/<name>``,
    named ``<server>-<name>``)."""

    KIND = Kind.VOLUME
    RANK = 6
    PREFIX = "volume"
    DOMAIN = Domain.STORAGE
    kind: Literal[Kind.VOLUME] = Kind.VOLUME
    name: Name
    size_gb: int = Field(ge=1, description="Size in GiB")
    type: str | None = Field(default=None, description="Cinder volume type; None: the cloud's default")

    @classmethod
    def quota(cls, params: Mapping[str, Any], flavor: Mapping[str, Any]) -> Counter[str]:
        return Counter(volumes=1, gigabytes=int(params.get("size_gb") or 0))


class ObjectContainerParams(KindParams):
    """A Swift container. Key: ``container/<name>``."""

    KIND = Kind.OBJECT_CONTAINER
    RANK = 7
    PREFIX = "container"
    DOMAIN = Domain.STORAGE
    NAMED_BY_KEY = True
    kind: Literal[Kind.OBJECT_CONTAINER] = Kind.OBJECT_CONTAINER
    name: str = Field(description="The container's name in the plan (letters, digits, '.', '_', '-')")


class ServerGroupParams(KindParams):
    """A Nova server group of one instance group, named ``group-<instance group>``."""

    KIND = Kind.SERVER_GROUP
    RANK = 8
    PREFIX = "server-group"
    DOMAIN = Domain.COMPUTE
    QUOTA = {"server_groups": 1}
    kind: Literal[Kind.SERVER_GROUP] = Kind.SERVER_GROUP
    name: StepRef = Field(description="The instance group it is for")
    policy: Literal["affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity"]


class ServerParams(KindParams):
    """One Nova server of an instance group. Key: ``server/<group>-<index>``."""

    KIND = Kind.SERVER
    RANK = 9
    PREFIX = "server"
    DOMAIN = Domain.COMPUTE
    NAMED_BY_KEY = True
    kind: Literal[Kind.SERVER] = Kind.SERVER
    name: Name = Field(description="<group>-<index>")
    group: StepRef = Field(description="The instance group")
    index: int = Field(ge=0, description="Its index in the group")
    flavor: str = Field(description="Flavor name or id")
    image: str = Field(description="Image name or id")
    networks: list[StepRef] = Field(default=[], description="Plan networks it has a port on, in order")
    security_groups: list[StepRef] = []
    key_pair: str | None = None
    server_group: StepRef | None = Field(default=None, description="The instance group whose server group it joins")
    user_data: str | None = Field(default=None, description="cloud-init user data, as plain text")
    metadata: dict[str, str] = {}

    @classmethod
    def quota(cls, params: Mapping[str, Any], flavor: Mapping[str, Any]) -> Counter[str]:
        out: Counter[str] = Counter()
        out.update(instances=1, cores=int(flavor.get("vcpus") or 0), ram_mb=int(flavor.get("ram_mb") or 0))
        out["ports"] = len(params.get("networks") or []) or 1
        return out


class VolumeAttachmentParams(KindParams):
    """A server's volume attached. Key: ``volume-attachment/<server>/<volume>``."""

    KIND = Kind.VOLUME_ATTACHMENT
    RANK = 10
    PREFIX = "volume-attachment"
    DOMAIN = Domain.COMPUTE
    kind: Literal[Kind.VOLUME_ATTACHMENT] = Kind.VOLUME_ATTACHMENT
    server: StepRef
    volume: StepRef = Field(description="The volume's name, <server>-<volume>")


class FloatingIpParams(KindParams):
    """A floating IP on a server's first port that a router reaches. Key: ``floating-ip/<server>``."""

    KIND = Kind.FLOATING_IP
    RANK = 11
    PREFIX = "floating-ip"
    DOMAIN = Domain.NETWORK
    QUOTA = {"floating_ips": 1}
    NAMED_BY_KEY = True
    kind: Literal[Kind.FLOATING_IP] = Kind.FLOATING_IP
    server: StepRef


class LoadBalancerParams(KindParams):
    """An Octavia load balancer with its VIP on a plan network."""

    KIND = Kind.LOAD_BALANCER
    RANK = 12
    PREFIX = "load-balancer"
    DOMAIN = Domain.NETWORK
    QUOTA = {"load_balancers": 1, "ports": 1}  # its VIP port
    NAMED_BY_KEY = True
    kind: Literal[Kind.LOAD_BALANCER] = Kind.LOAD_BALANCER
    name: Name
    network: StepRef = Field(description="The plan network of its VIP")


class ListenerParams(KindParams):
    """The listener of a load balancer (one per load balancer). Key: ``listener/<lb>``."""

    KIND = Kind.LISTENER
    RANK = 13
    PREFIX = "listener"
    DOMAIN = Domain.NETWORK
    NAMED_BY_KEY = True
    kind: Literal[Kind.LISTENER] = Kind.LISTENER
    lb: StepRef
    protocol: Literal["HTTP", "HTTPS", "TCP", "UDP"] = "HTTP"
    port: int = Field(ge=1, le=65535)


class PoolParams(KindParams):
    """The pool of a load balancer's listener. Key: ``pool/<lb>``."""

    KIND = Kind.POOL
    RANK = 14
    PREFIX = "pool"
    DOMAIN = Domain.NETWORK
    NAMED_BY_KEY = True
    kind: Literal[Kind.POOL] = Kind.POOL
    lb: StepRef
    algorithm: Literal["ROUND_ROBIN", "LEAST_CONNECTIONS", "SOURCE_IP"] = "ROUND_ROBIN"


class MemberParams(KindParams):
    """A server in a load balancer's pool. Key: ``member/<lb>/<server>``."""

    KIND = Kind.MEMBER
    RANK = 15
    PREFIX = "member"
    DOMAIN = Domain.NETWORK
    kind: Literal[Kind.MEMBER] = Kind.MEMBER
    lb: StepRef
    server: StepRef
    port: int = Field(ge=1, le=65535, description="The port the server listens on")
    network: StepRef = Field(description="The plan network whose address of the server joins the pool")


class HealthMonitorParams(KindParams):
    """The health monitor of a load balancer's pool. Key: ``health-monitor/<lb>``."""

    KIND = Kind.HEALTH_MONITOR
    RANK = 16
    PREFIX = "health-monitor"
    DOMAIN = Domain.NETWORK
    NAMED_BY_KEY = True
    kind: Literal[Kind.HEALTH_MONITOR] = Kind.HEALTH_MONITOR
    lb: StepRef
    type: Literal["HTTP", "HTTPS", "TCP", "PING"] = "HTTP"
    delay: int = Field(default=5, ge=1, description="Seconds between probes")
    timeout: int = Field(default=3, ge=1, description="Seconds a probe may take")
    max_retries: int = Field(default=3, ge=1, le=10)
    url_path: str = Field(default="/", description="Probed path (HTTP and HTTPS only)")


#: The params of any step, told apart by their ``kind``.
StepParams = Annotated[
    NetworkParams
    | SubnetParams
    | RouterParams
    | RouterInterfaceParams
    | SecurityGroupParams
    | SecurityGroupRuleParams
    | VolumeParams
    | ObjectContainerParams
    | ServerGroupParams
    | ServerParams
    | VolumeAttachmentParams
    | FloatingIpParams
    | LoadBalancerParams
    | ListenerParams
    | PoolParams
    | MemberParams
    | HealthMonitorParams,
    Field(discriminator="kind"),
]


def _models() -> dict[Kind, type[KindParams]]:
    models: dict[Kind, type[KindParams]] = {}
    for model in get_args(get_args(StepParams)[0]):
        if model.KIND in models:
            raise TypeError(f"{model.__name__} and {models[model.KIND].__name__} both declare kind {model.KIND}")
        models[model.KIND] = model
    missing = set(Kind) - set(models)
    if missing:
        raise TypeError(f"no params model in StepParams for {', '.join(sorted(missing))}")
    ranks = sorted(m.RANK for m in models.values())
    if ranks != list(range(len(Kind))):
        raise TypeError(f"creation ranks must be 0..{len(Kind) - 1}, each once; got {ranks}")
    return models


#: The params model of each kind.
MODELS: Mapping[Kind, type[KindParams]] = _models()
#: Kinds in creation order: a step's dependencies are of an earlier kind or of its own.
CREATION_ORDER: tuple[Kind, ...] = tuple(sorted(Kind, key=lambda k: MODELS[k].RANK))
#: Kinds in the order a destroy takes them: dependents first.
DELETE_ORDER: tuple[Kind, ...] = tuple(reversed(CREATION_ORDER))
#: The step-key prefix of each kind.
KEY_PREFIX: Mapping[Kind, str] = {k: MODELS[k].PREFIX for k in CREATION_ORDER}
#: The kind of each step-key prefix.
KIND_OF_PREFIX: Mapping[str, Kind] = {p: k for k, p in KEY_PREFIX.items()}
#: The domain service that executes each kind.
DOMAIN_OF: Mapping[Kind, Domain] = {k: MODELS[k].DOMAIN for k in CREATION_ORDER}
#: Key prefix of the kinds whose display name is dcs-<plan>-<key without the prefix>.
PREFIX_BY_NAME: Mapping[Kind, str] = {k: p for k, p in KEY_PREFIX.items() if MODELS[k].NAMED_BY_KEY}


def params_model(kind: str) -> type[KindParams]:
    """The params model of ``kind``; ``KeyError`` naming the known kinds if there is none."""
    try:
        return MODELS[Kind(kind)]
    except ValueError:
        raise KeyError(f"unknown step kind {kind!r}; known kinds: {', '.join(Kind)}") from None


def creation_rank(kind: str, unknown: int | None = None) -> int:
    """The creation rank of ``kind``; ``unknown`` (default: after every kind) for a kind not in :class:`Kind`."""
    try:
        return MODELS[Kind(kind)].RANK
    except ValueError:
        return len(Kind) if unknown is None else unknown


def delete_rank(kind: str, unknown: int = 0) -> int:
    """The position of ``kind`` in :data:`DELETE_ORDER`; ``unknown`` (default: first) for an unknown kind."""
    try:
        return len(Kind) - 1 - MODELS[Kind(kind)].RANK
    except ValueError:
        return unknown


def step_key(kind: str, *parts: str) -> str:
    """A step key: the kind's prefix and the parts, e.g. ``step_key("volume", "app-0", "data")``."""
    return "/".join((KEY_PREFIX[Kind(kind)], *parts))


def kind_of_key(key: str) -> Kind | None:
    """The kind a step key belongs to, by its prefix; None for a key of no known kind."""
    return KIND_OF_PREFIX.get(key.split("/", 1)[0])


def domain_of(kind: str) -> Domain:
    """The domain service that executes ``kind``."""
    return MODELS[Kind(kind)].DOMAIN


def quota_cost(kind: str, params: Mapping[str, Any], flavor: Mapping[str, Any]) -> Counter[str]:
    """What one resource counts against each quota (``flavor``: a server's vcpus and ram_mb); nothing
    for a kind that takes no quota or is unknown."""
    try:
        model = MODELS[Kind(kind)]
    except ValueError:
        return Counter()
    return model.quota(params, flavor)


def parse_params(kind: str, params: Mapping[str, Any]) -> KindParams:
    """A params dict (as V1 commands and the ledger carry it) as its kind's model."""
    return params_model(kind).model_validate({**params, "kind": kind})


class StepError(BaseModel):
    """Why a step failed, as a domain service (or the planner, at a step's deadline) reports it: the
    cloud's own words, what the user can change, and whether trying again may help."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    message: str = Field(description="The cloud's own words (Nova fault, Neutron detail, quota used/limit)")
    hint: str = Field(default="", description="What the user can change, or what the platform does next")
    retriable: bool = Field(default=False, description="Whether trying the step again may succeed")
    http_status: int | None = Field(default=None, description="The cloud API's HTTP status, if a call failed")
    resource_id: str | None = Field(default=None, description="The cloud id of the resource, if there is one")
    path: str | None = Field(default=None, description="JSON path in the plan the step comes from")
