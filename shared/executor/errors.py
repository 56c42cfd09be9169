"""Cloud failures as CloudError, the same way in every executing service: the cloud's own message, a hint
the user can act on, and whether trying again can help.

One translator (``translate_sdk_error``) for openstacksdk and keystoneauth failures. What differs per
service is only which words in a cloud's answer mean what: each adapter passes its table of ``Hint`` rules
(``COMPUTE_HINTS``, ``NETWORK_HINTS``, ``STORAGE_HINTS``), checked after the quota rule and before the
rules by HTTP status that every service shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import keystoneauth1.exceptions as ksa
import openstack.exceptions as os_exc

from shared.errors import DcostackError

if TYPE_CHECKING:
    from shared.executor.marks import StepWork

QUOTA_HINT = "raise the project's quota or lower the plan's count"
BUSY_HINT = "the resource is busy; retrying"
OVERLAP_HINT = "choose a CIDR that overlaps none of the project's other subnets on the same router or network"
IN_USE_HINT = "the address is taken; choose another CIDR or free the port that holds it"
#: Octavia refuses changes while a load balancer is PENDING_*; it settles within seconds.
IMMUTABLE_HINT = "the load balancer is busy with another change; retrying after it settles will succeed"

#: What the SDK and keystoneauth raise; anything else is a bug in an adapter and propagates as it is.
SDK_ERRORS = (os_exc.SDKException, ksa.ClientException, OSError)


class CloudError(DcostackError):
    """A cloud call failed. ``message`` is the cloud's own words (Nova fault, Neutron detail, quota
    used/limit); ``hint`` says what the user can change; ``retriable`` whether trying again may help."""

    status_code = 502

    def __init__(
        self,
        message: str,
        *,
        hint: str = "",
        retriable: bool = False,
        http_status: int | None = None,
        resource_id: str | None = None,
    ) -> None:
        super().__init__(message + (f" ({hint})" if hint else ""))
        self.message = message
        self.hint = hint
        self.retriable = retriable
        self.http_status = http_status
        self.resource_id = resource_id

    def to_event(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "hint": self.hint,
            "retriable": self.retriable,
            "http_status": self.http_status,
            "resource_id": self.resource_id,
        }


@dataclass(frozen=True)
class Hint:
    """A cloud answer of ``status`` (None: any) whose message holds any of ``any_of`` (and all of
    ``all_of``), lower-cased, means ``hint``; ``retriable`` when it only says "busy right now"."""

    status: int | None
    any_of: tuple[str, ...]
    hint: str
    retriable: bool = False
    all_of: tuple[str, ...] = ()

    def matches(self, status: int | None, lowered: str) -> bool:
        if self.status is not None and status != self.status:
            return False
        if self.any_of and not any(w in lowered for w in self.any_of):
            return False
        return all(w in lowered for w in self.all_of)


# Cinder answers 400 "Invalid volume: ... status must be available" for a volume that is only busy.
_CINDER_BUSY = Hint(400, ("status must be", "task_state", "in-use", "in use"), BUSY_HINT, retriable=True)

#: Nova reports a 409 while a server is busy ("Cannot 'attach_volume' instance ... while it is in
#: task_state ..."), Cinder while a volume is in-use or attaching: waiting and trying again helps.
COMPUTE_HINTS = (
    _CINDER_BUSY,
    Hint(
        409,
        ("task_state", "vm_state", "in-use", "in use", "while it is in", "status must be", "locked"),
        BUSY_HINT,
        retriable=True,
    ),
)
#: Cinder answers 409/400 while a volume is attaching, detaching or in-use; Swift 409 while a container
#: still lists objects that were just deleted (its listings are eventually consistent).
STORAGE_HINTS = (
    _CINDER_BUSY,
    Hint(
        409,
        ("in-use", "in use", "status must be", "attach", "detach", "task_state", "conflict"),
        BUSY_HINT,
        retriable=True,
    ),
)
NETWORK_HINTS = (
    Hint(None, ("overlap",), OVERLAP_HINT),
    Hint(409, ("already allocated",), IN_USE_HINT),
    Hint(409, (), IN_USE_HINT, all_of=("ip address", "in use")),
    Hint(409, ("immutable", "pending_"), IMMUTABLE_HINT, retriable=True),
    Hint(
        409,
        ("in use", "in_use", "still has"),
        "something else still uses it (ports, interfaces); it may be going away",
        retriable=True,
    ),
    Hint(
        409,
        ("already", "duplicate"),
        "another resource already holds this value; change it in the plan or remove the other one",
    ),
)


def translate_sdk_error(exc: BaseException, work: StepWork | None, hints: tuple[Hint, ...] = ()) -> CloudError:
    """An openstacksdk/keystoneauth failure as a CloudError with the cloud's own message, its HTTP status,
    a hint and whether retrying may help. ``work`` is None for reads; ``hints`` is the service's table."""
    if isinstance(exc, CloudError):
        return exc
    where = f"{work.kind} {work.owner.step_key} at {work.path}" if work is not None else "reading from the cloud"
    path = work.path if work is not None else "the request"
    if isinstance(exc, os_exc.HttpException):
        status = exc.status_code
        message = cloud_message(exc)
        lowered = message.lower()
        if "quota" in lowered:
            return CloudError(message, hint=QUOTA_HINT, http_status=status)
        for rule in hints:
            if rule.matches(status, lowered):
                return CloudError(message, hint=rule.hint, retriable=rule.retriable, http_status=status)
        if status is None or status >= 500 or status == 429:
            return CloudError(
                message, hint=f"the cloud failed on {where}; retrying", retriable=True, http_status=status
            )
        hint = {
            401: "the cloud refused the credentials; check clouds.yaml or the run's trust",
            403: "the project's role does not allow this; ask an operator for the right role or policy",
            404: f"it was deleted outside DCOSTACK or a name at {path} is wrong",
            409: f"a conflicting resource exists for {where}",
        }.get(status, f"the cloud rejected {where}; fix the plan's values at {path}")
        return CloudError(message, hint=hint, http_status=status)
    if isinstance(exc, os_exc.ResourceTimeout | TimeoutError):
        return CloudError(f"{where}: {exc}", hint="the cloud is slow; retrying", retriable=True)
    if isinstance(exc, os_exc.ResourceFailure):
        return CloudError(f"{where}: {exc}", hint="the cloud put the resource in ERROR; see its status")
    if isinstance(exc, ksa.HttpError):
        status = exc.http_status
        retriable = status is None or status >= 500
        return CloudError(f"{where}: {exc.message}", retriable=retriable, http_status=status)
    if isinstance(exc, ksa.ConnectionError | ksa.DiscoveryFailure | ConnectionError):
        return CloudError(
            f"{where}: cannot reach the cloud: {exc}", hint="the API is unreachable; retrying", retriable=True
        )
    if isinstance(exc, os_exc.EndpointNotFound):
        return CloudError(f"{where}: {exc}", hint="the cloud's catalog lacks this service")
    return CloudError(f"{where}: {type(exc).__name__}: {exc}" if not str(exc) else f"{where}: {exc}")


def cloud_message(exc: Any) -> str:
    """The service's own words: Nova's ``{"forbidden": {"message": ...}}``, Neutron's NeutronError.message,
    Octavia's faultstring, Swift's plain body."""
    response = getattr(exc, "response", None)
    if response is not None:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            for value in [body, *body.values()]:
                if isinstance(value, dict):
                    for key in ("message", "faultstring", "detail"):
                        if isinstance(value.get(key), str) and value[key]:
                            return str(value[key])
    details = getattr(exc, "details", None)
    return str(details or getattr(exc, "message", None) or exc)
