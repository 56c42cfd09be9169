"""Previews: what applying a plan version would do in the cloud, and whether the cloud can take it.

The planner owns no cloud state, so it asks the domain services (compute, network, storage) over HTTP for
what is live: quota and usage, flavors, images, external networks, host capacity, and the resources each
holds of this plan (found by the plan's marks, ``shared.cloud``). All reads go out at once; the plan is
compiled meanwhile. From the answers:

- the **diff**, resource by resource and keyed like the compiled steps: ``create`` (no live resource),
  ``change`` (a field the plan controls differs: old → new), ``delete`` (carries the plan's marks but is no
  longer in it, e.g. after a count decrease) and ``unchanged``;
- the **checks**, each ``passed``, ``failed`` (with by how much, the JSON paths of the plan fields
  involved and what to change) or ``not_run`` (with why; never a silent pass): quota headroom for what
  the diff creates net of what it deletes, flavors, images and external networks exist, every subnet has
  room for its ports, and the hosts have Placement capacity for the new servers.

Each preview is stored (table ``previews``) with fingerprints of the plan version and of the live values
the checks used, so a run can refuse a preview that no longer holds (:func:`ensure_preview_current`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import ipaddress
import json
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import asyncpg
import httpx

from services.planner import service
from services.planner.compiler import Graph, Step
from services.planner.domain import CheckedPlan, PlanInvalid, check_plan
from services.planner.settings import PlannerSettings
from services.planner.spec import Plan, PlanError
from shared.auth import Caller
from shared.errors import Conflict, DependencyUnavailable, NotFound
from shared.executor.marks import step_tag
from shared.logging import get_logger

log = get_logger(__name__)

DOMAIN_SERVICES = ("compute", "network", "storage")
#: Earlier versions compiled to name what a plan-marked resource was (deletes of network resources, whose
#: marks are hashes of their step keys). Versions are immutable, so their steps are cached (HISTORY_CACHE).
HISTORY_VERSIONS = 20
HISTORY_CACHE = 256
#: Neutron gives every new security group two egress rules (IPv4, IPv6); they count against the quota.
DEFAULT_RULES_PER_GROUP = 2

Action = Literal["create", "change", "delete", "unchanged"]
Status = Literal["passed", "failed", "not_run"]


def url_setting(name: str) -> str:
    return f"DCOSTACK_{name.upper()}_URL"


# --- asking the domain services ------------------------------------------------------------------


@dataclass(frozen=True)
class DomainServices:
    """Where the compute, network and storage read APIs are, and how long to wait for them."""

    urls: dict[str, str]
    timeout: float = 20.0
    #: who asks: the caller's token (or, under noauth, project), so the services read as the caller
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, settings: PlannerSettings, caller: Caller | None = None) -> DomainServices:
        return cls(
            {"compute": settings.compute_url, "network": settings.network_url, "storage": settings.storage_url},
            settings.domain_timeout_seconds,
            caller.forward_headers if caller else {},
        )

    async def get(self, client: httpx.AsyncClient, name: str, path: str, **params: str) -> dict[str, Any]:
        """``GET <service>/v1/<service>/<path>``; any failure is a 503 naming the service and its URL setting."""
        base = self.urls[name].rstrip("/")
        url = f"{base}/v1/{name}/{path}"
        where = f"the {name} service at {base} ({url_setting(name)})"
        try:
            r = await client.get(url, params=params, timeout=self.timeout, headers=self.headers)
        except httpx.TimeoutException as exc:
            raise DependencyUnavailable(
                f"{where} did not answer GET /v1/{name}/{path} within {self.timeout:.0f}s ({type(exc).__name__})",
                service=name,
            ) from exc
        except httpx.HTTPError as exc:
            raise DependencyUnavailable(
                f"{where} is not reachable: {exc or type(exc).__name__}; start it or point {url_setting(name)} at it",
                service=name,
            ) from exc
        try:
            body = r.json()
        except ValueError:
            body = None
        if r.status_code != 200 or not isinstance(body, dict):
            detail = body.get("detail") if isinstance(body, dict) else r.text[:200]
            raise DependencyUnavailable(
                f"{where} answered HTTP {r.status_code} to GET /v1/{name}/{path}: {detail}", service=name
            )
        return body


@dataclass(frozen=True)
class Live:
    """What the domain services said for one preview."""

    limits: dict[str, Any]
    flavors: list[dict[str, Any]]
    images: list[dict[str, Any]]
    capacity: list[dict[str, Any]] | None
    capacity_not_run: str | None
    compute_resources: list[dict[str, Any]]
    network_quota: dict[str, Any]
    external_networks: list[dict[str, Any]]
    network_resources: list[dict[str, Any]]
    storage_quota: dict[str, Any]
    storage_resources: list[dict[str, Any]]
    #: how long each read took, ``<service>/<path>`` → ms
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def resources(self) -> list[tuple[str, dict[str, Any]]]:
        return [
            *(("compute", r) for r in self.compute_resources),
            *(("network", r) for r in self.network_resources),
            *(("storage", r) for r in self.storage_resources),
        ]


async def fetch_live(services: DomainServices, client: httpx.AsyncClient, plan_id: UUID) -> Live:
    """Every read a preview needs, all at once (each domain service answers from a thread per read)."""
    pid = str(plan_id)
    reads = {
        "limits": ("compute", "limits", {}),
        "flavors": ("compute", "flavors", {}),
        "images": ("compute", "images", {}),
        "capacity": ("compute", "capacity", {}),
        "compute_resources": ("compute", "plan-resources", {"plan_id": pid}),
        "network_quota": ("network", "quota", {}),
        "external_networks": ("network", "external-networks", {}),
        "network_resources": ("network", "plan-resources", {"plan_id": pid}),
        "storage_quota": ("storage", "quota", {}),
        "storage_resources": ("storage", "plan-resources", {"plan_id": pid}),
    }
    timings: dict[str, float] = {}

    async def timed(name: str, path: str, params: dict[str, str]) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            return await services.get(client, name, path, **params)
        finally:
            timings[f"{name}/{path}"] = round((time.perf_counter() - started) * 1000, 1)

    tasks = {key: asyncio.create_task(timed(*read)) for key, read in reads.items()}
    try:
        await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks.values():
            task.cancel()
    for task in tasks.values():
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]  # the first failure: it names its service
    bodies = {}
    for key, (_, path, _) in reads.items():
        body = tasks[key].result()
        bodies[key] = (body.get(path), body.get("not_run"))
    return Live(
        limits=bodies["limits"][0] or {},
        flavors=bodies["flavors"][0] or [],
        images=bodies["images"][0] or [],
        capacity=bodies["capacity"][0],
        capacity_not_run=bodies["capacity"][1],
        compute_resources=bodies["compute_resources"][0] or [],
        network_quota=bodies["network_quota"][0] or {},
        external_networks=bodies["external_networks"][0] or [],
        network_resources=bodies["network_resources"][0] or [],
        storage_quota=bodies["storage_quota"][0] or {},
        storage_resources=bodies["storage_resources"][0] or [],
        timings_ms=timings,
    )


# --- the diff --------------------------------------------------------------------------------------


@dataclass
class DiffEntry:
    key: str
    kind: str
    service: str
    action: Action
    path: str | None = None
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)
    id: str | None = None
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: Step-key prefix of each kind (compiler.py), to read a key back from a display name.
_KEY_PREFIX = {
    "network": "network",
    "subnet": "subnet",
    "router": "router",
    "security_group": "security-group",
    "load_balancer": "load-balancer",
    "listener": "listener",
    "pool": "pool",
    "health_monitor": "health-monitor",
    "floating_ip": "floating-ip",
    "object_container": "container",
}


class Catalog:
    """Flavors and images by name or id, as the plan may name them."""

    def __init__(self, live: Live) -> None:
        self.flavors = {f["name"]: f for f in live.flavors} | {str(f["id"]): f for f in live.flavors}
        self.images = live.images
        self.image_names = {i["id"]: i["name"] for i in live.images}

    def flavor(self, name: str) -> dict[str, Any] | None:
        return self.flavors.get(name)

    def image(self, name: str) -> list[dict[str, Any]]:
        return [i for i in self.images if name in (i["id"], i["name"])]


def _desired(step: Step, catalog: Catalog) -> dict[str, Any]:
    """The fields of a step's resource that the plan controls, as the live reads report them."""
    p = step.params
    if step.kind == "server":
        flavor = catalog.flavor(p["flavor"])
        return {"flavor": flavor["name"] if flavor else p["flavor"], "image": p["image"], "status": "ACTIVE"}
    if step.kind == "server_group":
        return {"policy": p["policy"]}
    if step.kind == "subnet":
        return {"cidr": p["cidr"], "dns": sorted(p.get("dns") or [])}
    if step.kind == "router":
        return {"external_network": p["external_network"]}
    if step.kind == "security_group_rule":
        ports = p.get("ports")
        return {
            "direction": p.get("direction") or "ingress",
            "protocol": p.get("protocol") or "tcp",
            "ports": None if ports is None else str(ports),
            "remote_cidr": p.get("remote_cidr"),
            "remote_group": p.get("remote_group"),
        }
    if step.kind == "volume":
        return {"size_gb": p["size_gb"], **({"type": p["type"]} if p.get("type") else {})}
    if step.kind == "load_balancer":
        return {"network": p["network"], "status": "ACTIVE"}
    if step.kind == "listener":
        return {"protocol": p.get("protocol") or "HTTP", "port": p["port"], "status": "ACTIVE"}
    if step.kind == "pool":
        return {"algorithm": p.get("algorithm") or "ROUND_ROBIN", "status": "ACTIVE"}
    if step.kind == "member":
        return {"port": p["port"], "status": "ACTIVE"}
    if step.kind == "health_monitor":
        kind = p.get("type") or "HTTP"
        out = {k: p.get(k) for k in ("delay", "timeout", "max_retries")} | {"type": kind, "status": "ACTIVE"}
        if kind in ("HTTP", "HTTPS"):
            out["url_path"] = p.get("url_path") or "/"
        return out
    return {}


