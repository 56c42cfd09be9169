"""Compute HTTP API: what the service owns in the cloud, read from Nova, Glance and Placement."""

from __future__ import annotations

from fastapi import APIRouter

from services.compute.cloud import ComputeCloud
from shared.executor.reads import cloud_read_router

router = APIRouter()
router.include_router(
    cloud_read_router(
        "compute",
        ComputeCloud,
        {
            "servers": "list_servers",
            "flavors": "list_flavors",
            "images": "list_images",
            "limits": "limits",
            "plan-resources": "plan_resources",
        },
    )
)
# Placement and hypervisors are admin reads: they use their own clouds.yaml entry, when one is given.
router.include_router(
    cloud_read_router(
        "compute",
        ComputeCloud,
        {"capacity": "host_capacity"},
        cloud_setting="capacity_cloud",
        unset_reason="host capacity (Placement) needs an admin credential; name its clouds.yaml entry there",
        optional=True,
    )
)
