"""The order of a run's steps (pure): dependencies collapsed onto the steps kept, reversed for undoing,
and the destroy order of resources, newest instance first."""

from __future__ import annotations

import graphlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from services.planner.plans.compiler import Graph
from shared.events.kinds import creation_rank


def collapse(after: Mapping[str, Iterable[str]], keep: set[str]) -> dict[str, set[str]]:
    """For each kept key, the kept keys it depends on, directly or through keys that are not kept."""
    through: dict[str, frozenset[str]] = {}
    sorter = graphlib.TopologicalSorter({k: set(v) for k, v in after.items()})
    for key in sorter.static_order():
        nearest: set[str] = set()
        for dep in after.get(key, ()):
            if dep in keep:
                nearest.add(dep)
            else:
                nearest |= through.get(dep, frozenset())
        through[key] = frozenset(nearest)
    return {k: set(through.get(k, frozenset())) for k in keep}


def reverse_edges(after: Mapping[str, Iterable[str]]) -> dict[str, frozenset[str]]:
    """Dependencies for undoing: a key waits for every key that depended on it."""
    out: dict[str, set[str]] = {k: set() for k in after}
    for key, deps in after.items():
        for dep in deps:
            out.setdefault(dep, set()).add(key)
    return {k: frozenset(v) for k, v in out.items()}


def _index(key: str) -> int:
    """The instance index a step key belongs to (server/web-4, member/lb/web-4 → 4), else -1."""
    for part in key.split("/")[1:]:
        found = re.search(r"-(\d+)$", part)
        if found:
            return int(found.group(1))
    return -1


def _natural(key: str) -> tuple[tuple[int, str], ...]:
    return tuple((int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"(\d+)", key))


def destroy_order(after: Mapping[str, Iterable[str]]) -> list[str]:
    """An order that respects ``after`` (destroy direction), newest instance first within each level."""
    sorter = graphlib.TopologicalSorter({k: set(v) for k, v in after.items()})
    sorter.prepare()
    out: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=lambda k: (-_index(k), _natural(k)))
        out += ready
        sorter.done(*ready)
    return out


@dataclass(frozen=True)
class DestroyAfter:
    """What each key to destroy waits for, and the positions in ``graphs`` of the versions left out
    because their dependencies contradict a newer version's."""

    after: dict[str, frozenset[str]]
    skipped: tuple[int, ...] = ()


def destroy_after(keys: set[str], graphs: list[Graph], kinds: Mapping[str, str]) -> DestroyAfter:
    """What each key to destroy waits for: the reverse of the dependencies the compiled ``graphs`` gave
    them (the first graph wins where versions disagree), restricted to ``keys``. A key no graph has is
    ordered by its kind (``kinds``): destroyed after everything created later, before everything earlier."""
    merged: dict[str, set[str]] = {}
    skipped: list[int] = []
    for position, graph in enumerate(graphs):
        candidate = {k: set(v) for k, v in merged.items()}
        for key, step in graph.steps.items():
            candidate.setdefault(key, set()).update(step.after)
        try:
            graphlib.TopologicalSorter(candidate).prepare()
        except graphlib.CycleError:
            skipped.append(position)
            continue
        merged = candidate
    out = {k: set(v) for k, v in reverse_edges(collapse(merged, keys)).items()}
    for lost in sorted(k for k in keys if k not in merged):
        mine = creation_rank(kinds.get(lost, ""))
        for other in keys - {lost}:
            theirs = creation_rank(kinds.get(other, ""))
            if theirs > mine:
                out[lost].add(other)
            elif theirs < mine and other in merged:
                out[other].add(lost)
    return DestroyAfter({k: frozenset(out.get(k, set())) for k in keys}, tuple(skipped))