def _current(resource: dict[str, Any], catalog: Catalog, names: dict[str, str]) -> dict[str, Any]:
    """A live resource's fields in the terms of :func:`_desired` (``names``: step mark → plan name)."""
    f = dict(resource.get("fields") or {})
    kind = resource["kind"]
    if kind == "server":
        image = f.get("image_id")
        # apply rebuilds a server in ERROR; any other state is the cloud's business, not a change of the plan
        status = "ERROR" if resource["fields"].get("status") == "ERROR" else "ACTIVE"
        return {"flavor": f.get("flavor"), "image": catalog.image_names.get(image, image), "status": status}
    if kind == "security_group_rule":
        group = f.pop("remote_group_step_tag", None)
        return {**f, "remote_group": names.get(group, group) if group else None}
    if kind == "load_balancer":
        tag = f.pop("network_step_tag", None)
        f["network"] = names.get(tag, tag) if tag else None
    if kind in ("load_balancer", "listener", "pool", "member", "health_monitor"):
        f["status"] = "ERROR" if resource.get("status") == "ERROR" else "ACTIVE"
        f.pop("address", None)
    if kind == "volume":
        f.pop("status", None)
    if kind == "floating_ip":
        f.pop("attached", None)
    return f


def _same(kind: str, name: str, want: Any, have: Any, catalog: Catalog) -> bool:
    if kind == "server" and name == "image":
        return have in {i["name"] for i in catalog.image(want)} | {i["id"] for i in catalog.image(want)} or (
            want == have
        )
    if kind == "subnet" and name == "cidr" and want and have:
        return bool(ipaddress.ip_network(want, strict=False) == ipaddress.ip_network(have, strict=False))
    if kind == "security_group_rule" and name == "remote_cidr" and want and have:
        return bool(ipaddress.ip_network(want, strict=False) == ipaddress.ip_network(have, strict=False))
    return bool(want == have)


