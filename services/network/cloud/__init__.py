"""The network service's cloud adapter: Neutron (networks, subnets, routers, security groups, floating IPs)
and Octavia (load balancers, listeners, pools, members, health monitors).

``NetworkCloud`` is what the service needs of a cloud; ``OpenStackNetworkCloud`` implements it from the
Neutron steps (neutron.py), the Octavia steps (octavia.py) and the reads (reads.py), which share the
lookups by marks (marks.py). A step kind selects its functions in the dispatch tables below. Calls are
synchronous: callers run them in a thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import openstack.exceptions as os_exc

from services.network.cloud.marks import translate
from services.network.cloud.neutron import NeutronSteps
from services.network.cloud.octavia import OctaviaSteps
from services.network.cloud.reads import NetworkReads
from shared.executor.errors import SDK_ERRORS, CloudError
from shared.executor.marks import StepWork
from shared.executor.models import (
    ExternalNetwork,
    FloatingIp,
    LoadBalancer,
    Network,
    NetworkQuota,
    PlanResource,
    Progress,
    Router,
    SecurityGroup,
)

__all__ = ["NetworkCloud", "OpenStackNetworkCloud", "translate"]


class NetworkCloud(Protocol):
    """What the network service does in a cloud: apply and destroy its step kinds and read what the
    project has. Every method is synchronous (run in a thread)."""

    def apply(self, work: StepWork, progress: Progress) -> dict[str, Any]:
        """Create the step's resource unless its marks find it; wait for its terminal state.

        :raises CloudError: retriable when a referenced step's resource does not exist yet, a load balancer
            is busy, or the cloud is slow or failing; not retriable for the plan's mistakes (an overlapping
            CIDR, an address in use, an unknown external network, quota), with the cloud's own message."""
        ...

    def destroy(self, work: StepWork, progress: Progress) -> bool:
        """Delete the step's resource if its marks find it and wait until it is gone.

        :returns: False when nothing was there.
        :raises CloudError: as ``apply``."""
        ...

    def list_networks(self, plan_id: str | None = None) -> list[Network]:
        """The project's networks (``plan_id``: only that plan's), with their subnets."""
        ...

    def list_routers(self, plan_id: str | None = None) -> list[Router]:
        """The project's routers (``plan_id``: only that plan's), with their external network and address."""
        ...

    def list_security_groups(self, plan_id: str | None = None) -> list[SecurityGroup]:
        """The project's security groups (``plan_id``: only that plan's)."""
        ...

    def list_floating_ips(self, plan_id: str | None = None) -> list[FloatingIp]:
        """The project's floating IPs (``plan_id``: only that plan's), with the fixed address they map to."""
        ...

    def list_load_balancers(self, plan_id: str | None = None) -> list[LoadBalancer]:
        """The project's load balancers (``plan_id``: only that plan's), with their VIP."""
        ...

    def quota(self) -> NetworkQuota:
        """The project's Neutron quota with usage (networks, subnets, ports, routers, floating IPs, security
        groups and rules) and Octavia's for load balancers: ``{resource: {limit, used}}``, ``limit`` null when
        unlimited. What the project may not read is left out and named under ``unreadable``."""
        ...

    def external_networks(self, name: str | None = None) -> list[ExternalNetwork]:
        """The external (router:external) networks the project can use (``name``: only that one, by name or
        id), with the free addresses on them (``free_ips`` null and ``free_ips_unreadable`` saying why when
        the cloud's policy hides them)."""
        ...

    def plan_resources(self, plan_id: str) -> list[PlanResource]:
        """What the network service holds of one plan, found by its marks: networks, subnets (cidr, dns),
        routers (external network), router interfaces, security groups and rules, floating IPs, load
        balancers, listeners, pools, members and health monitors, each with its step mark (``step_tag``)
        and the fields the plan controls."""
        ...


class OpenStackNetworkCloud(NeutronSteps, OctaviaSteps, NetworkReads):
    """NetworkCloud on Neutron and Octavia."""

    def apply(self, work: StepWork, progress: Progress) -> dict[str, Any]:
        handler = _APPLY.get(work.kind)
        if handler is None:
            raise CloudError(f"{work.path}: the network service does not handle step kind {work.kind!r}")
        try:
            return handler(self, work, progress)
        except SDK_ERRORS as exc:
            raise translate(exc, work) from exc

    def destroy(self, work: StepWork, progress: Progress) -> bool:
        handler = _DESTROY.get(work.kind)
        if handler is None:
            raise CloudError(f"{work.path}: the network service does not handle step kind {work.kind!r}")
        try:
            return handler(self, work, progress)
        except os_exc.NotFoundException:
            return False  # it went away between the lookup and the delete
        except SDK_ERRORS as exc:
            raise translate(exc, work) from exc


Apply = Callable[[OpenStackNetworkCloud, StepWork, Progress], dict[str, Any]]
Destroy = Callable[[OpenStackNetworkCloud, StepWork, Progress], bool]

_APPLY: dict[str, Apply] = {
    "network": NeutronSteps._apply_network,
    "subnet": NeutronSteps._apply_subnet,
    "router": NeutronSteps._apply_router,
    "router_interface": NeutronSteps._apply_router_interface,
    "security_group": NeutronSteps._apply_security_group,
    "security_group_rule": NeutronSteps._apply_security_group_rule,
    "floating_ip": NeutronSteps._apply_floating_ip,
    "load_balancer": OctaviaSteps._apply_load_balancer,
    "listener": OctaviaSteps._apply_listener,
    "pool": OctaviaSteps._apply_pool,
    "member": OctaviaSteps._apply_member,
    "health_monitor": OctaviaSteps._apply_health_monitor,
}
_DESTROY: dict[str, Destroy] = {
    "network": NeutronSteps._destroy_network,
    "subnet": NeutronSteps._destroy_subnet,
    "router": NeutronSteps._destroy_router,
    "router_interface": NeutronSteps._destroy_router_interface,
    "security_group": NeutronSteps._destroy_security_group,
    "security_group_rule": NeutronSteps._destroy_security_group_rule,
    "floating_ip": NeutronSteps._destroy_floating_ip,
    "load_balancer": OctaviaSteps._destroy_load_balancer,
    "listener": OctaviaSteps._destroy_listener,
    "pool": OctaviaSteps._destroy_pool,
    "member": OctaviaSteps._destroy_member,
    "health_monitor": OctaviaSteps._destroy_health_monitor,
}
