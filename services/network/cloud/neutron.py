"""The network adapter's Neutron steps: networks, subnets, routers and their interfaces, security groups
and rules, floating IPs."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import openstack.exceptions as os_exc

from services.network.cloud.marks import (
    NetworkBase,
    _first,
    _gateway_ip,
)
from shared.executor.errors import (
    CloudError,
    cloud_message,
)
from shared.executor.marks import StepWork, step_tag
from shared.executor.models import Progress


class NeutronSteps(NetworkBase):
    """Apply and destroy the Neutron step kinds."""

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