@dataclass
class Diff:
    entries: list[DiffEntry]
    #: live resource of each entry that has one, by key
    live: dict[str, dict[str, Any]]
    #: the step of each deleted key, when an earlier version names it
    deleted_steps: dict[str, Step]

    def counts(self) -> dict[str, int]:
        found = Counter(e.action for e in self.entries)
        return {a: found.get(a, 0) for a in ("create", "change", "delete", "unchanged")}

    def by_action(self, action: Action) -> list[DiffEntry]:
        return [e for e in self.entries if e.action == action]


def _key_of(resource: dict[str, Any], tags: dict[str, str], plan_id: UUID) -> str | None:
    """The step key a live resource belongs to: its own (servers, volumes, containers), the key whose mark
    it carries, what its display name says (checked against its mark), or None."""
    if resource.get("step_key"):
        return str(resource["step_key"])
    mark = resource.get("step_tag")
    if mark and mark in tags:
        return tags[mark]
    kind = resource["kind"]
    if kind == "router_interface":
        router, network = (
            tags.get(resource.get("router_step_tag") or ""),
            tags.get(resource.get("network_step_tag") or ""),
        )
        if router and network:
            return f"router-interface/{router.split('/', 1)[1]}/{network.split('/', 1)[1]}"
        return None
    name = resource.get("name") or ""
    prefix = f"dcs-{str(plan_id)[:8]}-"
    if kind in _KEY_PREFIX and name.startswith(prefix):
        guess = f"{_KEY_PREFIX[kind]}/{name.removeprefix(prefix)}"
        if mark is None or step_tag(guess) == mark:
            return guess
    return None


