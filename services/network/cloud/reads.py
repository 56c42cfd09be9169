"""The network adapter's reads: the project's networks, routers, security groups, floating IPs and load
balancers, its quota, the external networks, and what a plan holds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.network.cloud.marks import (
    _GONE,
    NetworkBase,
    _gateway_ip,
    _limit_used,
    _ports,
    _reading,
    _rule_dict,
    _step_mark,
    translate,
)
from shared.executor.errors import (
    SDK_ERRORS,
)
from shared.executor.marks import plan_tag
from shared.executor.models import (
    ExternalNetwork,
    FloatingIp,
    LoadBalancer,
    Network,
    NetworkQuota,
    PlanResource,
    Router,
    SecurityGroup,
)


class NetworkReads(NetworkBase):
    """Read what the project holds in Neutron and Octavia."""

    # -- read helpers for the HTTP API ----------------------------------------------------------

    def list_networks(self, plan_id: str | None = None) -> list[Network]:
        with _reading():
            return [
                Network.model_validate(
                    {
                        "id": n.id,
                        "name": n.name,
                        "status": n.status,
                        "tags": list(n.tags or []),
                        "subnet_ids": list(n.subnet_ids or []),
                        "external": bool(n.is_router_external),
                    }
                )
                for n in self.conn.network.networks(**self._plan_query(plan_id))
            ]

    def list_routers(self, plan_id: str | None = None) -> list[Router]:
        with _reading():
            return [
                Router.model_validate(
                    {
                        "id": r.id,
                        "name": r.name,
                        "status": r.status,
                        "tags": list(r.tags or []),
                        "external_network_id": (r.external_gateway_info or {}).get("network_id"),
                        "external_ip": _gateway_ip(r),
                    }
                )
                for r in self.conn.network.routers(**self._plan_query(plan_id))
            ]

    def list_security_groups(self, plan_id: str | None = None) -> list[SecurityGroup]:
        with _reading():
            return [
                SecurityGroup.model_validate(
                    {
                        "id": g.id,
                        "name": g.name,
                        "status": None,  # Neutron security groups have no status
                        "description": g.description,
                        "tags": list(g.tags or []),
                        "rules": [_rule_dict(r) for r in g.security_group_rules or []],
                    }
                )
                for g in self.conn.network.security_groups(**self._plan_query(plan_id))
            ]

    def list_floating_ips(self, plan_id: str | None = None) -> list[FloatingIp]:
        with _reading():
            return [
                FloatingIp.model_validate(
                    {
                        "id": f.id,
                        "name": f.floating_ip_address,
                        "status": f.status,
                        "tags": list(f.tags or []),
                        "floating_ip_address": f.floating_ip_address,
                        "fixed_ip_address": f.fixed_ip_address,
                        "port_id": f.port_id,
                    }
                )
                for f in self.conn.network.ips(**self._plan_query(plan_id))
            ]

    def list_load_balancers(self, plan_id: str | None = None) -> list[LoadBalancer]:
        with _reading():
            return [
                LoadBalancer.model_validate(
                    {
                        "id": lb.id,
                        "name": lb.name,
                        "status": lb.provisioning_status,
                        "operating_status": lb.operating_status,
                        "tags": list(lb.tags or []),
                        "vip_address": lb.vip_address,
                    }
                )
                for lb in self.conn.load_balancer.load_balancers(**self._plan_query(plan_id))
            ]

    def quota(self) -> NetworkQuota:
        """The project's Neutron quota with usage (networks, subnets, ports, routers, floating IPs, security
        groups and rules) and Octavia's for load balancers: ``{resource: {limit, used}}``, ``limit`` null when
        unlimited. What the project may not read is left out and named under ``unreadable``."""
        project = self.conn.current_project_id
        out: dict[str, Any] = {}
        unreadable: dict[str, str] = {}
        with _reading():
            details = self.conn.network.get_quota(project, details=True)
        for key in ("networks", "subnets", "ports", "routers", "floating_ips", "security_groups"):
            out[key] = _limit_used(getattr(details, key, None))
        out["security_group_rules"] = _limit_used(details.security_group_rules)
        try:
            lb_quota = self.conn.load_balancer.get_quota(project)
            limit = lb_quota.load_balancers
            if limit is None:
                limit = self.conn.load_balancer.get_quota_default().load_balancers
            used = sum(
                1
                for lb in self.conn.load_balancer.load_balancers(project_id=project)
                if lb.provisioning_status not in _GONE
            )
            out["load_balancers"] = {"limit": None if limit is None or int(limit) < 0 else int(limit), "used": used}
        except SDK_ERRORS as exc:
            unreadable["load_balancers"] = translate(exc, None).message
        if unreadable:
            out["unreadable"] = unreadable
        return NetworkQuota.model_validate(out)

    def external_networks(self, name: str | None = None) -> list[ExternalNetwork]:
        """The external (router:external) networks the project can use (``name``: only that one, by name or
        id), with the free addresses on them (``free_ips`` null and ``free_ips_unreadable`` saying why when
        the cloud's policy hides them)."""
        out = []
        with _reading():
            networks = [
                n for n in self.conn.network.networks(is_router_external=True) if name is None or name in (n.name, n.id)
            ]
        for n in networks:
            entry: dict[str, Any] = {"id": n.id, "name": n.name, "status": n.status, "free_ips": None}
            try:
                availability = self.conn.network.get_network_ip_availability(n.id)
                entry["free_ips"] = int(availability.total_ips) - int(availability.used_ips)
            except SDK_ERRORS as exc:
                entry["free_ips_unreadable"] = (
                    f"Neutron's network IP availability is not readable with the project's role "
                    f"({translate(exc, None).message})"
                )
            out.append(entry)
        return [ExternalNetwork.model_validate(e) for e in out]

    def plan_resources(self, plan_id: str) -> list[PlanResource]:
        """What the network service holds of one plan, found by its marks: networks, subnets (cidr, dns),
        routers (external network), router interfaces, security groups and rules, floating IPs, load
        balancers, listeners, pools, members and health monitors, each with its step mark (``step_tag``)
        and the fields the plan controls."""
        from concurrent.futures import ThreadPoolExecutor

        net, lbc = self.conn.network, self.conn.load_balancer
        tag = plan_tag(plan_id)
        listed: dict[str, Callable[[], list[Any]]] = {
            "network": lambda: list(net.networks(tags=tag)),
            "subnet": lambda: list(net.subnets(tags=tag)),
            "router": lambda: list(net.routers(tags=tag)),
            "security_group": lambda: list(net.security_groups(tags=tag)),
            "floating_ip": lambda: list(net.ips(tags=tag)),
            "load_balancer": lambda: list(lbc.load_balancers(tags=tag)),
            "listener": lambda: list(lbc.listeners(tags=tag)),
            "pool": lambda: list(lbc.pools(tags=tag)),
            "health_monitor": lambda: list(lbc.health_monitors(tags=tag)),
            "external": lambda: list(net.networks(is_router_external=True)),
        }
        with _reading(), ThreadPoolExecutor(max_workers=len(listed)) as pool:
            futures = {kind: pool.submit(call) for kind, call in listed.items()}
            found = {kind: f.result() for kind, f in futures.items()}
            subnets = found["subnet"]
            interface_lists = list(
                pool.map(
                    lambda r: list(net.ports(device_id=r.id, device_owner="network:router_interface")),
                    found["router"],
                )
            )
            member_lists = list(
                pool.map(
                    lambda p: [m for m in lbc.members(p, tags=tag) if m.provisioning_status not in _GONE],
                    [p for p in found["pool"] if p.provisioning_status not in _GONE],
                )
            )
        external = {n.id: n.name for n in found["external"]}
        networks = {n.id: n for n in found["network"]}
        subnet_by_id = {s.id: s for s in subnets}
        out: list[dict[str, Any]] = []

        def add(kind: str, obj: Any, fields: dict[str, Any], name: str | None = None) -> None:
            out.append(
                {
                    "kind": kind,
                    "step_key": None,
                    "step_tag": _step_mark(getattr(obj, "tags", None)),
                    "id": obj.id,
                    "name": name or getattr(obj, "name", None),
                    "fields": fields,
                    **({"status": obj.provisioning_status} if hasattr(obj, "provisioning_status") else {}),
                }
            )

        for n in found["network"]:
            add("network", n, {})
        for s in subnets:
            add("subnet", s, {"cidr": s.cidr, "dns": sorted(s.dns_nameservers or [])})
        for r, ports in zip(found["router"], interface_lists, strict=True):
            gateway = (r.external_gateway_info or {}).get("network_id")
            add("router", r, {"external_network": external.get(gateway, gateway)})
            for port in ports:
                for ip in port.fixed_ips or []:
                    subnet = subnet_by_id.get(ip.get("subnet_id"))
                    if subnet is None:
                        continue  # an interface on a subnet of another plan or of nobody's
                    out.append(
                        {
                            "kind": "router_interface",
                            "step_key": None,
                            # the interface has no marks of its own: it is what joins the two marked ends
                            "step_tag": None,
                            "router_step_tag": _step_mark(r.tags),
                            "network_step_tag": _step_mark(getattr(networks.get(subnet.network_id), "tags", None)),
                            "id": port.id,
                            "name": None,
                            "fields": {},
                        }
                    )
        group_marks = {g.id: _step_mark(g.tags) for g in found["security_group"]}
        for g in found["security_group"]:
            add("security_group", g, {})
            for rule in g.security_group_rules or []:
                r = _rule_dict(rule)
                description = rule.get("description") if isinstance(rule, dict) else getattr(rule, "description", None)
                if not description or not str(description).startswith("dcs-step-"):
                    continue  # Neutron's default egress rules and rules made outside DCOSTACK
                out.append(
                    {
                        "kind": "security_group_rule",
                        "step_key": None,
                        "step_tag": description,
                        "id": r["id"],
                        "name": None,
                        "fields": {
                            "direction": r["direction"],
                            "protocol": r["protocol"] or "any",
                            "ports": _ports(r["port_range_min"], r["port_range_max"]),
                            "remote_cidr": r["remote_ip_prefix"],
                            "remote_group_step_tag": group_marks.get(r["remote_group_id"], r["remote_group_id"]),
                        },
                    }
                )
        for f in found["floating_ip"]:
            # its display name is its description (its name is its address)
            add("floating_ip", f, {"attached": f.port_id is not None}, name=f.description)
        for lb in found["load_balancer"]:
            if lb.provisioning_status in _GONE:
                continue
            subnet = subnet_by_id.get(lb.vip_subnet_id)
            network = networks.get(subnet.network_id) if subnet is not None else None
            add("load_balancer", lb, {"network_step_tag": _step_mark(getattr(network, "tags", None))})
        for listener in found["listener"]:
            if listener.provisioning_status not in _GONE:
                add("listener", listener, {"protocol": listener.protocol, "port": listener.protocol_port})
        for p in found["pool"]:
            if p.provisioning_status not in _GONE:
                add("pool", p, {"algorithm": p.lb_algorithm})
        for members in member_lists:
            for m in members:
                add("member", m, {"port": m.protocol_port, "address": m.address})
        for hm in found["health_monitor"]:
            if hm.provisioning_status in _GONE:
                continue
            fields = {"type": hm.type, "delay": hm.delay, "timeout": hm.timeout, "max_retries": hm.max_retries}
            if hm.type in ("HTTP", "HTTPS"):
                fields["url_path"] = hm.url_path
            add("health_monitor", hm, fields)
        return [PlanResource.model_validate(r) for r in out]
