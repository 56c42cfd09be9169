"""Storage HTTP API: what the service owns in the cloud, read from Cinder and Swift."""

from __future__ import annotations

from services.storage.cloud import StorageCloud
from shared.executor.reads import cloud_read_router

router = cloud_read_router(
    "storage",
    StorageCloud,
    {
        "volumes": "list_volumes",
        "containers": "list_containers",
        "quota": "quota",
        "plan-resources": "plan_resources",
    },
)
