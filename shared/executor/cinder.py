"""Cinder volumes as compute (attachments) and storage (volumes) both need them: found by their marks,
and waited on until they reach a status."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shared.executor.errors import CloudError
from shared.executor.wait import wait_for_status


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

    def failed(v: Any) -> CloudError | None:
        if not v.status.startswith("error"):
            return None
        return CloudError(
            f"volume {v.name} went to {v.status} while waiting for {'/'.join(sorted(targets))}",
            hint="see the volume's messages in Cinder; it is left for rollback or inspection",
            resource_id=v.id,
        )

    return wait_for_status(
        lambda: conn.block_storage.get_volume(volume.id),
        state=lambda v: v.status,
        done=lambda v: v.status in targets,
        describe=lambda v: f"volume {v.status}",
        failed=failed,
        slow=lambda v: CloudError(
            f"volume {v.name} still {v.status} after {timeout:.0f}s",
            hint="the cloud is slow; retrying",
            retriable=True,
            resource_id=v.id,
        ),
        progress=progress,
        timeout=timeout,
        interval=interval,
    )
