"""The contract every domain's cloud adapter keeps, run against devcloud: one abstract suite (as
eventsourcing's AggregateRecorderTestCase) that compute's, network's and storage's adapters subclass.

- a re-apply is idempotent: the same outputs, and no second resource in the cloud;
- destroying what is absent returns False (and destroying twice: True, then False);
- a reference to another step's resource that does not exist yet is a retriable CloudError naming that
  step (compute and network; storage's kinds reference no other step);
- the cloud's refusal is a CloudError with the cloud's own words, its HTTP status and a hint, not
  retriable, caused by the SDK's exception.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from typing import Any

import openstack
import pytest

from services.compute.cloud import OpenStackComputeCloud
from services.network.cloud import OpenStackNetworkCloud
from services.storage.cloud import OpenStackStorageCloud
from shared.executor.errors import CloudError
from shared.executor.marks import Owner, StepWork, plan_tag, step_tag
from shared.executor.models import StepAdapter
from tests.fixtures.openstack import Cleanup, CloudUnderTest, Progress

pytestmark = pytest.mark.devcloud


def work(plan_id: str, kind: str, step_key: str, path: str, **params: Any) -> StepWork:
    return StepWork(Owner(plan_id, str(uuid.uuid4()), step_key), kind, path, params)


class CloudAdapterContract(ABC):
    """Subclasses say how to build their adapter, a cheap step of their own, and how to find it."""

    @abstractmethod
    def adapter(self, conn: Any) -> StepAdapter: ...

    @abstractmethod
    def step(self, plan_id: str) -> StepWork:
        """A step that references no other step (so it can be applied alone)."""

    @abstractmethod
    def marked(self, conn: Any, step: StepWork) -> list[str]:
        """The ids of what the cloud holds with the step's marks, found without the adapter."""

    @abstractmethod
    def refused(self, plan_id: str) -> StepWork:
        """A step the cloud refuses (a 4xx for the plan's values)."""

    @pytest.fixture
    def conn(self, test_cloud: CloudUnderTest) -> Any:
        return test_cloud.connect()

    @pytest.fixture
    def plan_id(self) -> str:
        return str(uuid.uuid4())

    @pytest.fixture
    def applied(self, conn: Any, plan_id: str, cleanup: Cleanup) -> tuple[StepWork, dict[str, Any]]:
        step = self.step(plan_id)
        cloud = self.adapter(conn)
        cleanup.add(step.owner.step_key, lambda: cloud.destroy(step, Progress()))
        return step, cloud.apply(step, Progress())

    def test_a_reapply_returns_the_same_resource_and_creates_no_second_one(
        self, conn: Any, applied: tuple[StepWork, dict[str, Any]]
    ) -> None:
        step, first = applied
        again = self.adapter(conn).apply(step, Progress())
        assert again["id"] == first["id"]
        assert self.marked(conn, step) == [first["id"]]

    def test_destroy_deletes_it_once_then_finds_nothing(
        self, conn: Any, applied: tuple[StepWork, dict[str, Any]]
    ) -> None:
        step, _ = applied
        cloud = self.adapter(conn)
        assert cloud.destroy(step, Progress()) is True
        assert self.marked(conn, step) == []
        assert cloud.destroy(step, Progress()) is False

    def test_destroying_what_never_existed_returns_false(self, conn: Any, plan_id: str) -> None:
        assert self.adapter(conn).destroy(self.step(plan_id), Progress()) is False

    def test_the_clouds_refusal_is_translated_with_its_message_and_a_hint(
        self, conn: Any, plan_id: str, cleanup: Cleanup
    ) -> None:
        step = self.refused(plan_id)
        cloud = self.adapter(conn)
        cleanup.add(step.owner.step_key, lambda: cloud.destroy(step, Progress()))
        with pytest.raises(CloudError) as raised:
            cloud.apply(step, Progress())
        error = raised.value
        assert isinstance(error.__cause__, openstack.exceptions.HttpException)
        assert error.http_status is not None
        assert 400 <= error.http_status < 500
        assert error.message
        assert error.hint
        assert error.retriable is False


class ReferencesContract(CloudAdapterContract):
    """For adapters whose steps reference other steps' resources."""

    @abstractmethod
    def dangling(self, plan_id: str) -> tuple[StepWork, str]:
        """A step referencing a step that was never applied, and that step's key."""

    def test_a_missing_reference_is_retriable_and_names_its_step(self, conn: Any, plan_id: str) -> None:
        step, missing = self.dangling(plan_id)
        with pytest.raises(CloudError) as raised:
            self.adapter(conn).apply(step, Progress())
        assert raised.value.retriable is True
        assert missing in str(raised.value)


class TestComputeAdapter(ReferencesContract):
    def adapter(self, conn: Any) -> StepAdapter:
        return OpenStackComputeCloud(conn)

    def step(self, plan_id: str) -> StepWork:
        return work(plan_id, "server_group", "server-group/app", "$.instance_groups[0]", name="app", policy="affinity")

    def marked(self, conn: Any, step: StepWork) -> list[str]:
        name = step.owner.name("group-app")
        return [g.id for g in conn.compute.server_groups() if g.name == name]

    def refused(self, plan_id: str) -> StepWork:
        return work(plan_id, "server_group", "server-group/bad", "$.instance_groups[1]", name="bad", policy="scatter")

    def dangling(self, plan_id: str) -> tuple[StepWork, str]:
        step = work(
            plan_id,
            "volume_attachment",
            "volume-attachment/web-0/data",
            "$.instance_groups[0].volumes[0]",
            server="web-0",
            volume="data",
        )
        return step, "server/web-0"


class TestNetworkAdapter(ReferencesContract):
    def adapter(self, conn: Any) -> StepAdapter:
        return OpenStackNetworkCloud(conn)

    def step(self, plan_id: str) -> StepWork:
        return work(plan_id, "network", "network/web-net", "$.networks[0]", name="web-net")

    def marked(self, conn: Any, step: StepWork) -> list[str]:
        tags = ",".join([plan_tag(step.owner.plan_id), step_tag(step.owner.step_key)])
        return [n.id for n in conn.network.networks(tags=tags)]

    def refused(self, plan_id: str) -> StepWork:
        # Neutron refuses a name longer than 255 characters
        return work(plan_id, "network", "network/long", "$.networks[1]", name="n" * 300)

    def dangling(self, plan_id: str) -> tuple[StepWork, str]:
        step = work(plan_id, "subnet", "subnet/app-net", "$.networks[1].subnet", network="app-net", cidr="10.9.0.0/24")
        return step, "network/app-net"


class TestStorageAdapter(CloudAdapterContract):
    def adapter(self, conn: Any) -> StepAdapter:
        return OpenStackStorageCloud(conn)

    def step(self, plan_id: str) -> StepWork:
        return work(plan_id, "object_container", "container/assets", "$.object_containers[0]", name="assets")

    def marked(self, conn: Any, step: StepWork) -> list[str]:
        name = step.owner.name("assets")
        return [c.name for c in conn.object_store.containers(prefix=name) if c.name == name]

    def refused(self, plan_id: str) -> StepWork:
        return work(
            plan_id, "volume", "volume/data", "$.volumes[0]", name="data", size_gb=1, type="no-such-volume-type"
        )
