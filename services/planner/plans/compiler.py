"""Compile a validated plan into a DAG of steps, each owned by one domain service.

Dependencies follow what the cloud needs: networks → subnets → routers (gateway, interfaces) →
security groups and rules → volumes → servers (in rollout batches, after the groups they depend on) →
attachments → floating IPs → load balancers → listeners → pools → members → health monitors.
Destroy runs the same graph in reverse.

Each step's params are its kind's model (shared/events/kinds.py), and its domain service and its key's
prefix come from that kind. ``Step.spec`` holds the model (what ApplyStepV2 carries); ``Step.params`` holds
the same as the JSON dict the rest of the planner, the ledger and the V1 commands still use.
"""

from __future__ import annotations

import graphlib
from dataclasses import dataclass, field
from typing import Any

from services.planner.plans.spec import Plan
from shared.events.kinds import (
    FloatingIpParams,
    HealthMonitorParams,
    Kind,
    KindParams,
    ListenerParams,
    LoadBalancerParams,
    MemberParams,
    NetworkParams,
    ObjectContainerParams,
    PoolParams,
    RouterInterfaceParams,
    RouterParams,
    SecurityGroupParams,
    SecurityGroupRuleParams,
    ServerGroupParams,
    ServerParams,
    SubnetParams,
    VolumeAttachmentParams,
    VolumeParams,
    step_key,
)


@dataclass(frozen=True)
class Step:
    """One resource to create. ``key`` is stable across plan versions (scaling diffs by it).

    ``spec`` is the typed params (what ApplyStepV2 carries); ``params`` is the same as a JSON dict."""

    key: str
    service: str  # the domain service that executes it
    kind: str
    path: str  # where in the plan it comes from, for error messages
    spec: KindParams | None = field(default=None, hash=False, compare=False)
    after: frozenset[str] = frozenset()
    params: dict[str, Any] = field(init=False, hash=False, compare=False)

    def __post_init__(self) -> None:
        if self.spec is not None and self.spec.KIND != self.kind:
            raise ValueError(f"step {self.key} is of kind '{self.kind}' but its params are of kind '{self.spec.KIND}'")
        object.__setattr__(self, "params", self.spec.as_dict() if self.spec is not None else {})


@dataclass(frozen=True)
class Graph:
    steps: dict[str, Step]

    def order(self) -> list[str]:
        """A creation order that respects every dependency (deterministic: sorted within a level)."""
        sorter = graphlib.TopologicalSorter({k: s.after for k, s in self.steps.items()})
        sorter.prepare()
        out: list[str] = []
        while sorter.is_active():
            ready = sorted(sorter.get_ready())
            out += ready
            sorter.done(*ready)
        return out

    def reverse_order(self) -> list[str]:
        return list(reversed(self.order()))


class _Builder:
    def __init__(self) -> None:
        self.steps: dict[str, Step] = {}

    def add(self, spec: KindParams, tail: tuple[str, ...], path: str, after: set[str] | None = None) -> str:
        """Add the step of ``spec`` under the key ``<its kind's prefix>/<tail...>``; return the key."""
        key = step_key(spec.KIND, *tail)
        self.steps[key] = Step(key, spec.DOMAIN.value, spec.KIND.value, path, spec, frozenset(after or ()))
        return key


