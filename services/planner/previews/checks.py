"""The checks of a preview (pure): quota headroom, flavors, images, external networks, subnet room and
host capacity, each passed, failed (with by how much, the plan paths and the fix) or not run (with why)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from services.planner.plans.compiler import Graph, Step
from services.planner.plans.spec import Plan
from services.planner.previews.diff import Catalog, Diff, Live
from shared.events.kinds import quota_cost

Status = Literal["passed", "failed", "not_run"]


# --- the checks ------------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    status: Status
    message: str
    paths: list[str] = field(default_factory=list)
    fix: str = ""
    needed: float | None = None
    available: float | None = None
    shortfall: float | None = None

    @property
    def ok(self) -> bool | None:
        return None if self.status == "not_run" else self.status == "passed"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "ok": self.ok, "status": self.status, "message": self.message}
        if self.status != "passed":
            out |= {"paths": self.paths, "fix": self.fix}
        if self.needed is not None:
            out |= {"needed": self.needed, "available": self.available}
        if self.shortfall is not None:
            out["shortfall"] = self.shortfall
        return out


def _list(paths: Iterable[str], limit: int = 4) -> str:
    unique = list(dict.fromkeys(paths))
    shown = ", ".join(unique[:limit])
    return shown + (f" (+{len(unique) - limit} more)" if len(unique) > limit else "")


def _num(value: float) -> str:
    return f"{value:g}"


#: Quotas the checks compare with what the diff takes: (key, service reporting it, label, unit).
QUOTAS = [
    ("instances", "compute", "instances", ""),
    ("cores", "compute", "cores", ""),
    ("ram_mb", "compute", "RAM", " MB"),
    ("server_groups", "compute", "server groups", ""),
    ("volumes", "storage", "volumes", ""),
    ("gigabytes", "storage", "volume gigabytes", " GB"),
    ("ports", "network", "ports", ""),
    ("floating_ips", "network", "floating IPs", ""),
    ("load_balancers", "network", "load balancers", ""),
    ("networks", "network", "networks", ""),
    ("subnets", "network", "subnets", ""),
    ("routers", "network", "routers", ""),
    ("security_groups", "network", "security groups", ""),
    ("security_group_rules", "network", "security group rules", ""),
]


class Checker:
    """Builds every check of a preview and records the live values each used (for the fingerprint)."""

    def __init__(self, plan: Plan, graph: Graph, diff: Diff, live: Live, catalog: Catalog) -> None:
        self.plan, self.graph, self.diff, self.live, self.catalog = plan, graph, diff, live, catalog
        self.stable: dict[str, Any] = {}
        self.usage: dict[str, Any] = {}
        self.created = [graph.steps[e.key] for e in diff.by_action("create")]
        self.deleted = diff.by_action("delete")

    def run(self) -> list[Check]:
        checks = [
            *self.quotas(),
            *self.server_group_members(),
            *self.flavors(),
            *self.images(),
            *self.external_networks(),
            *self.subnets(),
            self.capacity(),
        ]
        order = {"failed": 0, "not_run": 1, "passed": 2}
        return sorted(checks, key=lambda c: order[c.status])

    # -- quota ------------------------------------------------------------------------------------

    def _flavor_of(self, step: Step) -> dict[str, Any]:
        return self.catalog.flavor(step.params["flavor"]) or {}

    def quotas(self) -> list[Check]:
        """Headroom for what the diff creates, net of what it deletes."""
        sources = {"compute": self.live.limits, "network": self.live.network_quota, "storage": self.live.storage_quota}
        taken: dict[str, list[tuple[str, int]]] = defaultdict(list)  # quota → (plan path, amount) per created step
        for s in self.created:
            flavor = self._flavor_of(s) if s.kind == "server" else {}
            for key, n in quota_cost(s.kind, s.params, flavor).items():
                suffix = ".count" if s.kind == "server" else ".size_gb" if key == "gigabytes" else ""
                taken[key].append((s.path + suffix, n))
        given: Counter[str] = Counter()
        for e in self.deleted:
            resource = self.diff.live.get(e.key) or {}
            old = self.diff.deleted_steps.get(e.key)
            params = dict(old.params) if old else {}
            params.setdefault("size_gb", (resource.get("fields") or {}).get("size_gb"))
            given.update(quota_cost(e.kind, params, resource))
        out = []
        for key, source, label, unit in QUOTAS:
            name = f"quota: {label}"
            needed = sum(n for _, n in taken[key]) - given[key]
            paths = list(dict.fromkeys(p for p, _ in sorted(taken[key], key=lambda t: -t[1])))
            quota = sources[source].get(key)
            if quota is None:
                why = (sources[source].get("unreadable") or {}).get(key) or f"the {source} service did not report it"
                self.stable[f"quota.{key}"] = None
                if needed <= 0:
                    out.append(Check(name, "passed", f"{label}: nothing new to take (quota not readable: {why})"))
                    continue
                message = f"{label}: the plan takes {_num(needed)}{unit} more but the quota could not be read: {why}"
                fix = "give the service's credential a role that can read the project's quota"
                out.append(Check(name, "not_run", message, paths, fix))
                continue
            limit, used = quota.get("limit"), int(quota.get("used") or 0)
            self.stable[f"quota.{key}"] = {"limit": limit}
            self.usage[f"quota.{key}"] = {"used": used}
            if limit is None:
                out.append(Check(name, "passed", f"{label}: unlimited (needs {_num(max(needed, 0))}{unit} more)"))
                continue
            free = max(limit - used, 0)
            if needed <= free:
                message = f"{label}: needs {_num(max(needed, 0))}{unit} more, {_num(free)}{unit} free of {_num(limit)}"
                out.append(Check(name, "passed", message, needed=max(needed, 0), available=free))
                continue
            short = needed - free
            message = (
                f"{label}: needs {_num(needed)}{unit} more, {_num(free)}{unit} free of {_num(limit)}"
                f" (used {_num(used)}) — short by {_num(short)}{unit}; raise the quota or lower {_list(paths)}"
            )
            fix = f"raise the project's {label} quota by at least {_num(short)}{unit}, or lower {_list(paths)}"
            out.append(Check(name, "failed", message, paths, fix, needed=needed, available=free, shortfall=short))
        return out

    def server_group_members(self) -> list[Check]:
        limit = (self.live.limits.get("server_group_members") or {}).get("limit")
        self.stable["quota.server_group_members"] = {"limit": limit}
        out = []
        for i, g in enumerate(self.plan.instance_groups):
            if g.server_group is None or limit is None:
                continue
            path = f"$.instance_groups[{i}].count"
            name = f"quota: server group members of {g.name!r}"
            if g.count <= limit:
                out.append(Check(name, "passed", f"{g.count} members, at most {limit} per server group"))
            else:
                out.append(
                    Check(
                        name,
                        "failed",
                        f"server group of {g.name!r} would have {g.count} members; the quota allows {limit} — "
                        f"short by {g.count - limit}",
                        [path],
                        f"lower {path} to {limit} or raise the server_group_members quota",
                        needed=g.count,
                        available=limit,
                        shortfall=g.count - limit,
                    )
                )
        return out

    # -- names that must exist -----------------------------------------------------------------------

    def flavors(self) -> list[Check]:
        uses: dict[str, list[str]] = defaultdict(list)
        for i, g in enumerate(self.plan.instance_groups):
            uses[g.flavor].append(f"$.instance_groups[{i}].flavor")
        names = sorted({f["name"] for f in self.live.flavors})
        out = []
        for flavor, paths in uses.items():
            found = self.catalog.flavor(flavor)
            self.stable[f"flavor.{flavor}"] = (
                None
                if found is None
                else {k: found.get(k) for k in ("id", "vcpus", "ram_mb", "disk_gb", "ephemeral_gb")}
            )
            if found is not None:
                message = (
                    f"flavor {flavor!r}: {found['vcpus']} VCPU, {found['ram_mb']} MB RAM, {found['disk_gb']} GB disk"
                )
                out.append(Check(f"flavor {flavor!r}", "passed", message))
            else:
                out.append(
                    Check(
                        f"flavor {flavor!r}",
                        "failed",
                        f"flavor {flavor!r} does not exist in the cloud (available: {', '.join(names) or 'none'})",
                        paths,
                        f"set {_list(paths)} to one of: {', '.join(names) or 'no flavor is visible to the project'}",
                    )
                )
        return out

    def images(self) -> list[Check]:
        uses: dict[str, list[str]] = defaultdict(list)
        for i, g in enumerate(self.plan.instance_groups):
            uses[g.image].append(f"$.instance_groups[{i}].image")
        names = sorted({i["name"] for i in self.live.images if i.get("status") == "active" and i.get("name")})
        out = []
        for image, paths in uses.items():
            found = self.catalog.image(image)
            active = [i for i in found if i.get("status") == "active"]
            self.stable[f"image.{image}"] = sorted((i["id"], i.get("status")) for i in found)
            if active:
                out.append(Check(f"image {image!r}", "passed", f"image {image!r} is active ({active[0]['id']})"))
                continue
            why = (
                f"is {found[0].get('status')}, not active"
                if found
                else f"does not exist in the cloud (available: {', '.join(names) or 'none'})"
            )
            out.append(
                Check(
                    f"image {image!r}",
                    "failed",
                    f"image {image!r} {why}",
                    paths,
                    f"set {_list(paths)} to one of: {', '.join(names) or 'no active image is visible to the project'}",
                )
            )
        return out

    def external_networks(self) -> list[Check]:
        by_name = {n["name"]: n for n in self.live.external_networks} | {
            n["id"]: n for n in self.live.external_networks
        }
        names = sorted(n["name"] for n in self.live.external_networks)
        declared: dict[str, list[str]] = defaultdict(list)
        router_ext: dict[str, str] = {}
        for i, net in enumerate(self.plan.networks):
            if net.router is not None:
                declared[net.router.external_network].append(f"$.networks[{i}].router.external_network")
                router_ext[net.name] = net.router.external_network
        # Addresses the diff takes on each external network: a router gateway, a floating IP.
        takes: Counter[str] = Counter()
        groups = {g.name: g for g in self.plan.instance_groups}
        for s in self.created:
            if s.kind == "router":
                takes[s.params["external_network"]] += 1
            elif s.kind == "floating_ip":
                group = groups.get(s.params["server"].rsplit("-", 1)[0])
                ext = next((router_ext[n] for n in group.networks if n in router_ext), None) if group else None
                if ext is not None:
                    takes[ext] += 1
        out = []
        for ext, paths in declared.items():
            found = by_name.get(ext)
            self.stable[f"external_network.{ext}"] = None if found is None else found["id"]
            name = f"external network {ext!r}"
            if found is None:
                out.append(
                    Check(
                        name,
                        "failed",
                        f"external network {ext!r} does not exist (external networks: {', '.join(names) or 'none'})",
                        paths,
                        f"set {_list(paths)} to one of: {', '.join(names) or 'none; ask an operator to create one'}",
                    )
                )
                continue
            out.append(Check(name, "passed", f"external network {ext!r} exists ({found['id']})"))
            needed = takes.get(ext, 0)
            if not needed:
                continue
            addresses = f"addresses on {ext!r}"
            free = found.get("free_ips")
            if free is None:
                out.append(
                    Check(
                        addresses,
                        "not_run",
                        f"the diff takes {needed} addresses on {ext!r} (router gateways, floating IPs) but the free "
                        f"addresses could not be read: {found.get('free_ips_unreadable') or 'not reported'}",
                        paths,
                        "run the network service with a credential that may read network IP availability",
                    )
                )
                continue
            self.usage[f"external_network.{ext}.free_ips"] = free
            if needed <= free:
                out.append(
                    Check(addresses, "passed", f"needs {needed} addresses, {free} free", needed=needed, available=free)
                )
            else:
                out.append(
                    Check(
                        addresses,
                        "failed",
                        f"needs {needed} addresses on {ext!r} (router gateways, floating IPs), {free} free — "
                        f"short by {needed - free}",
                        paths,
                        "use another external network or ask an operator to extend its allocation pool",
                        needed=needed,
                        available=free,
                        shortfall=needed - free,
                    )
                )
        return out

    def subnets(self) -> list[Check]:
        out = []
        for i, net in enumerate(self.plan.networks):
            servers = [
                (j, g.count) for j, g in enumerate(self.plan.instance_groups) if net.name in g.networks and g.count
            ]
            lbs = sum(1 for lb in self.plan.load_balancers if lb.network == net.name)
            needed = sum(n for _, n in servers) + (1 if net.router else 0) + lbs + 1  # + DHCP port
            usable = max(net.cidr.num_addresses - 3, 0)  # network, broadcast and gateway addresses
            path = f"$.networks[{i}].cidr"
            name = f"subnet room: {net.name}"
            routers = int(bool(net.router))
            detail = f"{sum(n for _, n in servers)} servers, {routers} router, {lbs} load balancer VIPs, 1 DHCP"
            if needed <= usable:
                out.append(
                    Check(
                        name,
                        "passed",
                        f"{net.cidr}: {needed} ports ({detail}), {usable} addresses",
                        needed=needed,
                        available=usable,
                    )
                )
                continue
            prefix = 32
            while prefix > 0 and 2 ** (32 - prefix) - 3 < needed:
                prefix -= 1
            counts = [f"$.instance_groups[{j}].count" for j, _ in servers]
            out.append(
                Check(
                    name,
                    "failed",
                    f"{net.cidr} has {usable} usable addresses for {needed} ports ({detail})"
                    f" — short by {needed - usable}",
                    [path, *counts],
                    f"give {path} a /{prefix} or larger, or lower {_list(counts)}",
                    needed=needed,
                    available=usable,
                    shortfall=needed - usable,
                )
            )
        return out

    # -- host capacity -----------------------------------------------------------------------------------

    def capacity(self) -> Check:
        name = "host capacity"
        servers = [s for s in self.created if s.kind == "server"]
        if self.live.capacity is None:
            why = self.live.capacity_not_run or "the compute service did not report host capacity"
            self.stable["capacity"] = {"not_run": why}
            return Check(
                name,
                "not_run",
                f"host capacity for {len(servers)} new servers was not checked: {why}",
                [],
                "set DCOSTACK_CAPACITY_CLOUD on the compute service to a clouds.yaml entry whose credential may "
                "read Placement and the hypervisors (an admin)",
            )
        hosts = [h for h in self.live.capacity if h.get("usable")]
        self.stable["capacity"] = sorted(
            (h["name"], h.get("usable"), {rc: r.get("max_unit") for rc, r in h["resources"].items()})
            for h in self.live.capacity
        )
        self.usage["capacity"] = {h["name"]: {rc: r["free"] for rc, r in h["resources"].items()} for h in hosts}
        if not servers:
            return Check(name, "passed", f"no new servers; {len(hosts)} usable hosts")
        free = {h["name"]: {rc: r["free"] for rc, r in h["resources"].items()} for h in hosts}
        max_unit = {h["name"]: {rc: r["max_unit"] for rc, r in h["resources"].items()} for h in hosts}
        group_of = {g.name: (i, g) for i, g in enumerate(self.plan.instance_groups)}

        def need(s: Step) -> dict[str, int]:
            f = self._flavor_of(s)
            disk = int(f.get("disk_gb") or 0) + int(f.get("ephemeral_gb") or 0) + -(-int(f.get("swap_mb") or 0) // 1024)
            return {"VCPU": int(f.get("vcpus") or 0), "MEMORY_MB": int(f.get("ram_mb") or 0), "DISK_GB": disk}

        def fits(host: str, want: dict[str, int], room: dict[str, dict[str, int]]) -> bool:
            return all(
                want[rc] <= room[host].get(rc, 0 if want[rc] else 1) and want[rc] <= max_unit[host].get(rc, want[rc])
                for rc in want
                if want[rc]
            )

        # A flavor no empty host could take: say so by name, whatever else is placed.
        for s in servers:
            want = need(s)
            if not any(fits(h, want, max_unit) for h in free):
                i, g = group_of[s.params["group"]]
                largest = max(hosts, key=lambda h: h["resources"].get("MEMORY_MB", {}).get("max_unit", 0), default=None)
                biggest = (
                    f"largest host {largest['name']}: "
                    + ", ".join(f"{rc} {r['max_unit']}" for rc, r in largest["resources"].items())
                    if largest
                    else "no usable host"
                )
                path = f"$.instance_groups[{i}].flavor"
                return Check(
                    name,
                    "failed",
                    f"flavor {g.flavor!r} ({want['VCPU']} VCPU, {want['MEMORY_MB']} MB RAM, {want['DISK_GB']} GB disk) "
                    f"fits on no host ({biggest})",
                    [path],
                    f"pick a smaller flavor at {path}",
                )
        # First fit, largest servers first, onto the host with the most free memory; anti-affinity groups
        # need a host of their own per server, affinity groups one host for all.
        policies = {g.name: g.server_group.policy for g in self.plan.instance_groups if g.server_group}
        for group, rule in policies.items():
            total = sum(1 for s in self.graph.steps.values() if s.kind == "server" and s.params["group"] == group)
            if rule == "anti-affinity" and total > len(hosts):
                i, _ = group_of[group]
                path = f"$.instance_groups[{i}].count"
                return Check(
                    name,
                    "failed",
                    f"group {group!r} asks for anti-affinity across {total} servers but only {len(hosts)} usable "
                    f"hosts exist — short by {total - len(hosts)} hosts",
                    [path, f"$.instance_groups[{i}].server_group.policy"],
                    f"lower {path} to {len(hosts)} or use soft-anti-affinity",
                    needed=total,
                    available=len(hosts),
                    shortfall=total - len(hosts),
                )
        used_by: dict[str, set[str]] = defaultdict(set)
        affinity_host: dict[str, str] = {}
        unplaced: list[Step] = []
        for s in sorted(servers, key=lambda s: (-need(s)["MEMORY_MB"], -need(s)["VCPU"], s.key)):
            want, group = need(s), s.params["group"]
            policy = policies.get(group)
            candidates = sorted(free, key=lambda h: -free[h].get("MEMORY_MB", 0))
            if policy == "anti-affinity":
                candidates = [h for h in candidates if h not in used_by[group]]
            if policy == "affinity" and group in affinity_host:
                candidates = [affinity_host[group]]
            host = next((h for h in candidates if fits(h, want, free)), None)
            if host is None:
                unplaced.append(s)
                continue
            for rc, n in want.items():
                if rc in free[host]:
                    free[host][rc] -= n
            used_by[group].add(host)
            affinity_host.setdefault(group, host)
        if not unplaced:
            return Check(name, "passed", f"{len(servers)} new servers fit on {len(hosts)} usable hosts")
        short: Counter[str] = Counter()
        for s in unplaced:
            short.update(need(s))
        groups = sorted({group_of[s.params["group"]][0] for s in unplaced})
        paths = [f"$.instance_groups[{i}].count" for i in groups]
        return Check(
            name,
            "failed",
            f"{len(unplaced)} of {len(servers)} new servers fit on no host "
            f"(they need {short['VCPU']} VCPU, {short['MEMORY_MB']} MB RAM, {short['DISK_GB']} GB disk more)",
            paths + [f"$.instance_groups[{i}].flavor" for i in groups],
            f"lower {_list(paths)}, pick smaller flavors, or free capacity on the hosts",
            needed=len(servers),
            available=len(servers) - len(unplaced),
            shortfall=len(unplaced),
        )