def compute_diff(plan_id: UUID, graph: Graph, history: dict[str, Step], live: Live, catalog: Catalog) -> Diff:
    """Match every live resource to a step by its marks and compare what the plan controls."""
    known = {**history, **graph.steps}
    tags = {step_tag(k): k for k in known}
    names = {t: k.split("/", 1)[1] for t, k in tags.items() if k.count("/") == 1}
    by_key: dict[str, tuple[str, dict[str, Any]]] = {}
    unkeyed: list[tuple[str, dict[str, Any]]] = []
    for svc, resource in live.resources:
        key = _key_of(resource, tags, plan_id)
        if key is None:
            unkeyed.append((svc, resource))
        elif key not in by_key:  # two only after a race; the service keeps the oldest, so does the diff
            by_key[key] = (svc, resource)
    entries: list[DiffEntry] = []
    for key in graph.order():
        step = graph.steps[key]
        found = by_key.get(key)
        if found is None:
            entries.append(DiffEntry(key, step.kind, step.service, "create", step.path))
            continue
        resource = found[1]
        want = _desired(step, catalog)
        have = _current(resource, catalog, names)
        changes = {
            name: {"old": have.get(name), "new": value}
            for name, value in want.items()
            if not _same(step.kind, name, value, have.get(name), catalog)
        }
        entries.append(
            DiffEntry(
                key,
                step.kind,
                step.service,
                "change" if changes else "unchanged",
                step.path,
                changes,
                resource.get("id"),
                resource.get("name"),
            )
        )
    deleted_steps: dict[str, Step] = {}
    gone = [(k, v) for k, v in by_key.items() if k not in graph.steps]
    gone += [(f"{r['kind'].replace('_', '-')}:{r.get('id')}", (svc, r)) for svc, r in unkeyed]
    for key, (svc, resource) in sorted(gone, key=lambda item: _DELETE_ORDER.get(item[1][1]["kind"], 0)):
        old = history.get(key)
        if old is not None:
            deleted_steps[key] = old
        entries.append(
            DiffEntry(
                key,
                resource["kind"],
                svc,
                "delete",
                None,
                {},
                resource.get("id"),
                resource.get("name"),
            )
        )
    return Diff(entries, {k: r for k, (_, r) in by_key.items()}, deleted_steps)


