"""Self-check probes: pure rules, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from shared.errors import InvalidInput
from shared.topics import DOMAINS

#: Services that answer a self-check probe (every service but the planner, which sends it).
PROBE_TARGETS = tuple(d for d in DOMAINS if d != "planner")


def check_targets(targets: list[str] | None) -> list[str]:
    if not targets:
        return list(PROBE_TARGETS)
    unknown = sorted(set(targets) - set(PROBE_TARGETS))
    if unknown:
        raise InvalidInput(
            f"unknown probe target(s) {', '.join(unknown)}; choose from {', '.join(PROBE_TARGETS)}",
            field="targets",
        )
    return sorted(set(targets), key=targets.index)


@dataclass(frozen=True)
class ProbeStatus:
    probe_id: UUID
    targets: list[str]
    count: int
    answered: dict[str, int]

    @property
    def complete(self) -> bool:
        return all(self.answered.get(t, 0) >= self.count for t in self.targets)

    @property
    def missing(self) -> list[str]:
        return [t for t in self.targets if self.answered.get(t, 0) < self.count]
