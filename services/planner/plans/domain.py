"""Planner domain: pure rules, no I/O."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any
from uuid import UUID

from services.planner.plans.compiler import Graph, Step, compile_plan
from services.planner.plans.spec import InvalidPlan, Plan, PlanError, validate_plan
from shared.errors import Conflict, InvalidInput, NotFound

# --- plans -----------------------------------------------------------------------------------------


#: The most steps one plan may compile to. The spec bounds each group (count <= 1000) but not the number
#: of groups, so without this a 1 MiB document could ask for millions of steps and exhaust the planner.
MAX_STEPS = 20_000
#: The most entries in each top-level list (networks, instance groups, ...). Reference checks and the
#: compiler take time quadratic in them: 10,000 instance groups (a 0.9 MiB document) took 7 s of CPU.
MAX_ENTRIES = 250
#: The most dependencies between steps. Each server waits for every server of the groups its group
#: depends on, so dependencies grow with the product of counts, and a dense depends_on chain in a small
#: document reached 150 million (over a minute of CPU). Compiling takes about 0.3 µs each (1 million: 0.3 s).
#: A web group of 1000 servers after an app group of 1000 needs about 1 million.
MAX_DEPENDENCIES = 2_000_000


class PlanInvalid(InvalidInput):
    """The plan document breaks the spec; ``errors`` lists every problem with its JSON path."""

    def __init__(self, errors: list[PlanError]) -> None:
        super().__init__(f"{len(errors)} error(s) in the plan; each names its JSON path")
        self.errors = errors

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "errors": [e.to_dict() for e in self.errors]}


class PlanNotFound(NotFound):
    def __init__(self, plan_id: UUID, project_id: str) -> None:
        super().__init__(
            f"plan {plan_id} not found in project {project_id!r}; list plans with GET /v1/plans",
            plan_id=plan_id,
            project_id=project_id,
        )


class PlanVersionNotFound(NotFound):
    def __init__(self, plan_id: UUID, version: int, latest: int) -> None:
        super().__init__(
            f"plan {plan_id} has no version {version}; its versions are 1 to {latest}",
            plan_id=plan_id,
            version=version,
        )


class PlanNameTaken(Conflict):
    def __init__(self, name: str, project_id: str) -> None:
        super().__init__(
            f"a plan named {name!r} already exists in project {project_id!r}; change it with "
            "PUT /v1/plans/{id} or give this one another name",
            field="$.name",
            name=name,
            project_id=project_id,
        )


@dataclass(frozen=True)
class CheckedPlan:
    """A plan that passed validation, and the steps it compiles to."""

    plan: Plan
    graph: Graph

    @property
    def name(self) -> str:
        return self.plan.name

    @cached_property
    def ordered_steps(self) -> list[Step]:
        """Every step, in an order that respects its dependencies."""
        return [self.graph.steps[k] for k in self.graph.order()]

    def count_by(self, attribute: str) -> dict[str, int]:
        """Steps per kind (or service), in the order each first appears in the creation order."""
        return dict(Counter(str(getattr(s, attribute)) for s in self.ordered_steps))


def count_steps(plan: Plan) -> int:
    """The number of steps :func:`compile_plan` makes, computed without making them."""
    routers = {n.router.name for n in plan.networks if n.router}
    total = 2 * len(plan.networks) + len(routers) + sum(1 for n in plan.networks if n.router)
    total += sum(1 + len(sg.rules) for sg in plan.security_groups)
    total += len(plan.volumes) + len(plan.object_containers)
    counts = {g.name: g.count for g in plan.instance_groups}
    for g in plan.instance_groups:
        total += (1 if g.server_group else 0) + g.count * (1 + 2 * len(g.volumes) + (1 if g.floating_ip else 0))
    for lb in plan.load_balancers:
        total += 3 + (1 if lb.health_monitor else 0) + counts.get(lb.pool.members.group, 0)
    return total


def count_dependencies(plan: Plan) -> int:
    """At least as many as the dependencies :func:`compile_plan` records between the steps it makes."""
    counts = {g.name: g.count for g in plan.instance_groups}
    rules = {sg.name: len(sg.rules) for sg in plan.security_groups}
    total = count_steps(plan)
    for g in plan.instance_groups:
        # subnets and router interfaces of its networks, its security groups and their rules, its server group
        base = 2 * len(g.networks) + sum(1 + rules.get(s, 0) for s in g.security_groups) + 1
        waits = base + sum(counts.get(d, 0) for d in g.depends_on) + plan.rollout.batch_size
        total += g.count * (waits + base + 2 * len(g.volumes))  # the server, its floating IP, its attachments
    for lb in plan.load_balancers:
        total += 2 * counts.get(lb.pool.members.group, 0)
    return total


def check_plan(document: Any) -> CheckedPlan:
    """Validate a document with its parameters' defaults and compile it; :class:`PlanInvalid` lists every error."""
    if isinstance(document, dict):
        too_many = [
            PlanError(f"$.{key}", f"has {len(value)} entries; at most {MAX_ENTRIES} are allowed (split it into plans)")
            for key, value in document.items()
            if isinstance(value, list) and len(value) > MAX_ENTRIES
        ]
        if too_many:
            raise PlanInvalid(too_many)
    try:
        plan = validate_plan(document)
    except InvalidPlan as e:
        raise PlanInvalid(e.errors) from None
    steps = count_steps(plan)
    if steps > MAX_STEPS:
        raise PlanInvalid(
            [
                PlanError(
                    "$.instance_groups",
                    f"the plan compiles to {steps} steps; at most {MAX_STEPS} are allowed (split it into plans)",
                )
            ]
        )
    dependencies = count_dependencies(plan)
    if dependencies > MAX_DEPENDENCIES:
        raise PlanInvalid(
            [
                PlanError(
                    "$.instance_groups",
                    f"the plan's steps would have about {dependencies} dependencies between them; at most "
                    f"{MAX_DEPENDENCIES} are allowed (each server waits for every server of the groups in its "
                    "depends_on: depend on fewer or smaller groups, or split the plan)",
                )
            ]
        )
    return CheckedPlan(plan, compile_plan(plan))


def check_same_name(current: str, checked: CheckedPlan) -> None:
    """A new version keeps the plan's name: the name is how people and the CLI find the plan."""
    if checked.name != current:
        raise PlanInvalid(
            [
                PlanError(
                    "$.name",
                    f"is {checked.name!r} but this plan is named {current!r}; a plan keeps its name "
                    "(create a new plan for a new name)",
                )
            ]
        )


@dataclass(frozen=True)
class PlanRecord:
    id: UUID
    project_id: str
    name: str
    latest_version: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class PlanVersion:
    plan_id: UUID
    version: int
    created_at: datetime
    created_by: str | None
    document: Any = None  # None in listings, which leave documents out
