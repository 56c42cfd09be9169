"""Lookups by marks, the wait until a resource is gone, and the translator that the network adapter's
Neutron steps, Octavia steps and reads share. Every resource is created with the marks of
``shared.executor.marks`` and looked up by them first, so a redelivered step finds what it already made.
References between steps are plan-level names, resolved by the marks of the same plan (``_ref``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from shared.executor.errors import (
    NETWORK_HINTS,
    SDK_ERRORS,
    CloudError,
    translate_sdk_error,
)
from shared.executor.marks import StepWork, plan_tag, step_tag
from shared.executor.models import Progress
from shared.executor.wait import wait_for_status

#: Octavia's statuses of an object that is gone or going.
_GONE = {"DELETED", "PENDING_DELETE"}
#: Listener and pool protocols that Octavia accepts for each listener protocol.
_POOL_PROTOCOL = {"HTTP": "HTTP", "HTTPS": "HTTPS", "TCP": "TCP", "UDP": "UDP"}


def translate(exc: BaseException, work: StepWork | None) -> CloudError:
    """An openstacksdk/keystoneauth failure as a CloudError (Neutron's and Octavia's hints); ``work`` is
    None for reads."""
    return translate_sdk_error(exc, work, NETWORK_HINTS)


@contextlib.contextmanager
def _reading() -> Iterator[None]:
    try:
        yield
    except SDK_ERRORS as exc:
        raise translate(exc, None) from exc


def _tags(*values: str) -> str:
    return ",".join(values)


def _first(items: Iterable[Any]) -> Any | None:
    """The oldest of what the marks found (two only after a race; the older one is kept by everyone)."""
    found = sorted(items, key=lambda r: (str(getattr(r, "created_at", "") or ""), str(r.id)))
    return found[0] if found else None


class NetworkBase:
    """One OpenStack project's Neutron and Octavia, and how to find a plan's resources in them."""

    def __init__(self, conn: Any, *, timeout: float = 300.0, interval: float = 1.0) -> None:
        self.conn = conn
        self.timeout = timeout
        self.interval = interval

    @staticmethod
    def _plan_query(plan_id: str | None) -> dict[str, str]:
        return {"tags": plan_tag(plan_id)} if plan_id else {}

    @staticmethod
    def _marks(work: StepWork, step_key: str | None = None) -> str:
        return _tags(plan_tag(work.owner.plan_id), step_tag(step_key or work.owner.step_key))

    def _missing(self, work: StepWork, step_key: str, what: str) -> CloudError:
        return CloudError(
            f"{work.path}: {what} of step {step_key!r} not found in the cloud",
            hint=f"step {step_key} must be applied first; it may still be in flight",
            retriable=True,
        )

    def _octavia(self, list_call: Callable[..., Iterable[Any]], *args: Any, tags: str) -> Any | None:
        return _first(o for o in list_call(*args, tags=tags) if o.provisioning_status not in _GONE)

    def _ref(self, work: StepWork, key: str, what: str, required: bool) -> Any:
        """The resource of another step of the same plan, by its marks. With ``required`` a missing one
        is a retriable CloudError naming the path and the step; without, it is None."""
        marks = self._marks(work, key)
        kind = key.split("/", 1)[0]
        net, lbc = self.conn.network, self.conn.load_balancer
        if kind in ("load-balancer", "listener", "pool"):
            calls = {"load-balancer": lbc.load_balancers, "listener": lbc.listeners, "pool": lbc.pools}
            found = self._octavia(calls[kind], tags=marks)
        else:
            calls = {
                "network": net.networks,
                "subnet": net.subnets,
                "router": net.routers,
                "security-group": net.security_groups,
            }
            found = _first(calls[kind](tags=marks))
        if found is None and required:
            raise self._missing(work, key, what)
        return found

    def _network(self, work: StepWork, name: str, *, required: bool = True) -> Any:
        return self._ref(work, f"network/{name}", f"network {name!r}", required)

    def _subnet(self, work: StepWork, network: str, *, required: bool = True) -> Any:
        return self._ref(work, f"subnet/{network}", f"subnet of network {network!r}", required)

    def _router(self, work: StepWork, name: str, *, required: bool = True) -> Any:
        return self._ref(work, f"router/{name}", f"router {name!r}", required)

    def _security_group(self, work: StepWork, name: str, *, required: bool = True) -> Any:
        return self._ref(work, f"security-group/{name}", f"security group {name!r}", required)

    def _load_balancer(self, work: StepWork, name: str, *, required: bool = True) -> Any:
        return self._ref(work, f"load-balancer/{name}", f"load balancer {name!r}", required)

    def _listener(self, work: StepWork, lb: str, *, required: bool = True) -> Any:
        return self._ref(work, f"listener/{lb}", f"listener of load balancer {lb!r}", required)

    def _pool(self, work: StepWork, lb: str, *, required: bool = True) -> Any:
        return self._ref(work, f"pool/{lb}", f"pool of load balancer {lb!r}", required)

    def _server(self, work: StepWork, name: str) -> Any:
        key = f"server/{name}"
        found = _first(self.conn.compute.servers(tags=self._marks(work, key)))
        if found is None:
            raise self._missing(work, key, f"server {name!r}")
        return found

    def _server_ports(self, work: StepWork, server: Any, name: str) -> list[Any]:
        ports = list(self.conn.network.ports(device_id=server.id))
        if not ports:
            raise CloudError(
                f"{work.path}: server {name!r} ({server.id}) has no port yet (status {server.status})",
                hint="the server is still being built; retry once it is ACTIVE",
                retriable=True,
            )
        return ports

    # -- waiting ----------------------------------------------------------------------------------

    def _wait_gone(self, what: str, fetch: Callable[[], Any | None], progress: Progress) -> None:
        def status(obj: Any | None) -> str | None:
            if obj is None:
                return "DELETED"
            return getattr(obj, "provisioning_status", None) or getattr(obj, "status", None)

        wait_for_status(
            fetch,
            state=status,
            done=lambda obj: status(obj) == "DELETED",
            describe=lambda obj: f"{what}: deleted" if status(obj) == "DELETED" else f"{what}: {status(obj)}",
            failed=lambda obj: (
                None
                if status(obj) != "ERROR"
                else CloudError(f"{what}: deletion failed, status ERROR", resource_id=getattr(obj, "id", None))
            ),
            slow=lambda obj: CloudError(f"{what}: still there after {self.timeout:.0f}s", retriable=True),
            progress=progress,
            timeout=self.timeout,
            interval=self.interval,
        )


def _step_mark(tags: list[str] | None) -> str | None:
    return next((t for t in tags or [] if t.startswith("dcs-step-")), None)


def _limit_used(value: Any) -> dict[str, int | None]:
    """Neutron's ``{limit, used, reserved}`` of one resource; a limit of -1 is unlimited (null)."""
    value = value or {}
    limit = value.get("limit")
    return {"limit": None if limit is None or int(limit) < 0 else int(limit), "used": int(value.get("used") or 0)}


def _ports(low: int | None, high: int | None) -> str | None:
    if low is None:
        return None
    return str(low) if high in (None, low) else f"{low}-{high}"


def _gateway_ip(router: Any) -> str | None:
    ips = (router.external_gateway_info or {}).get("external_fixed_ips") or []
    return str(ips[0]["ip_address"]) if ips else None


def _rule_dict(rule: Any) -> dict[str, Any]:
    if isinstance(rule, dict):
        get = rule.get
    else:

        def get(key: str, default: Any = None) -> Any:
            return getattr(rule, key, default)

    return {
        key: get(key)
        for key in (
            "id",
            "direction",
            "protocol",
            "port_range_min",
            "port_range_max",
            "remote_ip_prefix",
            "remote_group_id",
        )
    }