#: Deletes are listed in the order a destroy would take them: dependents first.
_DELETE_ORDER = {
    k: i
    for i, k in enumerate(
        [
            "health_monitor",
            "member",
            "pool",
            "listener",
            "load_balancer",
            "floating_ip",
            "volume_attachment",
            "server",
            "server_group",
            "volume",
            "object_container",
            "security_group_rule",
            "security_group",
            "router_interface",
            "router",
            "subnet",
            "network",
        ]
    )
}


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
_ONE_OF = {
    "network": "networks",
    "router": "routers",
    "floating_ip": "floating_ips",
    "server_group": "server_groups",
    "security_group_rule": "security_group_rules",
}


def quota_taken(kind: str, params: dict[str, Any], flavor: dict[str, Any]) -> Counter[str]:
    """What one resource counts against each quota (``flavor``: a server's vcpus and ram_mb)."""
    out: Counter[str] = Counter()
    if kind == "server":
        out.update(instances=1, cores=int(flavor.get("vcpus") or 0), ram_mb=int(flavor.get("ram_mb") or 0))
        out["ports"] = len(params.get("networks") or []) or 1
    elif kind == "volume":
        out.update(volumes=1, gigabytes=int(params.get("size_gb") or 0))
    elif kind == "subnet":
        out.update(subnets=1, ports=1)  # its DHCP port
    elif kind == "router_interface":
        out["ports"] = 1
    elif kind == "load_balancer":
        out.update(load_balancers=1, ports=1)  # its VIP port
    elif kind == "security_group":
        out.update(security_groups=1, security_group_rules=DEFAULT_RULES_PER_GROUP)
    elif kind in _ONE_OF:
        out[_ONE_OF[kind]] = 1
    return out


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
            for key, n in quota_taken(s.kind, s.params, flavor).items():
                suffix = ".count" if s.kind == "server" else ".size_gb" if key == "gigabytes" else ""
                taken[key].append((s.path + suffix, n))
        given: Counter[str] = Counter()
        for e in self.deleted:
            resource = self.diff.live.get(e.key) or {}
            old = self.diff.deleted_steps.get(e.key)
            params = dict(old.params) if old else {}
            params.setdefault("size_gb", (resource.get("fields") or {}).get("size_gb"))
            given.update(quota_taken(e.kind, params, resource))
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


# --- one preview -------------------------------------------------------------------------------------


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Preview:
    id: UUID
    plan_id: UUID
    plan_name: str
    version: int
    project_id: str
    diff: Diff
    checks: list[Check]
    plan_fingerprint: str
    live_values: dict[str, Any]
    took_ms: float
    reads_ms: dict[str, float] = field(default_factory=dict)
    created_at: datetime | None = None

    @property
    def ok(self) -> bool:
        return not any(c.status == "failed" for c in self.checks)

    @property
    def live_fingerprint(self) -> str:
        return _digest(self.live_values)

    def result(self) -> dict[str, Any]:
        not_run = [c.name for c in self.checks if c.status == "not_run"]
        return {
            "preview_id": str(self.id),
            "plan_id": str(self.plan_id),
            "plan_name": self.plan_name,
            "version": self.version,
            "project_id": self.project_id,
            "ok": self.ok,
            "complete": not not_run,
            "not_run": not_run,
            "summary": self.diff.counts(),
            "diff": [e.to_dict() for e in self.diff.entries],
            "checks": [c.to_dict() for c in self.checks],
            "took_ms": round(self.took_ms, 1),
            "reads_ms": self.reads_ms,
        }


_HISTORY: dict[tuple[UUID, int], dict[str, Step]] = {}


