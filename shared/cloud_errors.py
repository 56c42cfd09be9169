"""openstacksdk and keystoneauth failures as CloudError, the same way in every executing service:
the cloud's own message, a hint, and whether trying again can help."""

from __future__ import annotations

from typing import Any

import keystoneauth1.exceptions as ksa
import openstack.exceptions as os_exc

from shared.cloud import CloudError, StepWork

QUOTA_HINT = "raise the project's quota or lower the plan's count"
# Cinder answers 400 "Invalid volume: ... status must be available" for a volume that is only busy.
_BUSY = ("status must be", "task_state", "in-use", "in use")


def translate_sdk_error(exc: BaseException, work: StepWork, state_conflict: tuple[str, ...]) -> CloudError:
    """An openstacksdk/keystoneauth failure as a CloudError with the cloud's own message.

    ``state_conflict``: words in a 409 that mean "busy right now" (retriable) for this service's resources."""
    if isinstance(exc, CloudError):
        return exc
    where = f"{work.kind} {work.owner.step_key}"
    if isinstance(exc, os_exc.HttpException):
        status = exc.status_code
        message = cloud_message(exc)
        lowered = message.lower()
        if "quota" in lowered:
            return CloudError(message, hint=QUOTA_HINT, http_status=status)
        if status is None or status >= 500 or status == 429:
            return CloudError(
                message, hint=f"the cloud failed on {where}; retrying", retriable=True, http_status=status
            )
        if status == 400 and any(s in lowered for s in _BUSY):
            return CloudError(message, hint="the resource is busy; retrying", retriable=True, http_status=status)
        if status == 409:
            state = any(s in lowered for s in state_conflict)
            hint = "the resource is busy; retrying" if state else f"a conflicting resource exists for {where}"
            return CloudError(message, hint=hint, retriable=state, http_status=status)
        if status == 401:
            return CloudError(message, hint="the service's cloud credentials were refused", http_status=status)
        if status == 403:
            return CloudError(message, hint="the project's role does not allow this", http_status=status)
        if status == 404:
            return CloudError(message, hint=f"check the names used at {work.path}", http_status=status)
        return CloudError(message, hint=f"check the plan's values at {work.path}", http_status=status)
    if isinstance(exc, os_exc.ResourceTimeout | TimeoutError):
        return CloudError(f"{where}: {exc}", hint="the cloud is slow; retrying", retriable=True)
    if isinstance(exc, ksa.HttpError):
        status = exc.http_status
        retriable = status is None or status >= 500
        return CloudError(f"{where}: {exc.message}", retriable=retriable, http_status=status)
    if isinstance(exc, ksa.ConnectionError | ksa.DiscoveryFailure | ConnectionError):
        return CloudError(f"{where}: cannot reach the cloud: {exc}", hint="retrying", retriable=True)
    if isinstance(exc, os_exc.EndpointNotFound):
        return CloudError(f"{where}: {exc}", hint="the cloud's catalog lacks this service")
    return CloudError(f"{where}: {exc}")


def cloud_message(exc: Any) -> str:
    """The service's own words: the JSON body's message (``{"forbidden": {"message": ...}}``)."""
    response = getattr(exc, "response", None)
    if response is not None:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            for value in body.values():
                if isinstance(value, dict) and value.get("message"):
                    return str(value["message"])
            if body.get("message"):
                return str(body["message"])
    details = getattr(exc, "details", None)
    return str(details or getattr(exc, "message", None) or exc)
