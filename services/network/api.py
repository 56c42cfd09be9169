"""Network HTTP API: what the service owns in the cloud, read from Neutron and Octavia."""

from __future__ import annotations

from services.network.cloud import NetworkCloud
from shared.executor.reads import cloud_read_router

router = cloud_read_router(
    "network",
    NetworkCloud,
    {
        "networks": "list_networks",
        "routers": "list_routers",
        "security-groups": "list_security_groups",
        "floating-ips": "list_floating_ips",
        "load-balancers": "list_load_balancers",
        "quota": "quota",
        "external-networks": "external_networks",
        "plan-resources": "plan_resources",
    },
)