async def _history(conn: Any, plan_id: UUID, version: int) -> dict[str, Step]:
    """Steps of the earlier versions (newest wins), to name plan-marked resources no longer in the plan."""
    rows = await conn.fetch(
        "SELECT version, document::text AS document FROM plan_versions"
        " WHERE plan_id = $1 AND version <> $2 ORDER BY version DESC LIMIT $3",
        plan_id,
        version,
        HISTORY_VERSIONS,
    )
    out: dict[str, Step] = {}
    for row in reversed(rows):
        cached = _HISTORY.get((plan_id, row["version"]))
        if cached is None:
            try:
                checked = await asyncio.to_thread(check_plan, json.loads(row["document"]))
                cached = checked.graph.steps
            except PlanInvalid:
                cached = {}  # stored under older rules; it names nothing today
            while len(_HISTORY) >= HISTORY_CACHE:
                del _HISTORY[next(iter(_HISTORY))]
            _HISTORY[(plan_id, row["version"])] = cached
        out.update(cached)
    return out


async def compute_preview(
    pool_or_conn: Any,
    services: DomainServices,
    project_id: str,
    plan_id: UUID,
    version: int | None = None,
    client: httpx.AsyncClient | None = None,
) -> Preview:
    """Diff and checks of a plan version (the latest by default) against the live cloud; stores nothing."""
    started = time.perf_counter()
    plan_record, plan_version = await service.get_plan(pool_or_conn, project_id, plan_id, version)
    own = client is None
    http = client or httpx.AsyncClient()
    try:
        fetch = asyncio.create_task(fetch_live(services, http, plan_id))
        try:
            checked = await asyncio.to_thread(check_plan, plan_version.document)
            history = await _history(pool_or_conn, plan_id, plan_version.version)
        except BaseException:
            if fetch.done() and not fetch.cancelled():
                fetch.exception()  # retrieved: the plan's own failure is the one to report
            fetch.cancel()
            raise
        live = await fetch
    finally:
        if own:
            await http.aclose()
    catalog = Catalog(live)
    diff = compute_diff(plan_id, checked.graph, history, live, catalog)
    checker = Checker(checked.plan, checked.graph, diff, live, catalog)
    checks = checker.run()
    checker.stable["resources"] = sorted((e.key, e.action, json.dumps(e.changes, sort_keys=True)) for e in diff.entries)
    return Preview(
        id=uuid.uuid4(),
        plan_id=plan_id,
        plan_name=plan_record.name,
        version=plan_version.version,
        project_id=project_id,
        diff=diff,
        checks=checks,
        plan_fingerprint=_digest(
            {"plan": str(plan_id), "version": plan_version.version, "document": plan_version.document}
        ),
        live_values={"stable": checker.stable, "usage": checker.usage},
        took_ms=(time.perf_counter() - started) * 1000,
        reads_ms=live.timings_ms,
    )


async def create_preview(
    pool: asyncpg.Pool,
    services: DomainServices,
    project_id: str,
    plan_id: UUID,
    version: int | None = None,
    client: httpx.AsyncClient | None = None,
) -> dict[str, Any]:
    """Compute a preview and store it; the stored result, with its ``preview_id``."""
    preview = await compute_preview(pool, services, project_id, plan_id, version, client)
    result = preview.result()
    created_at = await pool.fetchval(
        "INSERT INTO previews (id, plan_id, version, project_id, ok, result, plan_fingerprint, live_fingerprint,"
        " live_values) VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9::jsonb) RETURNING created_at",
        preview.id,
        plan_id,
        preview.version,
        project_id,
        preview.ok,
        json.dumps(result),
        preview.plan_fingerprint,
        preview.live_fingerprint,
        json.dumps(preview.live_values, default=str),
    )
    log.info(
        "planner.preview.created",
        preview_id=str(preview.id),
        plan_id=str(plan_id),
        version=preview.version,
        project_id=project_id,
        ok=preview.ok,
        took_ms=round(preview.took_ms, 1),
        **preview.diff.counts(),
    )
    return {**result, "created_at": created_at.isoformat()}


