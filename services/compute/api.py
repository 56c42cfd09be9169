"""Compute HTTP API: what the service owns in the cloud, read from Nova and Glance."""

from __future__ import annotations

from services.compute.cloud import ComputeCloud
from shared.cloud_api import cloud_read_router

router = cloud_read_router(
    "compute", ComputeCloud, {"servers": "list_servers", "flavors": "list_flavors", "images": "list_images"}
)
