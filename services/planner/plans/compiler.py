"""Compile a validated plan into a DAG of steps, each owned by one domain service.

Dependencies follow what the cloud needs: networks → subnets → routers (gateway, interfaces) →
security groups and rules → volumes → servers (in rollout batches, after the groups they depend on) →
attachments → floating IPs → load balancers → listeners → pools → members → health monitors.
Destroy runs the same graph in reverse.
"""

from __future__ import annotations

import graphlib
from dataclasses import dataclass, field
from typing import Any

from services.planner.plans.spec import Plan


@dataclass(frozen=True)
class Step:
    """One resource to create. ``key`` is stable across plan versions (scaling diffs by it)."""

    key: str
    service: str  # the domain service that executes it
    kind: str
    path: str  # where in the plan it comes from, for error messages
    params: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    after: frozenset[str] = frozenset()


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

    def add(self, key: str, service: str, kind: str, path: str, after: set[str] | None = None, **params: Any) -> str:
        self.steps[key] = Step(key, service, kind, path, params, frozenset(after or ()))
        return key


def compile_plan(plan: Plan) -> Graph:
    b = _Builder()
    subnet_of: dict[str, str] = {}
    router_steps: dict[str, str] = {}
    for i, net in enumerate(plan.networks):
        path = f"$.networks[{i}]"
        n = b.add(f"network/{net.name}", "network", "network", path, name=net.name)
        s = b.add(
            f"subnet/{net.name}",
            "network",
            "subnet",
            f"{path}.cidr",
            {n},
            network=net.name,
            cidr=str(net.cidr),
            dns=[str(d) for d in net.dns],
        )
        subnet_of[net.name] = s
        if net.router:
            r = router_steps.get(net.router.name) or b.add(
                f"router/{net.router.name}",
                "network",
                "router",
                f"{path}.router",
                name=net.router.name,
                external_network=net.router.external_network,
            )
            router_steps[net.router.name] = r
            b.add(
                f"router-interface/{net.router.name}/{net.name}",
                "network",
                "router_interface",
                f"{path}.router",
                {r, s},
                router=net.router.name,
                network=net.name,
            )
    sg_steps: dict[str, str] = {}
    for i, sg in enumerate(plan.security_groups):
        sg_steps[sg.name] = b.add(
            f"security-group/{sg.name}", "network", "security_group", f"$.security_groups[{i}]", name=sg.name
        )
    for i, sg in enumerate(plan.security_groups):
        for j, rule in enumerate(sg.rules):
            after = {sg_steps[sg.name]} | ({sg_steps[rule.remote_group]} if rule.remote_group else set())
            b.add(
                f"security-group-rule/{sg.name}/{j}",
                "network",
                "security_group_rule",
                f"$.security_groups[{i}].rules[{j}]",
                after,
                group=sg.name,
                **rule.model_dump(mode="json"),
            )
    for i, vol in enumerate(plan.volumes):
        b.add(f"volume/{vol.name}", "storage", "volume", f"$.volumes[{i}]", **vol.model_dump(mode="json"))
    for i, c in enumerate(plan.object_containers):
        b.add(f"container/{c.name}", "storage", "object_container", f"$.object_containers[{i}]", name=c.name)

    servers_of: dict[str, list[str]] = {}
    for i, g in enumerate(plan.instance_groups):
        path = f"$.instance_groups[{i}]"
        base = {subnet_of[n] for n in g.networks} | {sg_steps[s] for s in g.security_groups}
        base |= {k for k in b.steps if k.startswith("security-group-rule/") and k.split("/")[1] in g.security_groups}
        base |= {k for k in b.steps if k.startswith("router-interface/") and k.split("/")[2] in g.networks}
        sgroup = None
        if g.server_group:
            sgroup = b.add(
                f"server-group/{g.name}",
                "compute",
                "server_group",
                f"{path}.server_group",
                name=g.name,
                policy=g.server_group.policy,
            )
            base.add(sgroup)
        servers_of[g.name] = []
        for index in range(g.count):
            name = f"{g.name}-{index}"
            for j, v in enumerate(g.volumes):
                b.add(
                    f"volume/{name}/{v.name}",
                    "storage",
                    "volume",
                    f"{path}.volumes[{j}]",
                    name=f"{name}-{v.name}",
                    size_gb=v.size_gb,
                    type=v.type,
                )
            server = b.add(
                f"server/{name}",
                "compute",
                "server",
                path,
                base,
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
            )
            servers_of[g.name].append(server)
            for j, v in enumerate(g.volumes):
                b.add(
                    f"volume-attachment/{name}/{v.name}",
                    "compute",
                    "volume_attachment",
                    f"{path}.volumes[{j}]",
                    {server, f"volume/{name}/{v.name}"},
                    server=name,
                    volume=f"{name}-{v.name}",
                )
            if g.floating_ip:
                b.add(
                    f"floating-ip/{name}",
                    "network",
                    "floating_ip",
                    f"{path}.floating_ip",
                    {server} | {k for k in base if k.startswith("router-interface/")},
                    server=name,
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
                    step.key, step.service, step.kind, step.path, step.params, step.after | deps | previous
                )
    for i, lb in enumerate(plan.load_balancers):
        path = f"$.load_balancers[{i}]"
        lb_step = b.add(
            f"load-balancer/{lb.name}",
            "network",
            "load_balancer",
            path,
            {subnet_of[lb.network]},
            name=lb.name,
            network=lb.network,
        )
        listener = b.add(
            f"listener/{lb.name}",
            "network",
            "listener",
            f"{path}.listener",
            {lb_step},
            lb=lb.name,
            **lb.listener.model_dump(mode="json"),
        )
        pool = b.add(
            f"pool/{lb.name}", "network", "pool", f"{path}.pool", {listener}, lb=lb.name, algorithm=lb.pool.algorithm
        )
        for server in servers_of.get(lb.pool.members.group, []):
            name = server.removeprefix("server/")
            b.add(
                f"member/{lb.name}/{name}",
                "network",
                "member",
                f"{path}.pool.members",
                {pool, server},
                lb=lb.name,
                server=name,
                port=lb.pool.members.port,
                network=lb.network,
            )
        if lb.health_monitor:
            b.add(
                f"health-monitor/{lb.name}",
                "network",
                "health_monitor",
                f"{path}.health_monitor",
                {pool},
                lb=lb.name,
                **lb.health_monitor.model_dump(mode="json"),
            )
    graph = Graph(b.steps)
    graph.order()  # the builder adds edges only forwards; this asserts there is no cycle
    return graph