class PreviewNotFound(NotFound):
    def __init__(self, preview_id: UUID, project_id: str) -> None:
        super().__init__(
            f"preview {preview_id} not found in project {project_id!r}; make one with POST /v1/plans/{{id}}/preview",
            preview_id=preview_id,
            project_id=project_id,
        )


async def _stored(pool_or_conn: Any, project_id: str, preview_id: UUID) -> Any:
    row = await pool_or_conn.fetchrow(
        "SELECT id, plan_id, version, project_id, ok, result::text AS result, plan_fingerprint, live_fingerprint,"
        " live_values::text AS live_values, created_at FROM previews WHERE id = $1 AND project_id = $2",
        preview_id,
        project_id,
    )
    if row is None:
        raise PreviewNotFound(preview_id, project_id)
    return row


async def get_preview(pool_or_conn: Any, project_id: str, preview_id: UUID) -> dict[str, Any]:
    row = await _stored(pool_or_conn, project_id, preview_id)
    result: dict[str, Any] = json.loads(row["result"])
    return {**result, "created_at": row["created_at"].isoformat()}


def _changed(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    out = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if key == "resources":
            was = {k: a for k, a, _ in old or []}
            now = {k: a for k, a, _ in new or []}
            moved = [
                f"{k} {was.get(k, 'absent')} → {now.get(k, 'absent')}"
                for k in sorted(set(was) | set(now))
                if was.get(k) != now.get(k)
            ]
            out.append("the plan's resources in the cloud: " + (", ".join(moved[:5]) or "fields changed"))
        else:
            what = key.replace(".", " ", 1)
            out.append(f"{what}: {json.dumps(old, default=str)} → {json.dumps(new, default=str)}")
    return out


async def ensure_preview_current(
    pool_or_conn: Any,
    preview_id: UUID,
    plan_id: UUID,
    version: int,
    *,
    project_id: str,
    settings: PlannerSettings,
    client: httpx.AsyncClient | None = None,
    caller: Caller | None = None,
) -> dict[str, Any]:
    """Check that a stored preview still describes what a run of ``plan_id`` at ``version`` would do.

    Contract:

    - The preview must exist in ``project_id`` (else :class:`PreviewNotFound`, 404) and be of ``plan_id`` at
      ``version`` (else ``Conflict``, 409).
    - The preview is recomputed against the live cloud now (the same reads as ``POST .../preview``, so the
      domain services must answer: ``DependencyUnavailable``, 503, naming the service otherwise).
    - ``Conflict`` (409) is raised, naming each change and saying "re-run preview", when the plan version's
      document differs from the one previewed, when any stable live value the checks used changed (a quota
      limit, a flavor's size or existence, an image, an external network, the hosts, the plan's own
      resources in the cloud and how they differ from the plan), or when any check's verdict changed.
    - Usage that moved without changing any verdict (another server in the project, a host's free memory)
      is not a conflict: the checks still hold. A preview whose checks failed is returned as it is;
      whether a run may start from a failing preview is the caller's decision (``result["ok"]``).
    - Nothing is written. The fresh result is returned (the stored ``preview_id``, the recomputed diff and
      checks), so the caller can run exactly what was checked.
    """
    row = await _stored(pool_or_conn, project_id, preview_id)
    rerun = f"re-run preview (POST /v1/plans/{plan_id}/preview) and start the run with the new preview_id"
    if row["plan_id"] != plan_id or row["version"] != version:
        raise Conflict(
            f"preview {preview_id} is of plan {row['plan_id']} version {row['version']}, not of plan {plan_id} "
            f"version {version}; {rerun}",
            field="preview_id",
        )
    services = DomainServices.of(settings, caller)
    fresh = await compute_preview(pool_or_conn, services, project_id, plan_id, version, client)
    changes: list[str] = []
    if fresh.plan_fingerprint != row["plan_fingerprint"]:
        changes.append(f"plan version {version}'s document")
    if fresh.live_fingerprint != row["live_fingerprint"]:
        before = json.loads(row["live_values"])
        # JSON round trip: tuples become lists in the stored copy
        after = json.loads(json.dumps(fresh.live_values, default=str))
        changes += _changed(before.get("stable") or {}, after.get("stable") or {})
        was = {c["name"]: c for c in json.loads(row["result"])["checks"]}
        for check in fresh.checks:
            old = was.get(check.name)
            if old is None or old["status"] != check.status:
                changes.append(
                    f"check {check.name!r} {old['status'] if old else 'absent'} → {check.status}: {check.message}"
                )
    if changes:
        raise Conflict(
            f"preview {preview_id} is out of date: " + "; ".join(changes) + f"; {rerun}",
            field="preview_id",
            preview_id=preview_id,
        )
    return {**fresh.result(), "preview_id": str(preview_id), "created_at": row["created_at"].isoformat()}


# --- live names at validate, create and update (flavors and images) ------------------------------------


@dataclass(frozen=True)
class CatalogError(PlanError):
    """A plan error about a name the cloud does not know, with the names it does know."""

    available: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "available": list(self.available)}