def compile_plan(plan: Plan) -> Graph:
    b = _Builder()
    subnet_of: dict[str, str] = {}
    router_steps: dict[str, str] = {}
    for i, net in enumerate(plan.networks):
        path = f"$.networks[{i}]"
        n = b.add(NetworkParams(name=net.name), (net.name,), path)
        s = b.add(
            SubnetParams(network=net.name, cidr=str(net.cidr), dns=[str(d) for d in net.dns]),
            (net.name,),
            f"{path}.cidr",
            {n},
        )
        subnet_of[net.name] = s
        if net.router:
            r = router_steps.get(net.router.name) or b.add(
                RouterParams(name=net.router.name, external_network=net.router.external_network),
                (net.router.name,),
                f"{path}.router",
            )
            router_steps[net.router.name] = r
            b.add(
                RouterInterfaceParams(router=net.router.name, network=net.name),
                (net.router.name, net.name),
                f"{path}.router",
                {r, s},
            )
    sg_steps: dict[str, str] = {}
    for i, sg in enumerate(plan.security_groups):
        sg_steps[sg.name] = b.add(SecurityGroupParams(name=sg.name), (sg.name,), f"$.security_groups[{i}]")
    rule_prefix = step_key(Kind.SECURITY_GROUP_RULE, "")
    interface_prefix = step_key(Kind.ROUTER_INTERFACE, "")
    for i, sg in enumerate(plan.security_groups):
        for j, rule in enumerate(sg.rules):
            after = {sg_steps[sg.name]} | ({sg_steps[rule.remote_group]} if rule.remote_group else set())
            b.add(
                SecurityGroupRuleParams(group=sg.name, **rule.model_dump(mode="json")),
                (sg.name, str(j)),
                f"$.security_groups[{i}].rules[{j}]",
                after,
            )
    for i, vol in enumerate(plan.volumes):
        b.add(VolumeParams(**vol.model_dump(mode="json")), (vol.name,), f"$.volumes[{i}]")
    for i, c in enumerate(plan.object_containers):
        b.add(ObjectContainerParams(name=c.name), (c.name,), f"$.object_containers[{i}]")

    servers_of: dict[str, list[str]] = {}
    for i, g in enumerate(plan.instance_groups):
        path = f"$.instance_groups[{i}]"
        base = {subnet_of[n] for n in g.networks} | {sg_steps[s] for s in g.security_groups}
        base |= {k for k in b.steps if k.startswith(rule_prefix) and k.split("/")[1] in g.security_groups}
        base |= {k for k in b.steps if k.startswith(interface_prefix) and k.split("/")[2] in g.networks}
        sgroup = None
        if g.server_group:
            sgroup = b.add(
                ServerGroupParams(name=g.name, policy=g.server_group.policy), (g.name,), f"{path}.server_group"
            )
            base.add(sgroup)
        servers_of[g.name] = []
        for index in range(g.count):
            name = f"{g.name}-{index}"
            volumes = [
                b.add(
                    VolumeParams(name=f"{name}-{v.name}", size_gb=v.size_gb, type=v.type),
                    (name, v.name),
                    f"{path}.volumes[{j}]",
                )
                for j, v in enumerate(g.volumes)
            ]
            server = b.add(
                ServerParams(
                    name=name,
                    group=g.name,
                    index=index,
                    flavor=g.flavor,
                    image=g.image,
                    networks=list(g.networks),
                    security_groups=list(g.security_groups),
                    key_pair=g.key_pair,
                    server_group=g.name if sgroup else None,
                    user_data=g.user_data,
                    metadata=dict(g.metadata),
                ),
                (name,),
                path,
                base,
            )
            servers_of[g.name].append(server)
            for j, (v, volume) in enumerate(zip(g.volumes, volumes, strict=True)):
                b.add(
                    VolumeAttachmentParams(server=name, volume=f"{name}-{v.name}"),
                    (name, v.name),
                    f"{path}.volumes[{j}]",
                    {server, volume},
                )
            if g.floating_ip:
                b.add(
                    FloatingIpParams(server=name),
                    (name,),
                    f"{path}.floating_ip",
                    {server} | {k for k in base if k.startswith(interface_prefix)},
                )
    # Rollout: a group's servers come in batches (each batch after the previous one) and after every
    # server of the groups it depends on.
    for g in plan.instance_groups:
        servers = servers_of[g.name]
        deps = {s for d in g.depends_on for s in servers_of.get(d, [])}
        size = plan.rollout.batch_size
        for start in range(0, len(servers), size):
            previous = set(servers[start - size : start]) if start else set()
            for key in servers[start : start + size]:
                step = b.steps[key]
                b.steps[key] = Step(
                    step.key, step.service, step.kind, step.path, step.spec, step.after | deps | previous
                )
    for i, lb in enumerate(plan.load_balancers):
        path = f"$.load_balancers[{i}]"
        lb_step = b.add(LoadBalancerParams(name=lb.name, network=lb.network), (lb.name,), path, {subnet_of[lb.network]})
        listener = b.add(
            ListenerParams(lb=lb.name, **lb.listener.model_dump(mode="json")),
            (lb.name,),
            f"{path}.listener",
            {lb_step},
        )
        pool = b.add(PoolParams(lb=lb.name, algorithm=lb.pool.algorithm), (lb.name,), f"{path}.pool", {listener})
        for server in servers_of.get(lb.pool.members.group, []):
            name = server.split("/", 1)[1]
            b.add(
                MemberParams(lb=lb.name, server=name, port=lb.pool.members.port, network=lb.network),
                (lb.name, name),
                f"{path}.pool.members",
                {pool, server},
            )
        if lb.health_monitor:
            b.add(
                HealthMonitorParams(lb=lb.name, **lb.health_monitor.model_dump(mode="json")),
                (lb.name,),
                f"{path}.health_monitor",
                {pool},
            )
    graph = Graph(b.steps)
    graph.order()  # the builder adds edges only forwards; this asserts there is no cycle
    return graph
