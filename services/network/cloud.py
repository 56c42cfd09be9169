"""The network service's OpenStack adapter: Neutron (networks, subnets, routers, security groups,
floating IPs) and Octavia (load balancers, listeners, pools, members, health monitors).

Every resource is created with the marks of ``shared.executor.marks`` and looked up by them first, so a
redelivered step finds what it already made. References between steps are plan-level names; they are
resolved by the marks of the same plan. Calls are synchronous: callers run them in a thread.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import openstack.exceptions as os_exc

from shared.executor.errors import (
    IMMUTABLE_HINT,
    NETWORK_HINTS,
    SDK_ERRORS,
    CloudError,
    cloud_message,
    translate_sdk_error,
)
from shared.executor.marks import StepWork, plan_tag, step_tag

Progress = Callable[[str], None]

#: Octavia's statuses of an object that is gone or going.
_GONE = {"DELETED", "PENDING_DELETE"}
#: Listener and pool protocols that Octavia accepts for each listener protocol.
_POOL_PROTOCOL = {"HTTP": "HTTP", "HTTPS": "HTTPS", "TCP": "TCP", "UDP": "UDP"}


def translate(exc: BaseException, work: StepWork | None) -> CloudError:
    """An openstacksdk/keystoneauth failure as a CloudError (Neutron's and Octavia's hints); ``work`` is
    None for reads."""
    return translate_sdk_error(exc, work, NETWORK_HINTS)


@contextlib.contextmanager
def _reading() -> Iterator[None]:
    try:
        yield
    except SDK_ERRORS as exc:
        raise translate(exc, None) from exc


def _tags(*values: str) -> str:
    return ",".join(values)


def _first(items: Iterable[Any]) -> Any | None:
    """The oldest of what the marks found (two only after a race; the older one is kept by everyone)."""
    found = sorted(items, key=lambda r: (str(getattr(r, "created_at", "") or ""), str(r.id)))
    return found[0] if found else None


class NetworkCloud:
    """Applies and destroys the network service's steps against one OpenStack project."""

    def __init__(self, conn: Any, *, timeout: float = 300.0, interval: float = 1.0) -> None:
        self.conn = conn
        self.timeout = timeout
        self.interval = interval

    # -- entry points ---------------------------------------------------------------------------

    def apply(self, work: StepWork, progress: Progress) -> dict[str, Any]:
        """Create the step's resource unless its marks find it; wait for its terminal state.

        Raises CloudError (missing reference: retriable; the cloud's refusal: with its message)."""
        handler = getattr(self, f"_apply_{work.kind}", None)
        if handler is None:
            raise CloudError(f"{work.path}: the network service does not handle step kind {work.kind!r}")
        try:
            out: dict[str, Any] = handler(work, progress)
            return out
        except SDK_ERRORS as exc:
            raise translate(exc, work) from exc

    def destroy(self, work: StepWork, progress: Progress) -> bool:
        """Delete the step's resource if its marks find it and wait until it is gone.

        Returns False when nothing was there. Raises CloudError."""
        handler = getattr(self, f"_destroy_{work.kind}", None)
        if handler is None:
            raise CloudError(f"{work.path}: the network service does not handle step kind {work.kind!r}")
        try:
            done: bool = handler(work, progress)
            return done
        except os_exc.NotFoundException:
            return False  # it went away between the lookup and the delete
        except SDK_ERRORS as exc:
            raise translate(exc, work) from exc

    # -- read helpers for the HTTP API ----------------------------------------------------------

    def list_networks(self, plan_id: str | None = None) -> list[dict[str, Any]]:
        with _reading():
            return [
                {
                    "id": n.id,
                    "name": n.name,
                    "status": n.status,
                    "tags": list(n.tags or []),
                    "subnet_ids": list(n.subnet_ids or []),
                    "external": bool(n.is_router_external),
                }
                for n in self.conn.network.networks(**self._plan_query(plan_id))
            ]

    def list_routers(self, plan_id: str | None = None) -> list[dict[str, Any]]:
        with _reading():
            return [
                {
                    "id": r.id,
                    "name": r.name,
                    "status": r.status,
                    "tags": list(r.tags or []),
                    "external_network_id": (r.external_gateway_info or {}).get("network_id"),
                    "external_ip": _gateway_ip(r),
                }
                for r in self.conn.network.routers(**self._plan_query(plan_id))
            ]

    def list_security_groups(self, plan_id: str | None = None) -> list[dict[str, Any]]:
        with _reading():
            return [
                {
                    "id": g.id,
                    "name": g.name,
                    "status": None,  # Neutron security groups have no status
                    "description": g.description,
                    "tags": list(g.tags or []),
                    "rules": [_rule_dict(r) for r in g.security_group_rules or []],
                }
                for g in self.conn.network.security_groups(**self._plan_query(plan_id))
            ]

    def list_floating_ips(self, plan_id: str | None = None) -> list[dict[str, Any]]:
        with _reading():
            return [
                {
                    "id": f.id,
                    "name": f.floating_ip_address,
                    "status": f.status,
                    "tags": list(f.tags or []),
                    "floating_ip_address": f.floating_ip_address,
                    "fixed_ip_address": f.fixed_ip_address,
                    "port_id": f.port_id,
                }
                for f in self.conn.network.ips(**self._plan_query(plan_id))
            ]

    def list_load_balancers(self, plan_id: str | None = None) -> list[dict[str, Any]]:
        with _reading():
            return [
                {
                    "id": lb.id,
                    "name": lb.name,
                    "status": lb.provisioning_status,
                    "operating_status": lb.operating_status,
                    "tags": list(lb.tags or []),
                    "vip_address": lb.vip_address,
                }
                for lb in self.conn.load_balancer.load_balancers(**self._plan_query(plan_id))
            ]

    def quota(self) -> dict[str, dict[str, int | None]]:
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
        return out

    def external_networks(self, name: str | None = None) -> list[dict[str, Any]]:
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
        return out

    def plan_resources(self, plan_id: str) -> list[dict[str, Any]]:
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
        return out

    @staticmethod
    def _plan_query(plan_id: str | None) -> dict[str, str]:
        return {"tags": plan_tag(plan_id)} if plan_id else {}

    # -- lookups by marks -------------------------------------------------------------------------

    @staticmethod
    def _marks(work: StepWork, step_key: str | None = None) -> str:
        return _tags(plan_tag(work.owner.plan_id), step_tag(step_key or work.owner.step_key))

    def _missing(self, work: StepWork, step_key: str, what: str) -> CloudError:
        return CloudError(
            f"{work.path}: {what} of step {step_key!r} not found in the cloud",
            hint=f"step {step_key} must be applied first; it may still be in flight",
            retriable=True,
        )

    def _octavia(self, list_call: Callable[..., Iterable[Any]], *args: Any, tags: str) -> Any | None:
        return _first(o for o in list_call(*args, tags=tags) if o.provisioning_status not in _GONE)

    def _ref(self, work: StepWork, key: str, what: str, required: bool) -> Any:
        """The resource of another step of the same plan, by its marks. With ``required`` a missing one
        is a retriable CloudError naming the path and the step; without, it is None."""
        marks = self._marks(work, key)
        kind = key.split("/", 1)[0]
        net, lbc = self.conn.network, self.conn.load_balancer
        if kind in ("load-balancer", "listener", "pool"):
            calls = {"load-balancer": lbc.load_balancers, "listener": lbc.listeners, "pool": lbc.pools}
            found = self._octavia(calls[kind], tags=marks)
        else:
            calls = {
                "network": net.networks,
                "subnet": net.subnets,
                "router": net.routers,
                "security-group": net.security_groups,
            }
            found = _first(calls[kind](tags=marks))
        if found is None and required:
            raise self._missing(work, key, what)
        return found

    def _network(self, work: StepWork, name: str, *, required: bool = True) -> Any:
        return self._ref(work, f"network/{name}", f"network {name!r}", required)

    def _subnet(self, work: StepWork, network: str, *, required: bool = True) -> Any:
        return self._ref(work, f"subnet/{network}", f"subnet of network {network!r}", required)

    def _router(self, work: StepWork, name: str, *, required: bool = True) -> Any:
        return self._ref(work, f"router/{name}", f"router {name!r}", required)

    def _security_group(self, work: StepWork, name: str, *, required: bool = True) -> Any:
        return self._ref(work, f"security-group/{name}", f"security group {name!r}", required)

    def _load_balancer(self, work: StepWork, name: str, *, required: bool = True) -> Any:
        return self._ref(work, f"load-balancer/{name}", f"load balancer {name!r}", required)

    def _listener(self, work: StepWork, lb: str, *, required: bool = True) -> Any:
        return self._ref(work, f"listener/{lb}", f"listener of load balancer {lb!r}", required)

    def _pool(self, work: StepWork, lb: str, *, required: bool = True) -> Any:
        return self._ref(work, f"pool/{lb}", f"pool of load balancer {lb!r}", required)

    def _server(self, work: StepWork, name: str) -> Any:
        key = f"server/{name}"
        found = _first(self.conn.compute.servers(tags=self._marks(work, key)))
        if found is None:
            raise self._missing(work, key, f"server {name!r}")
        return found

    def _server_ports(self, work: StepWork, server: Any, name: str) -> list[Any]:
        ports = list(self.conn.network.ports(device_id=server.id))
        if not ports:
            raise CloudError(
                f"{work.path}: server {name!r} ({server.id}) has no port yet (status {server.status})",
                hint="the server is still being built; retry once it is ACTIVE",
                retriable=True,
            )
        return ports

    # -- waiting ----------------------------------------------------------------------------------

    def _wait_octavia(self, what: str, fetch: Callable[[], Any], lb_id: str, progress: Progress) -> Any:
        """Poll until the object and its load balancer are both ACTIVE, reporting each transition."""
        deadline = time.monotonic() + self.timeout
        last: tuple[str, str] | None = None
        while True:
            obj = fetch()
            lb = obj if getattr(obj, "id", None) == lb_id else self.conn.load_balancer.get_load_balancer(lb_id)
            state = (obj.provisioning_status, lb.provisioning_status)
            if state != last:
                parent = "" if obj is lb else f" (load balancer {lb_id}: {state[1]})"
                progress(f"{what} {obj.id}: {state[0]}{parent}")
                last = state
            if "ERROR" in state:
                failed = obj if state[0] == "ERROR" else lb
                raise CloudError(
                    f"{what} {obj.id}: Octavia set provisioning_status ERROR "
                    f"(load balancer {lb_id} provisioning_status {lb.provisioning_status}, "
                    f"operating_status {failed.operating_status})",
                    hint="Octavia failed to build it; see the Octavia worker log; destroy and apply again",
                    resource_id=obj.id,
                )
            if state == ("ACTIVE", "ACTIVE"):
                return obj
            if time.monotonic() > deadline:
                raise CloudError(
                    f"{what} {obj.id}: still {state[0]} after {self.timeout:.0f}s (load balancer {state[1]})",
                    hint="Octavia is slow; retrying will wait again",
                    retriable=True,
                    resource_id=obj.id,
                )
            time.sleep(self.interval)

    def _wait_lb_settled(self, lb_id: str, progress: Progress) -> Any | None:
        """Wait until the load balancer is not PENDING_* (Octavia refuses changes meanwhile)."""
        deadline = time.monotonic() + self.timeout
        last = None
        while True:
            lb = self.conn.load_balancer.find_load_balancer(lb_id, ignore_missing=True)
            if lb is None or lb.provisioning_status == "DELETED":
                return None
            if lb.provisioning_status != last:
                if last is not None or lb.provisioning_status.startswith("PENDING"):
                    progress(f"load balancer {lb_id}: {lb.provisioning_status}")
                last = lb.provisioning_status
            if not lb.provisioning_status.startswith("PENDING"):
                return lb
            if time.monotonic() > deadline:
                raise CloudError(
                    f"load balancer {lb_id}: still {lb.provisioning_status} after {self.timeout:.0f}s",
                    hint=IMMUTABLE_HINT,
                    retriable=True,
                    resource_id=lb_id,
                )
            time.sleep(self.interval)

    def _wait_gone(self, what: str, fetch: Callable[[], Any | None], progress: Progress) -> None:
        deadline = time.monotonic() + self.timeout
        last = None
        while True:
            obj = fetch()
            status = None if obj is None else getattr(obj, "provisioning_status", None) or getattr(obj, "status", None)
            if obj is None or status == "DELETED":
                progress(f"{what}: deleted")
                return
            if status != last:
                progress(f"{what}: {status}")
                last = status
            if status == "ERROR":
                raise CloudError(f"{what}: deletion failed, status ERROR", resource_id=getattr(obj, "id", None))
            if time.monotonic() > deadline:
                raise CloudError(f"{what}: still there after {self.timeout:.0f}s", retriable=True)
            time.sleep(self.interval)

    # -- Neutron: create, then tag (this Neutron refuses ``tags`` in POST) ------------------------

    def _neutron_find(
        self, list_call: Callable[..., Iterable[Any]], work: StepWork, name: str, by: str = "name"
    ) -> Any | None:
        """By marks; else an untagged one of our display name (``by``: the attribute that carries it),
        left by a crash between create and tag."""
        found = _first(list_call(tags=self._marks(work)))
        if found is None:
            orphan = _first(r for r in list_call(**{by: work.owner.name(name)}) if not r.tags)
            if orphan is not None:
                found = self.conn.network.set_tags(orphan, work.owner.tags)
        return found

    def _neutron_create(self, create: Callable[..., Any], work: StepWork, **attrs: Any) -> Any:
        # If tagging fails the resource stays untagged; the next apply adopts it by its display name.
        return self.conn.network.set_tags(create(**attrs), work.owner.tags)

    # -- network, subnet, router, router interface --------------------------------------------------

    def _apply_network(self, work: StepWork, progress: Progress) -> dict[str, Any]:
        net = self._neutron_find(self.conn.network.networks, work, work.params["name"])
        if net is None:
            net = self._neutron_create(
                self.conn.network.create_network, work, name=work.owner.name(work.params["name"])
            )
            progress(f"network {net.id} created: {net.status}")
        else:
            progress(f"network {net.id} exists: {net.status}")
        return {"id": net.id, "name": net.name, "status": net.status}

    def _destroy_network(self, work: StepWork, progress: Progress) -> bool:
        net = self._neutron_find(self.conn.network.networks, work, work.params["name"])
        if net is None:
            return False
        self.conn.network.delete_network(net, ignore_missing=True)
        self._wait_gone(f"network {net.id}", lambda: self.conn.network.find_network(net.id), progress)
        return True

    def _apply_subnet(self, work: StepWork, progress: Progress) -> dict[str, Any]:
        p = work.params
        subnet = self._neutron_find(self.conn.network.subnets, work, p["network"])
        if subnet is None:
            net = self._network(work, p["network"])
            subnet = self._neutron_create(
                self.conn.network.create_subnet,
                work,
                name=work.owner.name(p["network"]),
                network_id=net.id,
                ip_version=4,
                cidr=p["cidr"],
                dns_nameservers=list(p.get("dns") or []),
            )
            progress(f"subnet {subnet.id} created: {subnet.cidr}")
        else:
            progress(f"subnet {subnet.id} exists: {subnet.cidr}")
        return {"id": subnet.id, "network_id": subnet.network_id, "cidr": subnet.cidr, "gateway_ip": subnet.gateway_ip}

    def _destroy_subnet(self, work: StepWork, progress: Progress) -> bool:
        subnet = self._neutron_find(self.conn.network.subnets, work, work.params["network"])
        if subnet is None:
            return False
        self.conn.network.delete_subnet(subnet, ignore_missing=True)
        self._wait_gone(f"subnet {subnet.id}", lambda: self.conn.network.find_subnet(subnet.id), progress)
        return True

    def _external_network(self, work: StepWork, name: str) -> Any:
        ext = self.conn.network.find_network(name, ignore_missing=True)
        if ext is None or not ext.is_router_external:
            choices = ", ".join(sorted(n.name for n in self.conn.network.networks(is_router_external=True)))
            why = "does not exist" if ext is None else "is not an external (router:external) network"
            raise CloudError(
                f"{work.path}: external network {name!r} {why}",
                hint=f"use one of the external networks: {choices or 'none; ask an operator to create one'}",
                http_status=404 if ext is None else 400,
            )
        return ext

    def _apply_router(self, work: StepWork, progress: Progress) -> dict[str, Any]:
        p = work.params
        ext = self._external_network(work, p["external_network"])
        router = self._neutron_find(self.conn.network.routers, work, p["name"])
        if router is None:
            router = self._neutron_create(
                self.conn.network.create_router,
                work,
                name=work.owner.name(p["name"]),
                external_gateway_info={"network_id": ext.id},
            )
            progress(f"router {router.id} created: {router.status}")
        else:
            progress(f"router {router.id} exists: {router.status}")
            if (router.external_gateway_info or {}).get("network_id") != ext.id:
                router = self.conn.network.update_router(router, external_gateway_info={"network_id": ext.id})
                progress(f"router {router.id}: gateway set on {ext.name}")
        if router.status == "ERROR":
            raise CloudError(f"router {router.id} is in ERROR", resource_id=router.id)
        return {
            "id": router.id,
            "status": router.status,
            "external_network_id": ext.id,
            "external_gateway_ip": _gateway_ip(router),
        }

    def _destroy_router(self, work: StepWork, progress: Progress) -> bool:
        router = self._neutron_find(self.conn.network.routers, work, work.params["name"])
        if router is None:
            return False
        if router.external_gateway_info:
            self.conn.network.update_router(router, external_gateway_info={})
            progress(f"router {router.id}: gateway cleared")
        self.conn.network.delete_router(router, ignore_missing=True)
        self._wait_gone(f"router {router.id}", lambda: self.conn.network.find_router(router.id), progress)
        return True

    def _interface_port(self, router: Any, subnet: Any) -> Any | None:
        return _first(
            port
            for port in self.conn.network.ports(device_id=router.id, network_id=subnet.network_id)
            if any(ip.get("subnet_id") == subnet.id for ip in port.fixed_ips or [])
        )

    def _apply_router_interface(self, work: StepWork, progress: Progress) -> dict[str, Any]:
        p = work.params
        router = self._router(work, p["router"])
        subnet = self._subnet(work, p["network"])
        port = self._interface_port(router, subnet)
        if port is None:
            self.conn.network.add_interface_to_router(router, subnet=subnet.id)
            port = self._interface_port(router, subnet)
            if port is None:
                raise CloudError(f"{work.path}: router {router.id} reports no port on subnet {subnet.id}")
            progress(f"router {router.id}: interface {port.id} on subnet {subnet.id} added ({port.status})")
        else:
            progress(f"router {router.id}: interface {port.id} on subnet {subnet.id} exists ({port.status})")
        ip = next(ip["ip_address"] for ip in port.fixed_ips if ip.get("subnet_id") == subnet.id)
        return {"id": port.id, "router_id": router.id, "subnet_id": subnet.id, "ip_address": ip}

    def _destroy_router_interface(self, work: StepWork, progress: Progress) -> bool:
        p = work.params
        router = self._router(work, p["router"], required=False)
        subnet = self._subnet(work, p["network"], required=False)
        if router is None or subnet is None:
            return False  # without either end there is no interface between them
        port = self._interface_port(router, subnet)
        if port is None:
            return False
        try:
            self.conn.network.remove_interface_from_router(router, subnet=subnet.id)
        except os_exc.NotFoundException:
            return False
        self._wait_gone(f"router interface {port.id}", lambda: self.conn.network.find_port(port.id), progress)
        return True

    # -- security groups and rules ------------------------------------------------------------------

    def _apply_security_group(self, work: StepWork, progress: Progress) -> dict[str, Any]:
        p = work.params
        group = self._neutron_find(self.conn.network.security_groups, work, p["name"])
        if group is None:
            group = self._neutron_create(
                self.conn.network.create_security_group,
                work,
                name=work.owner.name(p["name"]),
                description=p.get("description") or "",
            )
            progress(f"security group {group.id} created")
        else:
            progress(f"security group {group.id} exists")
        return {"id": group.id, "name": group.name}

    def _destroy_security_group(self, work: StepWork, progress: Progress) -> bool:
        group = self._neutron_find(self.conn.network.security_groups, work, work.params["name"])
        if group is None:
            return False
        self.conn.network.delete_security_group(group, ignore_missing=True)
        self._wait_gone(f"security group {group.id}", lambda: self.conn.network.find_security_group(group.id), progress)
        return True

    def _apply_security_group_rule(self, work: StepWork, progress: Progress) -> dict[str, Any]:
        p = work.params
        group = self._security_group(work, p["group"])
        mark = step_tag(work.owner.step_key)
        rule = _first(self.conn.network.security_group_rules(security_group_id=group.id, description=mark))
        if rule is not None:
            progress(f"security group rule {rule.id} exists")
            return {"id": rule.id, "security_group_id": group.id}
        attrs: dict[str, Any] = {
            "security_group_id": group.id,
            "direction": p.get("direction") or "ingress",
            "ethertype": "IPv4",
            "description": mark,
        }
        protocol = p.get("protocol") or "tcp"
        if protocol != "any":
            attrs["protocol"] = protocol
        ports = p.get("ports")
        if ports is not None:
            low, _, high = str(ports).partition("-")
            attrs["port_range_min"], attrs["port_range_max"] = int(low), int(high or low)
        if p.get("remote_cidr"):
            attrs["remote_ip_prefix"] = str(p["remote_cidr"])
        if p.get("remote_group"):
            attrs["remote_group_id"] = self._security_group(work, p["remote_group"]).id
        try:
            rule = self.conn.network.create_security_group_rule(**attrs)
        except os_exc.ConflictException as exc:
            # The same rule exists without our mark (Neutron's default egress rules): it is what the plan asks.
            existing = re.search(r"Rule id is ([0-9a-f-]{36})", cloud_message(exc))
            if existing is None:
                raise
            progress(f"security group rule {existing.group(1)} already exists in group {group.id}")
            return {"id": existing.group(1), "security_group_id": group.id, "preexisting": True}
        progress(f"security group rule {rule.id} created")
        return {"id": rule.id, "security_group_id": group.id}

    def _destroy_security_group_rule(self, work: StepWork, progress: Progress) -> bool:
        group = self._security_group(work, work.params["group"], required=False)
        if group is None:
            return False  # rules go with their group
        mark = step_tag(work.owner.step_key)
        rules = list(self.conn.network.security_group_rules(security_group_id=group.id, description=mark))
        for rule in rules:
            self.conn.network.delete_security_group_rule(rule, ignore_missing=True)
            progress(f"security group rule {rule.id}: deleted")
        return bool(rules)

    # -- floating IPs -------------------------------------------------------------------------------

    def _routed_port(self, work: StepWork, ports: list[Any], name: str) -> tuple[Any, str, str]:
        """The server's port on a subnet with a router that has an external gateway: (port, ip, ext net id)."""
        for port in ports:
            for ip in port.fixed_ips or []:
                for iface in self.conn.network.ports(
                    network_id=port.network_id, device_owner="network:router_interface"
                ):
                    if not any(f.get("subnet_id") == ip.get("subnet_id") for f in iface.fixed_ips or []):
                        continue
                    router = self.conn.network.get_router(iface.device_id)
                    ext = (router.external_gateway_info or {}).get("network_id")
                    if ext:
                        return port, ip["ip_address"], ext
        raise CloudError(
            f"{work.path}: server {name!r} has no port on a network whose router has an external gateway",
            hint="give one of the group's networks a router with external_network",
            retriable=True,  # the router interface may still be in flight
        )

    def _apply_floating_ip(self, work: StepWork, progress: Progress) -> dict[str, Any]:
        name = work.params["server"]
        fip = self._neutron_find(self.conn.network.ips, work, name, by="description")
        server = self._server(work, name)
        port, fixed_ip, ext = self._routed_port(work, self._server_ports(work, server, name), name)
        if fip is None:
            fip = self._neutron_create(
                self.conn.network.create_ip,
                work,
                floating_network_id=ext,
                port_id=port.id,
                fixed_ip_address=fixed_ip,
                description=work.owner.name(name),
            )
            progress(f"floating ip {fip.floating_ip_address} created on port {port.id}: {fip.status}")
        elif fip.port_id != port.id:
            fip = self.conn.network.update_ip(fip, port_id=port.id, fixed_ip_address=fixed_ip)
            progress(f"floating ip {fip.floating_ip_address} associated with port {port.id}: {fip.status}")
        else:
            progress(f"floating ip {fip.floating_ip_address} exists on port {port.id}: {fip.status}")
        # Neutron reports DOWN until an L3 agent wires it and ACTIVE after; only ERROR is a failure.
        if fip.status == "ERROR":
            raise CloudError(f"floating ip {fip.floating_ip_address} is in ERROR", resource_id=fip.id)
        return {
            "id": fip.id,
            "floating_ip_address": fip.floating_ip_address,
            "fixed_ip_address": fip.fixed_ip_address,
            "port_id": fip.port_id,
            "status": fip.status,
        }

    def _destroy_floating_ip(self, work: StepWork, progress: Progress) -> bool:
        fip = self._neutron_find(self.conn.network.ips, work, work.params["server"], by="description")
        if fip is None:
            return False
        self.conn.network.delete_ip(fip, ignore_missing=True)
        self._wait_gone(f"floating ip {fip.floating_ip_address}", lambda: self.conn.network.find_ip(fip.id), progress)
        return True

    # -- Octavia ------------------------------------------------------------------------------------

    def _apply_load_balancer(self, work: StepWork, progress: Progress) -> dict[str, Any]:
        p = work.params
        lb = self._octavia(self.conn.load_balancer.load_balancers, tags=self._marks(work))
        if lb is not None and lb.provisioning_status == "ERROR":
            progress(f"load balancer {lb.id} is in ERROR; deleting it to build it again")
            self._delete_lb(lb.id, progress)
            lb = None
        if lb is None:
            subnet = self._subnet(work, p["network"])
            lb = self.conn.load_balancer.create_load_balancer(
                name=work.owner.name(p["name"]), vip_subnet_id=subnet.id, tags=work.owner.tags
            )
            progress(f"load balancer {lb.id} created")
        lb = self._wait_octavia(
            "load balancer", lambda: self.conn.load_balancer.get_load_balancer(lb.id), lb.id, progress
        )
        return {
            "id": lb.id,
            "vip_address": lb.vip_address,
            "vip_port_id": lb.vip_port_id,
            "vip_subnet_id": lb.vip_subnet_id,
            "provisioning_status": lb.provisioning_status,
            "operating_status": lb.operating_status,
        }

    def _delete_lb(self, lb_id: str, progress: Progress) -> None:
        if self._wait_lb_settled(lb_id, progress) is None:
            return
        self.conn.load_balancer.delete_load_balancer(lb_id, ignore_missing=True, cascade=True)
        self._wait_gone(
            f"load balancer {lb_id}",
            lambda: self.conn.load_balancer.find_load_balancer(lb_id, ignore_missing=True),
            progress,
        )

    def _destroy_load_balancer(self, work: StepWork, progress: Progress) -> bool:
        lb = self._octavia(self.conn.load_balancer.load_balancers, tags=self._marks(work))
        if lb is None:
            return False
        self._delete_lb(lb.id, progress)
        return True

    def _child(
        self,
        work: StepWork,
        progress: Progress,
        what: str,
        find: Callable[[], Any | None],
        get: Callable[[str], Any],
        delete: Callable[[Any], None],
        create: Callable[[], Any],
        lb_id: str,
    ) -> Any:
        """Apply one Octavia child object: reuse what the marks find, rebuild an ERROR one, else create."""
        obj = find()
        if obj is not None and obj.provisioning_status == "ERROR":
            progress(f"{what} {obj.id} is in ERROR; deleting it to build it again")
            self._wait_lb_settled(lb_id, progress)
            delete(obj)
            self._wait_gone(f"{what} {obj.id}", find, progress)
            obj = None
        if obj is None:
            self._wait_lb_settled(lb_id, progress)
            obj = create()
            progress(f"{what} {obj.id} created")
        return self._wait_octavia(what, lambda: get(obj.id), lb_id, progress)

    def _destroy_child(
        self, what: str, obj: Any | None, lb_id: str, delete: Callable[[Any], None], progress: Progress
    ) -> bool:
        """Delete one Octavia child and wait for its load balancer to return to ACTIVE (no cascade)."""
        if obj is None:
            return False
        if self._wait_lb_settled(lb_id, progress) is None:
            return False  # the load balancer, and with it everything under it, is gone
        delete(obj)
        progress(f"{what} {obj.id}: delete requested")
        lb = self._wait_lb_settled(lb_id, progress)
        if lb is not None and lb.provisioning_status != "ACTIVE":
            raise CloudError(
                f"{what} {obj.id}: after its deletion load balancer {lb_id} is {lb.provisioning_status}",
                hint="Octavia failed; see the Octavia worker log",
                resource_id=obj.id,
            )
        progress(f"{what} {obj.id}: deleted")
        return True

    def _apply_listener(self, work: StepWork, progress: Progress) -> dict[str, Any]:
        p = work.params
        lb = self._load_balancer(work, p["lb"])
        lbc = self.conn.load_balancer
        listener = self._child(
            work,
            progress,
            "listener",
            lambda: self._octavia(lbc.listeners, tags=self._marks(work)),
            lbc.get_listener,
            lambda o: lbc.delete_listener(o, ignore_missing=True),
            lambda: lbc.create_listener(
                name=work.owner.name(p["lb"]),
                protocol=p.get("protocol") or "HTTP",
                protocol_port=int(p["port"]),
                load_balancer_id=lb.id,
                tags=work.owner.tags,
            ),
            lb.id,
        )
        return {
            "id": listener.id,
            "load_balancer_id": lb.id,
            "protocol": listener.protocol,
            "port": listener.protocol_port,
            "vip_address": lb.vip_address,
        }

    def _destroy_listener(self, work: StepWork, progress: Progress) -> bool:
        lbc = self.conn.load_balancer
        listener = self._octavia(lbc.listeners, tags=self._marks(work))
        if listener is None:
            return False
        lb_id = listener.load_balancers[0]["id"]
        return self._destroy_child(
            "listener", listener, lb_id, lambda o: lbc.delete_listener(o, ignore_missing=True), progress
        )

    def _apply_pool(self, work: StepWork, progress: Progress) -> dict[str, Any]:
        p = work.params
        lb = self._load_balancer(work, p["lb"])
        listener = self._listener(work, p["lb"])
        lbc = self.conn.load_balancer
        pool = self._child(
            work,
            progress,
            "pool",
            lambda: self._octavia(lbc.pools, tags=self._marks(work)),
            lbc.get_pool,
            lambda o: lbc.delete_pool(o, ignore_missing=True),
            lambda: lbc.create_pool(
                name=work.owner.name(p["lb"]),
                protocol=_POOL_PROTOCOL.get(listener.protocol, listener.protocol),
                lb_algorithm=p.get("algorithm") or "ROUND_ROBIN",
                listener_id=listener.id,
                tags=work.owner.tags,
            ),
            lb.id,
        )
        return {"id": pool.id, "load_balancer_id": lb.id, "listener_id": listener.id, "protocol": pool.protocol}

    def _destroy_pool(self, work: StepWork, progress: Progress) -> bool:
        lbc = self.conn.load_balancer
        pool = self._octavia(lbc.pools, tags=self._marks(work))
        if pool is None:
            return False
        lb_id = pool.loadbalancers[0]["id"]
        return self._destroy_child("pool", pool, lb_id, lambda o: lbc.delete_pool(o, ignore_missing=True), progress)

    def _apply_member(self, work: StepWork, progress: Progress) -> dict[str, Any]:
        p = work.params
        lb = self._load_balancer(work, p["lb"])
        pool = self._pool(work, p["lb"])
        lbc = self.conn.load_balancer

        def create() -> Any:
            server = self._server(work, p["server"])
            subnet = self._subnet(work, p["network"])
            address = next(
                (
                    ip["ip_address"]
                    for port in self._server_ports(work, server, p["server"])
                    for ip in port.fixed_ips or []
                    if ip.get("subnet_id") == subnet.id
                ),
                None,
            )
            if address is None:
                raise CloudError(
                    f"{work.path}: server {p['server']!r} has no address on network {p['network']!r}",
                    hint="the load balancer's network must be one of the member group's networks",
                )
            return lbc.create_member(
                pool,
                name=work.owner.name(p["server"]),
                address=address,
                protocol_port=int(p["port"]),
                subnet_id=subnet.id,
                tags=work.owner.tags,
            )

        member = self._child(
            work,
            progress,
            "member",
            lambda: self._octavia(lbc.members, pool, tags=self._marks(work)),
            lambda member_id: lbc.get_member(member_id, pool),
            lambda o: lbc.delete_member(o, pool, ignore_missing=True),
            create,
            lb.id,
        )
        return {"id": member.id, "pool_id": pool.id, "address": member.address, "port": member.protocol_port}

    def _destroy_member(self, work: StepWork, progress: Progress) -> bool:
        lbc = self.conn.load_balancer
        pool = self._pool(work, work.params["lb"], required=False)
        if pool is None:
            return False  # members go with their pool
        member = self._octavia(lbc.members, pool, tags=self._marks(work))
        lb_id = pool.loadbalancers[0]["id"]
        return self._destroy_child(
            "member", member, lb_id, lambda o: lbc.delete_member(o, pool, ignore_missing=True), progress
        )

    def _apply_health_monitor(self, work: StepWork, progress: Progress) -> dict[str, Any]:
        p = work.params
        lb = self._load_balancer(work, p["lb"])
        pool = self._pool(work, p["lb"])
        lbc = self.conn.load_balancer
        kind = p.get("type") or "HTTP"
        attrs: dict[str, Any] = {
            "name": work.owner.name(p["lb"]),
            "pool_id": pool.id,
            "type": kind,
            "delay": int(p.get("delay", 5)),
            "timeout": int(p.get("timeout", 3)),
            "max_retries": int(p.get("max_retries", 3)),
            "tags": work.owner.tags,
        }
        if kind in ("HTTP", "HTTPS"):
            attrs["url_path"] = p.get("url_path") or "/"
        hm = self._child(
            work,
            progress,
            "health monitor",
            lambda: self._octavia(lbc.health_monitors, tags=self._marks(work)),
            lbc.get_health_monitor,
            lambda o: lbc.delete_health_monitor(o, ignore_missing=True),
            lambda: lbc.create_health_monitor(**attrs),
            lb.id,
        )
        return {"id": hm.id, "pool_id": pool.id, "type": hm.type}

    def _destroy_health_monitor(self, work: StepWork, progress: Progress) -> bool:
        lbc = self.conn.load_balancer
        hm = self._octavia(lbc.health_monitors, tags=self._marks(work))
        if hm is None:
            return False
        pool = lbc.get_pool(hm.pools[0]["id"])
        lb_id = pool.loadbalancers[0]["id"]
        return self._destroy_child(
            "health monitor", hm, lb_id, lambda o: lbc.delete_health_monitor(o, ignore_missing=True), progress
        )


def _step_mark(tags: list[str] | None) -> str | None:
    return next((t for t in tags or [] if t.startswith("dcs-step-")), None)


def _limit_used(value: Any) -> dict[str, int | None]:
    """Neutron's ``{limit, used, reserved}`` of one resource; a limit of -1 is unlimited (null)."""
    value = value or {}
    limit = value.get("limit")
    return {"limit": None if limit is None or int(limit) < 0 else int(limit), "used": int(value.get("used") or 0)}


def _ports(low: int | None, high: int | None) -> str | None:
    if low is None:
        return None
    return str(low) if high in (None, low) else f"{low}-{high}"


def _gateway_ip(router: Any) -> str | None:
    ips = (router.external_gateway_info or {}).get("external_fixed_ips") or []
    return str(ips[0]["ip_address"]) if ips else None


def _rule_dict(rule: Any) -> dict[str, Any]:
    if isinstance(rule, dict):
        get = rule.get
    else:

        def get(key: str, default: Any = None) -> Any:
            return getattr(rule, key, default)

    return {
        key: get(key)
        for key in (
            "id",
            "direction",
            "protocol",
            "port_range_min",
            "port_range_max",
            "remote_ip_prefix",
            "remote_group_id",
        )
    }
