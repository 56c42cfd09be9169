"""Compute's cloud adapter: Nova server groups, servers and volume attachments.

Every step is looked up by its marks (shared.executor.marks) before anything is created, so a redelivered
command finds what an earlier attempt made. Other steps' resources (networks, security groups,
volumes) are found by the marks of the same plan; a missing one is a retriable error naming its step.
Calls are synchronous: the operation workers run them in a thread.
"""

from __future__ import annotations

import base64
import threading
import weakref
from collections.abc import Callable
from typing import Any, Protocol

import keystoneauth1.exceptions as ksa
import openstack.exceptions as os_exc
from cachetools import TTLCache

from shared.executor.cinder import find_marked_volumes, wait_volume
from shared.executor.errors import COMPUTE_HINTS, CloudError, translate_sdk_error
from shared.executor.marks import Owner, StepWork, plan_tag, resource_name, step_tag
from shared.executor.models import (
    ComputeLimits,
    Flavor,
    Host,
    Image,
    Limit,
    PlanResource,
    Progress,
    Server,
    Usage,
)
from shared.executor.wait import wait_for_status

CAPACITY_HINT = "pick a smaller flavor or free capacity"
#: Nova builds every server of a detailed listing in the one API worker that answers it; listing a plan's
#: servers in slices (by the last character of their names, which cover every name) spreads them over the
#: workers. Measured with 100 servers in devcloud (4 nova-api workers, busy): 14.6 s as one listing, 4.9 s
#: in these 11 slices at once.
_NAME_SLICES = [f"{digit}$" for digit in range(10)] + ["[^0-9]$"]
#: How long a flavor or image found by name is reused (``ComputeCloud._cached``).
CATALOG_CACHE_SECONDS = 60.0
_CATALOG: weakref.WeakKeyDictionary[Any, TTLCache[tuple[str, str], Any]] = weakref.WeakKeyDictionary()
_CATALOG_LOCK = threading.Lock()


def translate(exc: BaseException, work: StepWork) -> CloudError:
    """An openstacksdk/keystoneauth failure as a CloudError with the cloud's own message."""
    return translate_sdk_error(exc, work, COMPUTE_HINTS)


class ComputeCloud(Protocol):
    """What compute does in a cloud: apply and destroy ``server_group``, ``server`` and ``volume_attachment``
    steps, and read what the project has. Every method is synchronous (run in a thread)."""

    def apply(self, work: StepWork, progress: Progress) -> dict[str, Any]:
        """Create the step's resource unless its marks find it; wait until usable; return its outputs.

        :raises CloudError: retriable when a referenced step's resource does not exist yet, the cloud is
            slow or failing; not retriable for the plan's mistakes (an unknown flavor or image, no valid
            host, quota), with the cloud's own message and a hint."""
        ...

    def destroy(self, work: StepWork, progress: Progress) -> bool:
        """Delete the step's resource and wait until it is gone.

        :returns: False if nothing existed.
        :raises CloudError: as ``apply``."""
        ...

    def list_servers(self) -> list[Server]:
        """The project's servers, with the plan and step of those DCOSTACK made."""
        ...

    def list_flavors(self, name: str | None = None) -> list[Flavor]:
        """The flavors the project may use (``name``: only the one of that name or id)."""
        ...

    def list_images(self, name: str | None = None) -> list[Image]:
        """The images the project may use (``name``: only those of that name or id)."""
        ...

    def limits(self) -> ComputeLimits:
        """The project's Nova quota and usage: ``{instances|cores|ram_mb|server_groups: {limit, used}}``
        (``limit`` null when unlimited) and ``server_group_members: {limit}``."""
        ...

    def host_capacity(self) -> list[Host]:
        """Free capacity per compute host, from Placement (needs an admin credential): for VCPU,
        MEMORY_MB and DISK_GB ``(total - reserved) * allocation_ratio - used`` and the largest single
        allocation (``max_unit``); hosts whose nova-compute is disabled or down are marked unusable.

        :raises CloudError: the credential may not read Placement."""
        ...

    def plan_resources(self, plan_id: str) -> list[PlanResource]:
        """What compute holds of one plan, by its marks: servers (flavor, image, status), server groups
        (policy) and volume attachments, each with its step key and the fields the plan controls."""
        ...


