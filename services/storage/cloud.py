"""Storage's cloud adapter: Cinder volumes and Swift containers.

Volumes carry the metadata marks of shared.executor.marks; containers are found by their name
``resource_name(plan_id, name)`` and carry the same marks as container metadata (``X-Container-Meta-``
headers, with ``-`` for ``_`` because header names with ``_`` are dropped on the way to Swift).
Calls are synchronous: the operation workers run them in a thread.
"""

from __future__ import annotations

from typing import Any, Protocol

import keystoneauth1.exceptions as ksa
import openstack.exceptions as os_exc

from shared.executor.cinder import find_marked_volumes, wait_volume
from shared.executor.errors import STORAGE_HINTS, CloudError, translate_sdk_error
from shared.executor.marks import StepWork, resource_name, step_tag
from shared.executor.models import Container, PlanResource, Progress, StorageQuota, Volume
from shared.executor.wait import wait_for_status


def translate(exc: BaseException, work: StepWork) -> CloudError:
    """An openstacksdk/keystoneauth failure as a CloudError with the cloud's own message."""
    return translate_sdk_error(exc, work, STORAGE_HINTS)


def _container_marks(work: StepWork) -> dict[str, str]:
    return {k.replace("_", "-"): v for k, v in work.owner.metadata.items()}


class StorageCloud(Protocol):
    """What storage does in a cloud: apply and destroy ``volume`` and ``object_container`` steps, and read
    what the project has. Every method is synchronous (run in a thread)."""

    def apply(self, work: StepWork, progress: Progress) -> dict[str, Any]:
        """Create the step's resource unless its marks find it; wait until usable; return its outputs.

        :raises CloudError: retriable while a volume is busy or the cloud slow or failing; not retriable
            for the plan's mistakes (an unknown volume type, quota, a container of the same name that is
            not this step's), with the cloud's own message and a hint."""
        ...

    def destroy(self, work: StepWork, progress: Progress) -> bool:
        """Delete the step's resource (a container with its objects) and wait until it is gone.

        :returns: False if nothing existed.
        :raises CloudError: as ``apply``."""
        ...

    def list_volumes(self) -> list[Volume]:
        """The project's volumes, with the plan and step of those DCOSTACK made."""
        ...

    def list_containers(self) -> list[Container]:
        """The project's object containers."""
        ...

    def quota(self) -> StorageQuota:
        """The project's Cinder quota with usage for volumes and gigabytes: ``{resource: {limit, used}}``,
        ``limit`` null when unlimited; ``used`` counts reserved as taken."""
        ...

    def plan_resources(self, plan_id: str) -> list[PlanResource]:
        """What storage holds of one plan, by its marks: volumes (size, type, status) and object containers,
        each with its step key and the fields the plan controls."""
        ...


