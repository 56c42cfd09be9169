"""Network HTTP API: what the service owns in the cloud, read from Neutron and Octavia."""

from __future__ import annotations

from services.network.cloud import NetworkCloud, OpenStackNetworkCloud
from shared.executor.reads import cloud_read_router

router = cloud_read_router(
    "network",
    OpenStackNetworkCloud,
    {
        "networks": NetworkCloud.list_networks,
        "routers": NetworkCloud.list_routers,
        "security-groups": NetworkCloud.list_security_groups,
        "floating-ips": NetworkCloud.list_floating_ips,
        "load-balancers": NetworkCloud.list_load_balancers,
        "quota": NetworkCloud.quota,
        "external-networks": NetworkCloud.external_networks,
        "plan-resources": NetworkCloud.plan_resources,
    },
)
