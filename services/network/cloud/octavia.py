"""The network adapter's Octavia steps: load balancers, listeners, pools, members, health monitors. Octavia
refuses changes while a load balancer is PENDING_*, so every change waits for it to settle."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.network.cloud.marks import (
    _POOL_PROTOCOL,
    NetworkBase,
)
from shared.executor.errors import IMMUTABLE_HINT, CloudError
from shared.executor.marks import StepWork
from shared.executor.models import Progress
from shared.executor.wait import wait_for_status


class OctaviaSteps(NetworkBase):
    """Apply and destroy the Octavia step kinds."""

    # -- waiting for Octavia -----------------------------------------------------------------------

    def _wait_octavia(self, what: str, fetch: Callable[[], Any], lb_id: str, progress: Progress) -> Any:
        """Poll until the object and its load balancer are both ACTIVE, reporting each transition."""

        def both() -> tuple[Any, Any]:
            obj = fetch()
            lb = obj if getattr(obj, "id", None) == lb_id else self.conn.load_balancer.get_load_balancer(lb_id)
            return obj, lb

        def state(pair: tuple[Any, Any]) -> tuple[str, str]:
            return pair[0].provisioning_status, pair[1].provisioning_status

        def describe(pair: tuple[Any, Any]) -> str:
            obj, lb = pair
            parent = "" if obj is lb else f" (load balancer {lb_id}: {lb.provisioning_status})"
            return f"{what} {obj.id}: {obj.provisioning_status}{parent}"

        def failed(pair: tuple[Any, Any]) -> CloudError | None:
            obj, lb = pair
            if "ERROR" not in state(pair):
                return None
            broken = obj if obj.provisioning_status == "ERROR" else lb
            return CloudError(
                f"{what} {obj.id}: Octavia set provisioning_status ERROR "
                f"(load balancer {lb_id} provisioning_status {lb.provisioning_status}, "
                f"operating_status {broken.operating_status})",
                hint="Octavia failed to build it; see the Octavia worker log; destroy and apply again",
                resource_id=obj.id,
            )

        obj, _ = wait_for_status(
            both,
            state=state,
            done=lambda pair: state(pair) == ("ACTIVE", "ACTIVE"),
            describe=describe,
            failed=failed,
            slow=lambda pair: CloudError(
                f"{what} {pair[0].id}: still {pair[0].provisioning_status} after {self.timeout:.0f}s "
                f"(load balancer {pair[1].provisioning_status})",
                hint="Octavia is slow; retrying will wait again",
                retriable=True,
                resource_id=pair[0].id,
            ),
            progress=progress,
            timeout=self.timeout,
            interval=self.interval,
        )
        return obj

    def _wait_lb_settled(self, lb_id: str, progress: Progress) -> Any | None:
        """Wait until the load balancer is not PENDING_* (Octavia refuses changes meanwhile)."""

        def status(lb: Any | None) -> str:
            return "DELETED" if lb is None else str(lb.provisioning_status)

        lb = wait_for_status(
            lambda: self.conn.load_balancer.find_load_balancer(lb_id, ignore_missing=True),
            state=status,
            done=lambda lb: not status(lb).startswith("PENDING"),
            describe=lambda lb: f"load balancer {lb_id}: {status(lb)}",
            slow=lambda lb: CloudError(
                f"load balancer {lb_id}: still {status(lb)} after {self.timeout:.0f}s",
                hint=IMMUTABLE_HINT,
                retriable=True,
                resource_id=lb_id,
            ),
            progress=progress,
            timeout=self.timeout,
            interval=self.interval,
            quiet_if_ready=True,
        )
        return None if status(lb) == "DELETED" else lb

    # -- Octavia ------------------------------------------------------------------------------------

    def _apply_load_balancer(self, work: StepWork, progress: Progress) -> dict[str, Any]:
        p = work.params
        lb = self._octavia(self.conn.load_balancer.load_balancers, tags=self._marks(work))
        if lb is not None and lb.provisioning_status == "ERROR":
            progress(f"load balancer {lb.id} is in ERROR; deleting it to build it again")
            self._delete_lb(lb.id, progress)
            lb = None
        if lb is None:
            subnet = self._subnet(work, p["network"])
            lb = self.conn.load_balancer.create_load_balancer(
                name=work.owner.name(p["name"]), vip_subnet_id=subnet.id, tags=work.owner.tags
            )
            progress(f"load balancer {lb.id} created")
        lb = self._wait_octavia(
            "load balancer", lambda: self.conn.load_balancer.get_load_balancer(lb.id), lb.id, progress
        )
        return {
            "id": lb.id,
            "vip_address": lb.vip_address,
            "vip_port_id": lb.vip_port_id,
            "vip_subnet_id": lb.vip_subnet_id,
            "provisioning_status": lb.provisioning_status,
            "operating_status": lb.operating_status,
        }

    def _delete_lb(self, lb_id: str, progress: Progress) -> None:
        if self._wait_lb_settled(lb_id, progress) is None:
            return
        self.conn.load_balancer.delete_load_balancer(lb_id, ignore_missing=True, cascade=True)
        self._wait_gone(
            f"load balancer {lb_id}",
            lambda: self.conn.load_balancer.find_load_balancer(lb_id, ignore_missing=True),
            progress,
        )

    def _destroy_load_balancer(self, work: StepWork, progress: Progress) -> bool:
        lb = self._octavia(self.conn.load_balancer.load_balancers, tags=self._marks(work))
        if lb is None:
            return False
        self._delete_lb(lb.id, progress)
        return True

    def _child(
        self,
        work: StepWork,
        progress: Progress,
        what: str,
        find: Callable[[], Any | None],
        get: Callable[[str], Any],
        delete: Callable[[Any], None],
        create: Callable[[], Any],
        lb_id: str,
    ) -> Any:
        """Apply one Octavia child object: reuse what the marks find, rebuild an ERROR one, else create."""
        obj = find()
        if obj is not None and obj.provisioning_status == "ERROR":
            progress(f"{what} {obj.id} is in ERROR; deleting it to build it again")
            self._wait_lb_settled(lb_id, progress)
            delete(obj)
            self._wait_gone(f"{what} {obj.id}", find, progress)
            obj = None
        if obj is None:
            self._wait_lb_settled(lb_id, progress)
            obj = create()
            progress(f"{what} {obj.id} created")
        return self._wait_octavia(what, lambda: get(obj.id), lb_id, progress)

    def _destroy_child(
        self, what: str, obj: Any | None, lb_id: str, delete: Callable[[Any], None], progress: Progress
    ) -> bool:
        """Delete one Octavia child and wait for its load balancer to return to ACTIVE (no cascade)."""
        if obj is None:
            return False
        if self._wait_lb_settled(lb_id, progress) is None:
            return False  # the load balancer, and with it everything under it, is gone
        delete(obj)
        progress(f"{what} {obj.id}: delete requested")
        lb = self._wait_lb_settled(lb_id, progress)
        if lb is not None and lb.provisioning_status != "ACTIVE":
            raise CloudError(
                f"{what} {obj.id}: after its deletion load balancer {lb_id} is {lb.provisioning_status}",
                hint="Octavia failed; see the Octavia worker log",
                resource_id=obj.id,
            )
        progress(f"{what} {obj.id}: deleted")
        return True

    def _apply_listener(self, work: StepWork, progress: Progress) -> dict[str, Any]:
        p = work.params
        lb = self._load_balancer(work, p["lb"])
        lbc = self.conn.load_balancer
        listener = self._child(
            work,
            progress,
            "listener",
            lambda: self._octavia(lbc.listeners, tags=self._marks(work)),
            lbc.get_listener,
            lambda o: lbc.delete_listener(o, ignore_missing=True),
            lambda: lbc.create_listener(
                name=work.owner.name(p["lb"]),
                protocol=p.get("protocol") or "HTTP",
                protocol_port=int(p["port"]),
                load_balancer_id=lb.id,
                tags=work.owner.tags,
            ),
            lb.id,
        )
        return {
            "id": listener.id,
            "load_balancer_id": lb.id,
            "protocol": listener.protocol,
            "port": listener.protocol_port,
            "vip_address": lb.vip_address,
        }

    def _destroy_listener(self, work: StepWork, progress: Progress) -> bool:
        lbc = self.conn.load_balancer
        listener = self._octavia(lbc.listeners, tags=self._marks(work))
        if listener is None:
            return False
        lb_id = listener.load_balancers[0]["id"]
        return self._destroy_child(
            "listener", listener, lb_id, lambda o: lbc.delete_listener(o, ignore_missing=True), progress
        )

    def _apply_pool(self, work: StepWork, progress: Progress) -> dict[str, Any]:
        p = work.params
        lb = self._load_balancer(work, p["lb"])
        listener = self._listener(work, p["lb"])
        lbc = self.conn.load_balancer
        pool = self._child(
            work,
            progress,
            "pool",
            lambda: self._octavia(lbc.pools, tags=self._marks(work)),
            lbc.get_pool,
            lambda o: lbc.delete_pool(o, ignore_missing=True),
            lambda: lbc.create_pool(
                name=work.owner.name(p["lb"]),
                protocol=_POOL_PROTOCOL.get(listener.protocol, listener.protocol),
                lb_algorithm=p.get("algorithm") or "ROUND_ROBIN",
                listener_id=listener.id,
                tags=work.owner.tags,
            ),
            lb.id,
        )
        return {"id": pool.id, "load_balancer_id": lb.id, "listener_id": listener.id, "protocol": pool.protocol}

    def _destroy_pool(self, work: StepWork, progress: Progress) -> bool:
        lbc = self.conn.load_balancer
        pool = self._octavia(lbc.pools, tags=self._marks(work))
        if pool is None:
            return False
        lb_id = pool.loadbalancers[0]["id"]
        return self._destroy_child("pool", pool, lb_id, lambda o: lbc.delete_pool(o, ignore_missing=True), progress)

    def _apply_member(self, work: StepWork, progress: Progress) -> dict[str, Any]:
        p = work.params
        lb = self._load_balancer(work, p["lb"])
        pool = self._pool(work, p["lb"])
        lbc = self.conn.load_balancer

        def create() -> Any:
            server = self._server(work, p["server"])
            subnet = self._subnet(work, p["network"])
            address = next(
                (
                    ip["ip_address"]
                    for port in self._server_ports(work, server, p["server"])
                    for ip in port.fixed_ips or []
                    if ip.get("subnet_id") == subnet.id
                ),
                None,
            )
            if address is None:
                raise CloudError(
                    f"{work.path}: server {p['server']!r} has no address on network {p['network']!r}",
                    hint="the load balancer's network must be one of the member group's networks",
                )
            return lbc.create_member(
                pool,
                name=work.owner.name(p["server"]),
                address=address,
                protocol_port=int(p["port"]),
                subnet_id=subnet.id,
                tags=work.owner.tags,
            )

        member = self._child(
            work,
            progress,
            "member",
            lambda: self._octavia(lbc.members, pool, tags=self._marks(work)),
            lambda member_id: lbc.get_member(member_id, pool),
            lambda o: lbc.delete_member(o, pool, ignore_missing=True),
            create,
            lb.id,
        )
        return {"id": member.id, "pool_id": pool.id, "address": member.address, "port": member.protocol_port}

    def _destroy_member(self, work: StepWork, progress: Progress) -> bool:
        lbc = self.conn.load_balancer
        pool = self._pool(work, work.params["lb"], required=False)
        if pool is None:
            return False  # members go with their pool
        member = self._octavia(lbc.members, pool, tags=self._marks(work))
        lb_id = pool.loadbalancers[0]["id"]
        return self._destroy_child(
            "member", member, lb_id, lambda o: lbc.delete_member(o, pool, ignore_missing=True), progress
        )

    def _apply_health_monitor(self, work: StepWork, progress: Progress) -> dict[str, Any]:
        p = work.params
        lb = self._load_balancer(work, p["lb"])
        pool = self._pool(work, p["lb"])
        lbc = self.conn.load_balancer
        kind = p.get("type") or "HTTP"
        attrs: dict[str, Any] = {
            "name": work.owner.name(p["lb"]),
            "pool_id": pool.id,
            "type": kind,
            "delay": int(p.get("delay", 5)),
            "timeout": int(p.get("timeout", 3)),
            "max_retries": int(p.get("max_retries", 3)),
            "tags": work.owner.tags,
        }
        if kind in ("HTTP", "HTTPS"):
            attrs["url_path"] = p.get("url_path") or "/"
        hm = self._child(
            work,
            progress,
            "health monitor",
            lambda: self._octavia(lbc.health_monitors, tags=self._marks(work)),
            lbc.get_health_monitor,
            lambda o: lbc.delete_health_monitor(o, ignore_missing=True),
            lambda: lbc.create_health_monitor(**attrs),
            lb.id,
        )
        return {"id": hm.id, "pool_id": pool.id, "type": hm.type}

    def _destroy_health_monitor(self, work: StepWork, progress: Progress) -> bool:
        lbc = self.conn.load_balancer
        hm = self._octavia(lbc.health_monitors, tags=self._marks(work))
        if hm is None:
            return False
        pool = lbc.get_pool(hm.pools[0]["id"])
        lb_id = pool.loadbalancers[0]["id"]
        return self._destroy_child(
            "health monitor", hm, lb_id, lambda o: lbc.delete_health_monitor(o, ignore_missing=True), progress
        )
