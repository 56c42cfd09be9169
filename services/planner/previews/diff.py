"""The diff of a preview (pure): what applying a compiled plan would create, change, delete or keep, given
what is live."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal
from uuid import UUID

from services.planner.plans.compiler import Graph, Step
from shared.events.kinds import PREFIX_BY_NAME, Kind, delete_rank
from shared.executor.marks import step_tag

Action = Literal["create", "change", "delete", "unchanged"]


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
    if kind in PREFIX_BY_NAME and name.startswith(prefix):
        guess = f"{PREFIX_BY_NAME[Kind(kind)]}/{name.removeprefix(prefix)}"
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
    for key, (svc, resource) in sorted(gone, key=lambda item: delete_rank(item[1][1]["kind"])):
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
