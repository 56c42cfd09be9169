"""The contract between the executor engine and each domain's cloud adapter: the adapter's Protocol and
the progress events an operation is reported with."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from shared.events.steps import StepProgressedV1
from shared.executor.marks import StepWork

#: How an adapter reports what it sees in the cloud while it works (called from its thread).
Progress = Callable[[str], None]


class StepAdapter(Protocol):
    """A domain's cloud adapter as the engine drives it: synchronous (run in a thread) and idempotent by
    the marks in shared.executor.marks."""

    def apply(self, work: StepWork, progress: Progress) -> dict[str, Any]:
        """Create the step's resource unless its marks find it; wait until usable; return its outputs.

        :raises CloudError: the cloud refused or failed (``retriable`` when trying again may help; a
            reference to another step's resource that does not exist yet is retriable)."""
        ...

    def destroy(self, work: StepWork, progress: Progress) -> bool:
        """Delete the step's resource if its marks find it and wait until it is gone.

        :returns: False when nothing was there.
        :raises CloudError: as ``apply``."""
        ...


def step_progressed(
    op: Mapping[str, Any],
    service: str,
    state: Literal["running", "succeeded", "failed"],
    message: str,
    *,
    outputs: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> StepProgressedV1:
    """The StepProgressedV1 of operation ``op`` (an ``operations`` row)."""
    return StepProgressedV1(
        dispatch_id=op["dispatch_id"],
        run_id=op["run_id"],
        step_key=op["step_key"],
        service=service,
        state=state,
        message=message[:2000],
        outputs=outputs or {},
        error=error,
        at=datetime.now(UTC),
    )


def latest_progress(op: Mapping[str, Any], service: str) -> StepProgressedV1:
    """What is known of operation ``op`` now: its final event when it is done (the same outputs or error
    it first reported), else ``running`` with what it last saw."""
    if op["state"] == "done" and op["outcome"] is not None:
        outputs = json.loads(op["outputs"]) if op["outputs"] is not None else None
        error = json.loads(op["error"]) if op["error"] is not None else None
        return step_progressed(op, service, op["outcome"], op["last_message"], outputs=outputs, error=error)
    seen = op["last_message"] or ("accepted; waiting for a worker" if op["state"] == "pending" else "working")
    return step_progressed(op, service, "running", seen)


# -- what the adapters' read methods return; also the read APIs' response models -------------------------
#
# Frozen, and tolerant of keys a kind adds (``extra="allow"``): a load balancer's ``status``, a router
# interface's ``router_step_tag``, a server's ``vcpus``. The read API leaves out what an adapter did not set,
# so the JSON is exactly what the adapter built.


class ReadModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")


class PlanResource(ReadModel):
    """One resource a domain service holds of a plan, found by the plan's marks."""

    kind: str = Field(description="The step kind that made it: server, network, volume, ...")
    step_key: str | None = Field(description="The step's key, where the resource carries it (metadata)")
    step_tag: str | None = Field(description="The step's mark (shared.executor.marks.step_tag)")
    id: str
    name: str | None
    fields: dict[str, Any] = Field(description="The values the plan controls, as the cloud has them")


class Usage(ReadModel):
    """A quota: ``limit`` null when unlimited; ``used`` counts reserved as taken."""

    limit: int | None
    used: int


class Limit(ReadModel):
    limit: int | None


class ComputeLimits(ReadModel):
    """Nova's quota and usage of the project."""

    instances: Usage
    cores: Usage
    ram_mb: Usage
    server_groups: Usage
    server_group_members: Limit


class NetworkQuota(ReadModel):
    """Neutron's quota and usage of the project, and Octavia's for load balancers."""

    networks: Usage
    subnets: Usage
    ports: Usage
    routers: Usage
    floating_ips: Usage
    security_groups: Usage
    security_group_rules: Usage
    load_balancers: Usage | None = None
    unreadable: dict[str, str] | None = Field(None, description="What the project may not read, and why")


class StorageQuota(ReadModel):
    """Cinder's quota and usage of the project."""

    volumes: Usage
    gigabytes: Usage


class Flavor(ReadModel):
    id: str
    name: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    ephemeral_gb: int
    swap_mb: int
    is_public: bool | None


class Image(ReadModel):
    id: str
    name: str | None
    status: str | None
    size: int | None
    min_disk_gb: int | None
    min_ram_mb: int | None


class Server(ReadModel):
    id: str
    name: str
    status: str | None
    flavor: str | None
    addresses: dict[str, list[str]]
    tags: list[str]
    metadata: dict[str, str]
    plan_id: str | None
    step_key: str | None


class HostResource(ReadModel):
    """One resource class of a host: ``free = (total - reserved) * allocation_ratio - used``."""

    total: int
    reserved: int
    allocation_ratio: float
    used: int
    free: int
    max_unit: int


class Host(ReadModel):
    """A compute host's free capacity (Placement), unusable when its nova-compute is disabled or down."""

    name: str
    uuid: str
    usable: bool
    status: str | None
    resources: dict[str, HostResource]


class NetworkObject(ReadModel):
    """A Neutron or Octavia object the project holds."""

    id: str
    name: str | None
    status: str | None
    tags: list[str]


class Network(NetworkObject):
    subnet_ids: list[str]
    external: bool


class Router(NetworkObject):
    external_network_id: str | None
    external_ip: str | None


class SecurityGroup(NetworkObject):
    description: str | None
    rules: list[dict[str, Any]]


class FloatingIp(NetworkObject):
    floating_ip_address: str | None
    fixed_ip_address: str | None
    port_id: str | None


class LoadBalancer(NetworkObject):
    operating_status: str | None
    vip_address: str | None


class ExternalNetwork(ReadModel):
    id: str
    name: str | None
    status: str | None
    free_ips: int | None = Field(description="null when the cloud's policy hides it (see free_ips_unreadable)")


class Volume(ReadModel):
    id: str
    name: str | None
    size_gb: int
    status: str | None
    type: str | None
    server_ids: list[str | None]
    metadata: dict[str, str]
    plan_id: str | None
    step_key: str | None


class Container(ReadModel):
    name: str
    object_count: int | None
    bytes: int | None
