"""Nova's fake virt driver with node identities that survive a restart of nova-compute.

Runs inside devcloud's OpenStack virtualenv (``compute_driver = devcloud_virt.StableFakeDriver``).
``nova.virt.fake.FakeDriver`` draws its node UUIDs from a per-process sentinel, so a restarted fake
compute claims a new node and Nova refuses to start it ("Duplicate compute node record"). Here the
UUID is derived from the host name, and devcloud writes the same UUID to ``state_path/compute_id``.
Servers themselves live in the driver's memory: after a compute restart Nova finds them gone.
"""

from __future__ import annotations

import uuid

from nova.virt import fake

NAMESPACE = uuid.UUID("5b0f4cf4-3a8c-4f0e-9d55-6a1d2f1c0d11")


def node_uuid(nodename: str) -> str:
    return str(uuid.uuid5(NAMESPACE, nodename))


class StableFakeDriver(fake.FakeDriver):
    def get_available_resource(self, nodename):
        resources = super().get_available_resource(nodename)
        resources["uuid"] = node_uuid(nodename)
        return resources

    def get_nodenames_by_uuid(self, refresh=False):
        return {node_uuid(name): name for name in self.get_available_nodes(refresh=refresh)}
