"""Previews: what applying a plan version would do in the cloud, and whether the cloud can take it.

The planner owns no cloud state, so it asks the domain services (compute, network, storage) over HTTP for
what is live: quota and usage, flavors, images, external networks, host capacity, and the resources each
holds of this plan (found by the plan's marks, ``shared.executor.marks``). All reads go out at once; the plan is
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
import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import httpx

from services.planner.plans import service as plans_service
from services.planner.plans.compiler import Step
from services.planner.plans.domain import CheckedPlan, check_plan
from services.planner.plans.service import Subject
from services.planner.previews import repository
from services.planner.previews.checks import Check, Checker
from services.planner.previews.diff import Catalog, Diff, compute_diff
from services.planner.previews.live import DomainServices, fetch_live
from services.planner.settings import PlannerSettings
from shared.auth import Caller
from shared.errors import Conflict, NotFound
from shared.logging import get_logger

log = get_logger(__name__)

#: Earlier versions compiled to name what a plan-marked resource was (deletes of network resources, whose
#: marks are hashes of their step keys). What each compiles to is cached (plans.service.compiled_version).
HISTORY_VERSIONS = 20


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
    #: the plan version it compiled, for a run that starts from it
    checked: CheckedPlan | None = None

    @property
    def unchanged(self) -> set[str]:
        """Keys of the plan's steps that are live and as the plan wants them."""
        return {e.key for e in self.diff.entries if e.action == "unchanged"}

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


async def _history(conn: Any, plan_id: UUID, version: int) -> dict[str, Step]:
    """Steps of the earlier versions (newest wins), to name plan-marked resources no longer in the plan."""
    rows = await repository.earlier_versions(conn, plan_id, version, HISTORY_VERSIONS)
    out: dict[str, Step] = {}
    for row in reversed(rows):
        graph = await plans_service.compiled_version(plan_id, row["version"], json.loads(row["document"]))
        if graph is not None:  # one stored under older rules names nothing today
            out.update(graph.steps)
    return out


async def compute_preview(
    pool_or_conn: Any,
    services: DomainServices,
    project_id: str,
    plan_id: UUID,
    version: int | None = None,
    client: httpx.AsyncClient | None = None,
    subject: Subject | None = None,
) -> Preview:
    """Diff and checks of a plan version (the latest by default) against the live cloud; stores nothing.
    ``subject``: the plan version, already read and compiled by the caller."""
    started = time.perf_counter()
    if subject is None:
        plan_record, plan_version = await plans_service.get_plan(pool_or_conn, project_id, plan_id, version)
    else:
        plan_record, plan_version = subject.plan, subject.version
    own = client is None
    http = client or httpx.AsyncClient()
    try:
        fetch = asyncio.create_task(fetch_live(services, http, plan_id))
        try:
            if subject is None:
                checked = await asyncio.to_thread(check_plan, plan_version.document)
            else:
                checked = subject.checked
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
        checked=checked,
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
    created_at = await repository.insert_preview(
        pool,
        preview.id,
        plan_id,
        preview.version,
        project_id,
        preview.ok,
        result,
        preview.plan_fingerprint,
        preview.live_fingerprint,
        preview.live_values,
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
    row = await repository.get_preview(pool_or_conn, project_id, preview_id)
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
    subject: Subject | None = None,
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
    fresh, created_at = await current_preview(
        pool_or_conn,
        preview_id,
        plan_id,
        version,
        project_id=project_id,
        settings=settings,
        client=client,
        caller=caller,
        subject=subject,
    )
    return {**fresh.result(), "preview_id": str(preview_id), "created_at": created_at.isoformat()}


async def current_preview(
    pool_or_conn: Any,
    preview_id: UUID,
    plan_id: UUID,
    version: int,
    *,
    project_id: str,
    settings: PlannerSettings,
    client: httpx.AsyncClient | None = None,
    caller: Caller | None = None,
    subject: Subject | None = None,
) -> tuple[Preview, datetime]:
    """:func:`ensure_preview_current`, answering the recomputed preview itself (its compiled plan and diff,
    for the run that starts from it) and when the stored one was made."""
    row = await _stored(pool_or_conn, project_id, preview_id)
    rerun = f"re-run preview (POST /v1/plans/{plan_id}/preview) and start the run with the new preview_id"
    if row["plan_id"] != plan_id or row["version"] != version:
        raise Conflict(
            f"preview {preview_id} is of plan {row['plan_id']} version {row['version']}, not of plan {plan_id} "
            f"version {version}; {rerun}",
            field="preview_id",
        )
    services = DomainServices.of(settings, caller)
    fresh = await compute_preview(pool_or_conn, services, project_id, plan_id, version, client, subject)
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
    created_at: datetime = row["created_at"]
    return fresh, created_at