class OpenStackStorageCloud:
    """StorageCloud on Cinder and Swift."""

    def __init__(self, conn: Any, *, timeout: float = 600.0, interval: float = 1.0) -> None:
        self.conn = conn
        self.timeout = timeout
        self.interval = interval

    # -- entry points ------------------------------------------------------------------------

    def apply(self, work: StepWork, progress: Progress) -> dict[str, Any]:
        """Create the step's resource unless it exists; wait until usable; return its outputs.

        Raises CloudError (retriable when waiting or trying again may help)."""
        handler = {"volume": self._apply_volume, "object_container": self._apply_container}.get(work.kind)
        if handler is None:
            raise CloudError(f"storage does not handle step kind {work.kind!r} ({work.path})")
        try:
            return handler(work, progress)
        except (os_exc.SDKException, ksa.ClientException, OSError) as exc:
            raise translate(exc, work) from exc

    def destroy(self, work: StepWork, progress: Progress) -> bool:
        """Delete the step's resource and wait until it is gone; False if nothing existed."""
        handler = {"volume": self._destroy_volume, "object_container": self._destroy_container}.get(work.kind)
        if handler is None:
            raise CloudError(f"storage does not handle step kind {work.kind!r} ({work.path})")
        try:
            return handler(work, progress)
        except (os_exc.SDKException, ksa.ClientException, OSError) as exc:
            raise translate(exc, work) from exc

    # -- read helpers for the HTTP API -------------------------------------------------------

    def list_volumes(self) -> list[Volume]:
        return [
            Volume.model_validate(
                {
                    "id": v.id,
                    "name": v.name,
                    "size_gb": v.size,
                    "status": v.status,
                    "type": v.volume_type,
                    "server_ids": [a.get("server_id") for a in v.attachments or []],
                    "metadata": dict(v.metadata or {}),
                    "plan_id": (v.metadata or {}).get("dcostack_plan"),
                    "step_key": (v.metadata or {}).get("dcostack_step"),
                }
            )
            for v in self.conn.block_storage.volumes()
        ]

    def list_containers(self) -> list[Container]:
        return [
            Container(name=c.name, object_count=c.count, bytes=c.bytes) for c in self.conn.object_store.containers()
        ]

    def quota(self) -> StorageQuota:
        quota = self.conn.block_storage.get_quota_set(self.conn.current_project_id, usage=True)
        out: dict[str, dict[str, int | None]] = {}
        for key in ("volumes", "gigabytes"):
            value = getattr(quota, key, None) or {}
            if not isinstance(value, dict):
                value = {"limit": value}
            limit = value.get("limit")
            used = int(value.get("in_use") or 0) + int(value.get("reserved") or 0)
            out[key] = {"limit": None if limit is None or int(limit) < 0 else int(limit), "used": used}
        return StorageQuota.model_validate(out)

    def plan_resources(self, plan_id: str) -> list[PlanResource]:
        out: list[dict[str, Any]] = []
        for v in self.conn.block_storage.volumes(details=True):
            meta = v.metadata or {}
            if meta.get("dcostack_plan") != plan_id:
                continue
            key = meta.get("dcostack_step")
            out.append(
                {
                    "kind": "volume",
                    "step_key": key,
                    "step_tag": step_tag(key) if key else None,
                    "id": v.id,
                    "name": v.name,
                    "fields": {"size_gb": v.size, "type": v.volume_type, "status": v.status},
                }
            )
        prefix = resource_name(plan_id, "")
        try:
            containers = list(self.conn.object_store.containers(prefix=prefix))
        except os_exc.EndpointNotFound:
            containers = []  # a cloud without Swift holds no containers of any plan
        for c in containers:
            metadata = {
                k.lower(): v for k, v in (self.conn.object_store.get_container_metadata(c.name).metadata or {}).items()
            }
            if metadata.get("dcostack-plan") != plan_id:
                continue  # another plan whose id starts alike
            key = metadata.get("dcostack-step")
            out.append(
                {
                    "kind": "object_container",
                    "step_key": key,
                    "step_tag": step_tag(key) if key else None,
                    "id": c.name,
                    "name": c.name,
                    "fields": {},
                }
            )
        return [PlanResource.model_validate(r) for r in out]

    # -- volumes -----------------------------------------------------------------------------

    def _find_volumes(self, work: StepWork) -> list[Any]:
        return find_marked_volumes(self.conn, work.owner.plan_id, work.owner.step_key)

    def _apply_volume(self, work: StepWork, progress: Progress) -> dict[str, Any]:
        for volume in self._find_volumes(work):
            if volume.status.startswith("error"):
                progress(f"volume {volume.name} {volume.status}: deleting it to create it again")
                self._delete_volume(volume, progress)
                continue
            if volume.status == "deleting":
                self._wait_gone(volume, progress)
                continue
            if volume.status in ("creating", "downloading"):
                progress(f"volume {volume.name} {volume.status}: waiting for the earlier attempt")
                volume = self._wait_volume(volume, {"available"}, progress)
            return _volume_outputs(volume)
        attrs: dict[str, Any] = {
            "name": work.owner.name(work.params["name"]),
            "size": work.params["size_gb"],
            "metadata": work.owner.metadata,
        }
        if work.params.get("type"):
            attrs["volume_type"] = work.params["type"]
        volume = self.conn.block_storage.create_volume(**attrs)
        progress(f"volume {attrs['name']} requested ({attrs['size']} GB)")
        return _volume_outputs(self._wait_volume(volume, {"available"}, progress))

    def _destroy_volume(self, work: StepWork, progress: Progress) -> bool:
        found = self._find_volumes(work)
        for volume in found:
            if volume.status in ("in-use", "attaching", "detaching", "reserved"):
                servers = ", ".join(a.get("server_id", "?") for a in volume.attachments or []) or "a server"
                raise CloudError(
                    f"volume {volume.name} is still {volume.status} (attached to {servers})",
                    hint="its volume-attachment step detaches it first; retrying",
                    retriable=True,
                    resource_id=volume.id,
                )
            self._delete_volume(volume, progress)
        return bool(found)

    def _delete_volume(self, volume: Any, progress: Progress) -> None:
        if volume.status != "deleting":
            self.conn.block_storage.delete_volume(volume, ignore_missing=True)
        progress(f"volume {volume.name} deleting")
        self._wait_gone(volume, progress)

    def _wait_gone(self, volume: Any, progress: Progress) -> None:
        def fetch() -> Any | None:
            try:
                # not find_volume: on a miss it lists by name, a filter devcloud's Cinder refuses
                return self.conn.block_storage.get_volume(volume.id)
            except os_exc.NotFoundException:
                return None

        def failed(current: Any | None) -> CloudError | None:
            if current is None or current.status != "error_deleting":
                return None
            return CloudError(
                f"volume {volume.name} went to error_deleting",
                hint="Cinder could not delete it; retrying tries again",
                retriable=True,
                resource_id=volume.id,
            )

        wait_for_status(
            fetch,
            state=lambda current: None if current is None else current.status,
            done=lambda current: current is None,
            describe=lambda current: f"volume {volume.name} " + ("deleted" if current is None else current.status),
            failed=failed,
            slow=lambda current: CloudError(
                f"volume {volume.name} still {getattr(current, 'status', 'there')} after {self.timeout:.0f}s",
                hint="the cloud is slow; retrying",
                retriable=True,
                resource_id=volume.id,
            ),
            progress=progress,
            timeout=self.timeout,
            interval=self.interval,
        )

    def _wait_volume(self, volume: Any, targets: set[str], progress: Progress) -> Any:
        return wait_volume(self.conn, volume, targets, progress, self.timeout, self.interval)

    # -- object containers -------------------------------------------------------------------

    def _find_container(self, work: StepWork) -> Any | None:
        """The step's container, None if absent; CloudError if the name belongs to something else."""
        name = work.owner.name(work.params["name"])
        try:
            container = self.conn.object_store.get_container_metadata(name)
        except os_exc.NotFoundException:
            return None
        metadata = {k.lower(): v for k, v in (container.metadata or {}).items()}
        marks = _container_marks(work)
        if (
            metadata.get("dcostack-plan") != marks["dcostack-plan"]
            or metadata.get("dcostack-step") != marks["dcostack-step"]
        ):
            raise CloudError(
                f"container {name} exists but is not {work.owner.step_key} of plan {work.owner.plan_id} "
                f"(its marks: plan {metadata.get('dcostack-plan')!r}, step {metadata.get('dcostack-step')!r})",
                hint=f"rename the container at {work.path} or delete the other one",
                http_status=409,
            )
        return container

    def _apply_container(self, work: StepWork, progress: Progress) -> dict[str, Any]:
        name = work.owner.name(work.params["name"])
        if self._find_container(work) is None:
            self.conn.object_store.create_container(name=name, metadata=_container_marks(work))
            progress(f"container {name} created")
        return {"id": name, "name": name}

    def _destroy_container(self, work: StepWork, progress: Progress) -> bool:
        try:
            container = self._find_container(work)
        except CloudError:
            return False  # the name is someone else's container: nothing of this step exists
        if container is None:
            return False
        name = work.owner.name(work.params["name"])

        def empty_and_delete() -> int:
            """Delete what the container lists, then the container; the count of objects it still held."""
            objects = list(self.conn.object_store.objects(name))
            for obj in objects:
                self.conn.object_store.delete_object(obj.name, container=name, ignore_missing=True)
            if objects:
                progress(f"container {name}: {len(objects)} objects deleted")
            try:
                self.conn.object_store.delete_container(name, ignore_missing=True)
            except os_exc.ConflictException:
                # Swift's listing lags behind deletes (or objects were added meanwhile): list again.
                return max(len(objects), 1)
            return 0

        wait_for_status(
            empty_and_delete,
            state=lambda left: left == 0,
            done=lambda left: left == 0,
            describe=lambda left: f"container {name} deleted" if left == 0 else f"container {name}: not empty yet",
            slow=lambda left: CloudError(
                f"container {name} still holds objects after {self.timeout:.0f}s",
                hint="Swift's listing lags behind deletes, or something keeps writing to it; retrying",
                retriable=True,
            ),
            progress=progress,
            timeout=self.timeout,
            interval=self.interval,
        )
        return True


def _volume_outputs(volume: Any) -> dict[str, Any]:
    return {
        "id": volume.id,
        "name": volume.name,
        "size": volume.size,
        "status": volume.status,
        "type": volume.volume_type,
    }
