"""Cinder volumes as compute (attachments) and storage (volumes) both need them: found by their marks,
and waited on until they reach a status."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from shared.executor.errors import CloudError


def find_marked_volumes(conn: Any, plan_id: str, step_key: str) -> list[Any]:
    """The project's volumes carrying the plan and step marks.

    Listed without a server-side metadata filter: Cinder's answer to one depends on its
    resource_filters.json and the microversion (400, ignored, or silently empty), and an empty answer
    would make a retry create a second volume. The marks are checked here instead."""
    wanted = {"dcostack_plan": plan_id, "dcostack_step": step_key}
    return [
        v
        for v in conn.block_storage.volumes(details=True)
        if all((v.metadata or {}).get(k) == x for k, x in wanted.items())
    ]


def wait_volume(
    conn: Any, volume: Any, targets: set[str], progress: Callable[[str], None], timeout: float, interval: float
) -> Any:
    """Poll until the volume reaches one of ``targets``; an error status or the timeout is a CloudError."""
    deadline = time.monotonic() + timeout
    seen = None
    while True:
        volume = conn.block_storage.get_volume(volume.id)
        if volume.status != seen:
            progress(f"volume {volume.status}")
            seen = volume.status
        if volume.status in targets:
            return volume
        if volume.status.startswith("error"):
            raise CloudError(
                f"volume {volume.name} went to {volume.status} while waiting for {'/'.join(sorted(targets))}",
                hint="see the volume's messages in Cinder; it is left for rollback or inspection",
                resource_id=volume.id,
            )
        if time.monotonic() > deadline:
            raise CloudError(
                f"volume {volume.name} still {volume.status} after {timeout:.0f}s",
                hint="the cloud is slow; retrying",
                retriable=True,
                resource_id=volume.id,
            )
        time.sleep(interval)