#: Validation waits this long for the compute service; without an answer the plan is kept with a warning.
CATALOG_TIMEOUT_SECONDS = 5.0


async def check_catalog(
    settings: PlannerSettings, plan: Plan, client: httpx.AsyncClient | None = None, caller: Caller | None = None
) -> list[str]:
    """Refuse a plan naming a flavor or image the cloud does not have (:class:`PlanInvalid`, 422, each error
    with its JSON path and the available names). When the compute service cannot be asked, return a
    warning saying the live check was not run; the plan is still accepted."""
    if not plan.instance_groups:
        return []
    services = DomainServices(
        {"compute": settings.compute_url},
        min(settings.domain_timeout_seconds, CATALOG_TIMEOUT_SECONDS),
        caller.forward_headers if caller else {},
    )
    http = client or httpx.AsyncClient()
    try:
        flavors_body, images_body = await asyncio.gather(
            services.get(http, "compute", "flavors"), services.get(http, "compute", "images")
        )
    except DependencyUnavailable as exc:
        return [f"flavors and images were not checked against the cloud: {exc.detail}"]
    finally:
        if client is None:
            await http.aclose()
    flavors = flavors_body.get("flavors") or []
    images = images_body.get("images") or []
    flavor_names = {f["name"] for f in flavors} | {str(f["id"]) for f in flavors}
    image_names = {i["name"] for i in images if i.get("status") == "active"} | {
        i["id"] for i in images if i.get("status") == "active"
    }
    shown_flavors = tuple(sorted({f["name"] for f in flavors}))
    shown_images = tuple(sorted({i["name"] for i in images if i.get("status") == "active" and i.get("name")}))
    errors: list[PlanError] = []
    for i, g in enumerate(plan.instance_groups):
        if g.flavor not in flavor_names:
            errors.append(
                CatalogError(
                    f"$.instance_groups[{i}].flavor",
                    f"flavor {g.flavor!r} does not exist in the cloud; available: {', '.join(shown_flavors) or 'none'}",
                    shown_flavors,
                )
            )
        if g.image not in image_names:
            errors.append(
                CatalogError(
                    f"$.instance_groups[{i}].image",
                    f"image {g.image!r} is not an active image in the cloud; "
                    f"available: {', '.join(shown_images) or 'none'}",
                    shown_images,
                )
            )
    if errors:
        raise PlanInvalid(errors)
    return []


async def check_live(
    settings: PlannerSettings, document: Any, caller: Caller | None = None
) -> tuple[CheckedPlan, list[str]]:
    """Validate a document (:class:`PlanInvalid` with every error's path) and then its flavors and images
    against the cloud (:func:`check_catalog`); the checked plan and the warnings about checks not run."""
    checked = await service.check_document(document)
    return checked, await check_catalog(settings, checked.plan, caller=caller)
