"""Storage HTTP API: what the service owns in the cloud, read from Cinder and Swift."""

from __future__ import annotations

from services.storage.cloud import OpenStackStorageCloud, StorageCloud
from shared.executor.reads import cloud_read_router

router = cloud_read_router(
    "storage",
    OpenStackStorageCloud,
    {
        "volumes": StorageCloud.list_volumes,
        "containers": StorageCloud.list_containers,
        "quota": StorageCloud.quota,
        "plan-resources": StorageCloud.plan_resources,
    },
)