class OpenStackComputeCloud:
    """ComputeCloud on Nova, Glance, Placement and Cinder."""

    def __init__(self, conn: Any, *, timeout: float = 600.0, interval: float = 1.0) -> None:
        self.conn = conn
        self.timeout = timeout
        self.interval = interval

    # -- entry points ------------------------------------------------------------------------

    def apply(self, work: StepWork, progress: Progress) -> dict[str, Any]:
        """Create the step's resource unless it exists; wait until usable; return its outputs.

        Raises CloudError (retriable when waiting or trying again may help)."""
        handler = {
            "server_group": self._apply_server_group,
            "server": self._apply_server,
            "volume_attachment": self._apply_attachment,
        }.get(work.kind)
        if handler is None:
            raise CloudError(f"compute does not handle step kind {work.kind!r} ({work.path})")
        try:
            return handler(work, progress)
        except (os_exc.SDKException, ksa.ClientException, OSError) as exc:
            raise translate(exc, work) from exc

    def destroy(self, work: StepWork, progress: Progress) -> bool:
        """Delete the step's resource and wait until it is gone; False if nothing existed."""
        handler = {
            "server_group": self._destroy_server_group,
            "server": self._destroy_server,
            "volume_attachment": self._destroy_attachment,
        }.get(work.kind)
        if handler is None:
            raise CloudError(f"compute does not handle step kind {work.kind!r} ({work.path})")
        try:
            return handler(work, progress)
        except (os_exc.SDKException, ksa.ClientException, OSError) as exc:
            raise translate(exc, work) from exc

    # -- read helpers for the HTTP API -------------------------------------------------------

    def list_servers(self) -> list[Server]:
        return [
            Server(
                id=s.id,
                name=s.name,
                status=s.status,
                flavor=getattr(s.flavor, "original_name", None) or getattr(s.flavor, "name", None),
                addresses=_addresses(s),
                tags=list(s.tags or []),
                metadata=dict(s.metadata or {}),
                plan_id=(s.metadata or {}).get("dcostack_plan"),
                step_key=(s.metadata or {}).get("dcostack_step"),
            )
            for s in self.conn.compute.servers()
        ]

    def list_flavors(self, name: str | None = None) -> list[Flavor]:
        return [
            Flavor(
                id=f.id,
                name=f.name,
                vcpus=f.vcpus,
                ram_mb=f.ram,
                disk_gb=f.disk,
                ephemeral_gb=f.ephemeral or 0,
                swap_mb=int(f.swap or 0),
                is_public=f.is_public,
            )
            for f in self.conn.compute.flavors()
            if name is None or name in (f.name, f.id)
        ]

    def list_images(self, name: str | None = None) -> list[Image]:
        return [
            Image(
                id=i.id,
                name=i.name,
                status=i.status,
                size=i.size,
                min_disk_gb=i.min_disk,
                min_ram_mb=i.min_ram,
            )
            for i in self.conn.image.images()
            if name is None or name in (i.name, i.id)
        ]

    def limits(self) -> ComputeLimits:
        absolute = self.conn.compute.get_limits().absolute

        def pair(limit: Any, used: Any) -> Usage:
            return Usage(limit=None if limit is None or int(limit) < 0 else int(limit), used=int(used or 0))

        members = absolute.server_group_members
        return ComputeLimits(
            instances=pair(absolute.instances, absolute.instances_used),
            cores=pair(absolute.total_cores, absolute.total_cores_used),
            ram_mb=pair(absolute.total_ram, absolute.total_ram_used),
            server_groups=pair(absolute.server_groups, absolute.server_groups_used),
            server_group_members=Limit(limit=None if members is None or int(members) < 0 else int(members)),
        )

    def host_capacity(self) -> list[Host]:
        from concurrent.futures import ThreadPoolExecutor

        placement = self.conn.placement
        providers = placement.get("/resource_providers", microversion="1.14").json()["resource_providers"]
        roots = [p for p in providers if p.get("parent_provider_uuid") is None]

        def read(provider: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
            base = f"/resource_providers/{provider['uuid']}"
            inventories = placement.get(f"{base}/inventories", microversion="1.14").json()["inventories"]
            usages = placement.get(f"{base}/usages", microversion="1.14").json()["usages"]
            return inventories, usages

        states: dict[str, Any] = {}
        with ThreadPoolExecutor(max_workers=8) as pool:
            # the short listing has each hypervisor's status and state (microversion 2.53), without the details
            hypervisors = pool.submit(lambda: list(self.conn.compute.hypervisors(details=False)))
            read_all = list(pool.map(read, roots))
            for h in hypervisors.result():
                states[h.name] = h
        hosts = []
        for provider, (inventories, usages) in zip(roots, read_all, strict=True):
            if "VCPU" not in inventories and "MEMORY_MB" not in inventories:
                continue  # not a compute node (a sharing or network provider)
            resources = {}
            for rc in ("VCPU", "MEMORY_MB", "DISK_GB"):
                inv = inventories.get(rc)
                if inv is None:
                    continue
                capacity = int((inv["total"] - inv["reserved"]) * inv["allocation_ratio"])
                used = int(usages.get(rc, 0))
                resources[rc] = {
                    "total": inv["total"],
                    "reserved": inv["reserved"],
                    "allocation_ratio": inv["allocation_ratio"],
                    "used": used,
                    "free": max(capacity - used, 0),
                    "max_unit": inv["max_unit"],
                }
            hv = states.get(provider["name"])
            usable = hv is None or (hv.status == "enabled" and hv.state == "up")
            hosts.append(
                {
                    "name": provider["name"],
                    "uuid": provider["uuid"],
                    "usable": usable,
                    "status": None if hv is None else f"{hv.status}/{hv.state}",
                    "resources": resources,
                }
            )
        return [Host.model_validate(h) for h in sorted(hosts, key=lambda h: h["name"])]

    def plan_resources(self, plan_id: str) -> list[PlanResource]:
        from concurrent.futures import ThreadPoolExecutor

        prefix = resource_name(plan_id, "group-")
        out: list[dict[str, Any]] = []
        with ThreadPoolExecutor(max_workers=len(_NAME_SLICES) + 2) as pool:
            slices = [
                pool.submit(lambda r: list(self.conn.compute.servers(tags=plan_tag(plan_id), name=r)), regex)
                for regex in _NAME_SLICES
            ]
            listed_groups = pool.submit(lambda: list(self.conn.compute.server_groups()))
            listed_volumes = pool.submit(lambda: list(self.conn.block_storage.volumes(details=True)))
            servers = list({s.id: s for f in slices for s in f.result()}.values())
            groups, volumes = listed_groups.result(), listed_volumes.result()
        for s in servers:
            key = (s.metadata or {}).get("dcostack_step")
            flavor = s.flavor
            out.append(
                {
                    "kind": "server",
                    "step_key": key,
                    "step_tag": step_tag(key) if key else _step_mark(s.tags),
                    "id": s.id,
                    "name": s.name,
                    "fields": {
                        "flavor": getattr(flavor, "original_name", None) or getattr(flavor, "name", None),
                        "image_id": (s.image or {}).get("id")
                        if isinstance(s.image, dict)
                        else getattr(s.image, "id", None),
                        "status": s.status,
                    },
                    "vcpus": getattr(flavor, "vcpus", None),
                    "ram_mb": getattr(flavor, "ram", None),
                    "disk_gb": (getattr(flavor, "disk", 0) or 0) + (getattr(flavor, "ephemeral", 0) or 0),
                }
            )
        for g in groups:
            if g.name and g.name.startswith(prefix):
                name = g.name.removeprefix(prefix)
                out.append(
                    {
                        "kind": "server_group",
                        "step_key": f"server-group/{name}",
                        "step_tag": step_tag(f"server-group/{name}"),
                        "id": g.id,
                        "name": g.name,
                        "fields": {"policy": g.policy or (g.policies or [None])[0]},
                        "members": len(g.member_ids or []),
                    }
                )
        by_server = {(s.metadata or {}).get("dcostack_step"): s.id for s in servers}
        for v in volumes:
            meta = v.metadata or {}
            key = meta.get("dcostack_step") or ""
            if meta.get("dcostack_plan") != plan_id or key.count("/") != 2:
                continue  # only a group's per-server volumes (volume/<server>/<name>) are attached by a step
            _, server, volume = key.split("/")
            server_id = by_server.get(f"server/{server}")
            if server_id is not None and _attached_to(v, server_id):
                attachment = f"volume-attachment/{server}/{volume}"
                out.append(
                    {
                        "kind": "volume_attachment",
                        "step_key": attachment,
                        "step_tag": step_tag(attachment),
                        "id": v.id,
                        "name": v.name,
                        "fields": {},
                    }
                )
        return [PlanResource.model_validate(r) for r in out]

    # -- server groups -----------------------------------------------------------------------

    def _find_server_groups(self, name: str) -> list[Any]:
        return [g for g in self.conn.compute.server_groups() if g.name == name]

    def _apply_server_group(self, work: StepWork, progress: Progress) -> dict[str, Any]:
        name = work.owner.name(f"group-{work.params['name']}")
        found = self._find_server_groups(name)
        if found:
            group = found[0]
        else:
            group = self.conn.compute.create_server_group(name=name, policy=work.params["policy"])
            progress(f"server group {name} created ({work.params['policy']})")
        return {"id": group.id, "name": group.name, "policy": group.policy or (group.policies or [None])[0]}

    def _destroy_server_group(self, work: StepWork, progress: Progress) -> bool:
        found = self._find_server_groups(work.owner.name(f"group-{work.params['name']}"))
        for group in found:
            self.conn.compute.delete_server_group(group, ignore_missing=True)
            progress(f"server group {group.name} deleted")
        return bool(found)

    # -- servers -----------------------------------------------------------------------------

    def _find_servers(self, plan_id: str, step_key: str) -> list[Any]:
        return list(self.conn.compute.servers(tags=",".join([plan_tag(plan_id), step_tag(step_key)])))

    def _apply_server(self, work: StepWork, progress: Progress, fresh: bool = False) -> dict[str, Any]:
        owner, p = work.owner, work.params
        flavor = self._flavor(p["flavor"], work)
        for server in self._find_servers(owner.plan_id, owner.step_key):
            if server.status == "ERROR":
                progress(f"server {server.name} ERROR: deleting it to create it again")
                self._delete_server(server)
                continue
            if server.status == "BUILD":
                progress(f"server {server.name} BUILD: waiting for the earlier attempt")
                server = self._wait_server(server, flavor, progress)
            return self._server_outputs(server)
        image = self._image(p["image"], work)
        networks = [{"uuid": self._network(owner, n).id} for n in p.get("networks") or []]
        attrs: dict[str, Any] = {
            "name": owner.name(p["name"]),
            "flavor_id": flavor.id,
            "image_id": image.id,
            "networks": networks or "none",
            "tags": owner.tags,
            "metadata": {**(p.get("metadata") or {}), **owner.metadata},
        }
        groups = [self._security_group(owner, g).id for g in p.get("security_groups") or []]
        if groups:
            attrs["security_groups"] = [{"name": g} for g in groups]
        if p.get("server_group"):
            attrs["scheduler_hints"] = {"group": self._server_group_id(owner, p["server_group"])}
        if p.get("key_pair"):
            attrs["key_name"] = p["key_pair"]
        if p.get("user_data"):
            attrs["user_data"] = base64.b64encode(p["user_data"].encode()).decode()
        try:
            server = self.conn.compute.create_server(**attrs)
        except (os_exc.BadRequestException, os_exc.NotFoundException):
            # A network or security group remembered for this run may be gone (a resumed run that rolled
            # back recreates them under the same run id): look them up again, once.
            if fresh or not self._forget(f"{owner.run_id}/"):
                raise
            return self._apply_server(work, progress, fresh=True)
        progress(f"server {attrs['name']} requested ({flavor.name}, {image.name})")
        return self._server_outputs(self._wait_server(server, flavor, progress))

    def _wait_server(self, server: Any, flavor: Any, progress: Progress) -> Any:
        def failed(s: Any) -> CloudError | None:
            if s.status != "ERROR":
                return None
            fault = (s.fault or {}).get("message") or "Nova gave no fault message"
            no_host = "no valid host" in fault.lower()
            return CloudError(
                f"server {s.name} went to ERROR: {fault} (flavor {flavor.name})",
                hint=CAPACITY_HINT if no_host else "the server is left in ERROR for rollback or inspection",
                resource_id=s.id,
            )

        def state(s: Any) -> str:
            return f"server {s.status}" + (f" ({s.task_state})" if s.task_state else "")

        return wait_for_status(
            lambda: self.conn.compute.get_server(server.id),
            state=state,
            done=lambda s: s.status == "ACTIVE",
            describe=state,
            failed=failed,
            slow=lambda s: CloudError(
                f"server {s.name} still {s.status} after {self.timeout:.0f}s",
                hint="the cloud is slow; retrying waits for the same server",
                retriable=True,
                resource_id=s.id,
            ),
            progress=progress,
            timeout=self.timeout,
            interval=self.interval,
        )

    def _server_outputs(self, server: Any) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": server.id,
            "name": server.name,
            "status": server.status,
            "addresses": _addresses(server),
        }
        if server.compute_host:
            out["host"] = server.compute_host
        return out

    def _destroy_server(self, work: StepWork, progress: Progress) -> bool:
        found = self._find_servers(work.owner.plan_id, work.owner.step_key)
        for server in found:
            progress(f"server {server.name} deleting")
            self._delete_server(server)
            progress(f"server {server.name} deleted")
        return bool(found)

    def _delete_server(self, server: Any) -> None:
        self.conn.compute.delete_server(server, ignore_missing=True)
        self.conn.compute.wait_for_delete(server, interval=self.interval, wait=self.timeout)

    def _cached(self, kind: str, name_or_id: str, find: Callable[[], Any]) -> Any:
        """A flavor or image found by name, or a network or security group of the same run found by its
        marks, remembered for ``CATALOG_CACHE_SECONDS`` per credential (one keystoneauth session: a project
        or a run's trust), so a 100-server step batch looks each up once instead of once or twice per
        server (openstacksdk's find tries the id, then lists by name). A run's networks are keyed by the run:
        an apply never deletes them, and a later run (which may have recreated them) looks them up again.
        Misses are not remembered: what is created a moment later is found on the next try."""
        key = (kind, name_or_id)
        with _CATALOG_LOCK:
            cache = _CATALOG.get(self.conn.session)
            if cache is None:
                cache = _CATALOG[self.conn.session] = TTLCache(maxsize=256, ttl=CATALOG_CACHE_SECONDS)
            found = cache.get(key)
        if found is None:
            found = find()
            if found is not None:
                with _CATALOG_LOCK:
                    cache[key] = found
        return found

    def _forget(self, prefix: str) -> bool:
        """Drop what ``_cached`` remembers under kinds starting with ``prefix``; True if there was any."""
        with _CATALOG_LOCK:
            cache = _CATALOG.get(self.conn.session)
            if cache is None:
                return False
            keys = [k for k in cache if k[0].startswith(prefix)]
            for key in keys:
                del cache[key]
        return bool(keys)

    def _flavor(self, name_or_id: str, work: StepWork) -> Any:
        flavor = self._cached(
            "flavor", name_or_id, lambda: self.conn.compute.find_flavor(name_or_id, ignore_missing=True)
        )
        if flavor is None:
            names = sorted(f.name for f in self.conn.compute.flavors())
            raise CloudError(
                f"flavor {name_or_id!r} at {work.path} does not exist; available: {', '.join(names)}",
                hint="use one of the available flavors",
                http_status=404,
            )
        return flavor

    def _image(self, name_or_id: str, work: StepWork) -> Any:
        image = self._cached("image", name_or_id, lambda: self.conn.image.find_image(name_or_id, ignore_missing=True))
        if image is None:
            names = sorted(i.name for i in self.conn.image.images() if i.status == "active")
            raise CloudError(
                f"image {name_or_id!r} at {work.path} does not exist; available: {', '.join(names)}",
                hint="use one of the available images",
                http_status=404,
            )
        return image

    def _network(self, owner: Owner, name: str) -> Any:
        key = f"network/{name}"
        tags = ",".join([plan_tag(owner.plan_id), step_tag(key)])
        found = self._cached(
            f"{owner.run_id}/{key}", "", lambda: next(iter(self.conn.network.networks(tags=tags)), None)
        )
        if found is None:
            raise _missing(key, f"network {name}")
        return found

    def _security_group(self, owner: Owner, name: str) -> Any:
        key = f"security-group/{name}"
        tags = ",".join([plan_tag(owner.plan_id), step_tag(key)])
        found = self._cached(
            f"{owner.run_id}/{key}", "", lambda: next(iter(self.conn.network.security_groups(tags=tags)), None)
        )
        if found is None:
            raise _missing(key, f"security group {name}")
        return found

    def _server_group_id(self, owner: Owner, group: str) -> str:
        found = self._find_server_groups(owner.name(f"group-{group}"))
        if not found:
            raise _missing(f"server-group/{group}", f"server group {group}")
        return str(found[0].id)

    # -- volume attachments ------------------------------------------------------------------

    def _attachment_parts(self, work: StepWork) -> tuple[str, str]:
        server_key = f"server/{work.params['server']}"
        volume_key = "volume/" + work.owner.step_key.removeprefix("volume-attachment/")
        return server_key, volume_key

    def _apply_attachment(self, work: StepWork, progress: Progress) -> dict[str, Any]:
        server_key, volume_key = self._attachment_parts(work)
        servers = self._find_servers(work.owner.plan_id, server_key)
        if not servers:
            raise _missing(server_key, f"server {work.params['server']}")
        volumes = self._find_volumes(work.owner.plan_id, volume_key)
        if not volumes:
            raise _missing(volume_key, f"volume {work.params['volume']}")
        server, volume = servers[0], volumes[0]
        if volume.status in ("detaching", "attaching", "reserved"):
            volume = self._wait_volume(volume, {"available", "in-use"}, progress)
        elsewhere = [a["server_id"] for a in volume.attachments or [] if a.get("server_id") != server.id]
        if elsewhere:
            raise CloudError(
                f"volume {volume.name} is attached to server {elsewhere[0]}, not to {server.name}",
                hint="detach it there first; a volume belongs to one server",
                resource_id=volume.id,
            )
        if not _attached_to(volume, server.id):
            if volume.status != "available":
                raise CloudError(
                    f"volume {volume.name} is {volume.status}, cannot attach it",
                    hint="the volume step must leave it available; destroy and apply it again",
                    resource_id=volume.id,
                )
            self.conn.compute.create_volume_attachment(server, volume.id)
            progress(f"volume {volume.name} attaching to {server.name}")
            volume = self._wait_volume(volume, {"in-use"}, progress)
        device = next((a.get("device") for a in volume.attachments or [] if a.get("server_id") == server.id), None)
        return {"id": volume.id, "server_id": server.id, "volume_id": volume.id, "device": device}

    def _destroy_attachment(self, work: StepWork, progress: Progress) -> bool:
        server_key, volume_key = self._attachment_parts(work)
        servers = self._find_servers(work.owner.plan_id, server_key)
        volumes = self._find_volumes(work.owner.plan_id, volume_key)
        if not servers or not volumes:
            return False
        server, volume = servers[0], volumes[0]
        if volume.status == "detaching":
            volume = self._wait_volume(volume, {"available"}, progress)
        if not _attached_to(volume, server.id):
            return False
        self.conn.compute.delete_volume_attachment(server, volume.id, ignore_missing=True)
        progress(f"volume {volume.name} detaching from {server.name}")
        self._wait_volume(volume, {"available"}, progress)
        return True

    def _find_volumes(self, plan_id: str, step_key: str) -> list[Any]:
        return find_marked_volumes(self.conn, plan_id, step_key)

    def _wait_volume(self, volume: Any, targets: set[str], progress: Progress) -> Any:
        return wait_volume(self.conn, volume, targets, progress, self.timeout, self.interval)


def _missing(step_key: str, what: str) -> CloudError:
    return CloudError(
        f"{what} (step {step_key}) does not exist in the cloud yet",
        hint=f"step {step_key} must be applied first; retrying",
        retriable=True,
    )


def _attached_to(volume: Any, server_id: str) -> bool:
    return volume.status == "in-use" and any(a.get("server_id") == server_id for a in volume.attachments or [])


def _step_mark(tags: list[str] | None) -> str | None:
    return next((t for t in tags or [] if t.startswith("dcs-step-")), None)


def _addresses(server: Any) -> dict[str, list[str]]:
    return {net: [a["addr"] for a in addrs] for net, addrs in (server.addresses or {}).items()}
