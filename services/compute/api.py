"""Compute HTTP API: what the service owns in the cloud, read from Nova, Glance and Placement."""

from __future__ import annotations

from fastapi import APIRouter

from services.compute.cloud import ComputeCloud, OpenStackComputeCloud
from shared.executor.reads import cloud_read_router

router = APIRouter()
router.include_router(
    cloud_read_router(
        "compute",
        OpenStackComputeCloud,
        {
            "servers": ComputeCloud.list_servers,
            "flavors": ComputeCloud.list_flavors,
            "images": ComputeCloud.list_images,
            "limits": ComputeCloud.limits,
            "plan-resources": ComputeCloud.plan_resources,
        },
    )
)
# Placement and hypervisors are admin reads: they use their own clouds.yaml entry, when one is given.
router.include_router(
    cloud_read_router(
        "compute",
        OpenStackComputeCloud,
        {"capacity": ComputeCloud.host_capacity},
        cloud_setting="capacity_cloud",
        unset_reason="host capacity (Placement) needs an admin credential; name its clouds.yaml entry there",
        optional=True,
    )
)
