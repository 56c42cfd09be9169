"""How DCOSTACK marks what it creates in OpenStack.

Every resource a step creates carries its plan, run and step, so a redelivered command finds the
resource it already made instead of creating a second one, and a destroy (or a test) can list all
of a plan's resources. The marks differ by service because the APIs differ:

- Neutron (networks, subnets, routers, ports, security groups, floating IPs), Octavia (load
  balancers, listeners, pools, members, health monitors) and Nova servers: tags
  ``plan_tag(plan_id)`` and ``step_tag(step_key)`` (Nova allows 60 characters and no ``/``).
  Nova servers also carry metadata ``dcostack_plan``, ``dcostack_run``, ``dcostack_step``.
- Security group rules: ``description = step_tag(step_key)`` (rules have no tags).
- Cinder volumes: metadata ``dcostack_plan``, ``dcostack_run``, ``dcostack_step``.
- Nova server groups and Swift containers: the name ``resource_name(plan_id, name)``.
- Router interfaces and volume attachments: found by what they connect.
Display names are ``resource_name(plan_id, name)`` everywhere, so operators can tell them apart.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any


def plan_tag(plan_id: str) -> str:
    return f"dcs-plan-{plan_id}"


def step_tag(step_key: str) -> str:
    return "dcs-step-" + hashlib.sha256(step_key.encode()).hexdigest()[:20]


def resource_name(plan_id: str, name: str) -> str:
    return f"dcs-{plan_id[:8]}-{name}"


@dataclass(frozen=True)
class Owner:
    """Which plan, run and step a cloud resource belongs to."""

    plan_id: str
    run_id: str
    step_key: str

    @property
    def tags(self) -> list[str]:
        return [plan_tag(self.plan_id), step_tag(self.step_key)]

    @property
    def metadata(self) -> dict[str, str]:
        return {"dcostack_plan": self.plan_id, "dcostack_run": self.run_id, "dcostack_step": self.step_key}

    def name(self, name: str) -> str:
        return resource_name(self.plan_id, name)


@dataclass(frozen=True)
class StepWork:
    """One step for a domain service to apply (create if missing) or destroy (delete if present)."""

    owner: Owner
    kind: str  # as the planner's compiler names it: network, subnet, server, member, ...
    path: str  # JSON path in the plan, for error messages
    params: dict[str, Any] = field(default_factory=dict)
