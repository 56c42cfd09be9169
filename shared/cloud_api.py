"""Read APIs over what a domain service owns in the cloud: the same adapter the service acts with,
called in a thread, in the project of the service's cloud (clouds.yaml entry ``DCOSTACK_CLOUD``)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request

from shared.cloud import CloudError
from shared.errors import DependencyUnavailable


def cloud_read_router(service: str, adapter: Callable[[Any], Any], reads: dict[str, str]) -> APIRouter:
    """``GET /v1/<service>/<path>`` for each ``path → adapter method`` in ``reads``."""
    router = APIRouter(prefix=f"/v1/{service}", tags=[service])
    lock = threading.Lock()

    def connected(request: Request) -> Any:
        with lock:
            found = getattr(request.app.state, "cloud_reader", None)
            if found is None:
                import openstack

                settings = request.app.state.runtime.settings
                try:
                    found = adapter(openstack.connect(cloud=settings.cloud))
                except Exception as exc:
                    raise DependencyUnavailable(
                        f"cannot connect to cloud {settings.cloud!r}: {exc}; check clouds.yaml and DCOSTACK_CLOUD"
                    ) from exc
                request.app.state.cloud_reader = found
            return found

    def add(path: str, method: str) -> None:
        async def read(request: Request) -> dict[str, Any]:
            def call() -> Any:
                try:
                    return getattr(connected(request), method)()
                except CloudError:
                    raise
                except DependencyUnavailable:
                    raise
                except Exception as exc:
                    raise DependencyUnavailable(f"the cloud did not answer: {exc}") from exc

            return {path: await asyncio.to_thread(call)}

        read.__name__ = f"list_{path.replace('-', '_')}"
        read.__doc__ = f"The {path.replace('-', ' ')} in the service's project, read from OpenStack."
        router.add_api_route(f"/{path}", read, methods=["GET"], name=read.__name__)

    for path, method in reads.items():
        add(path, method)
    return router
