"""StorageCloud against devcloud: every result is checked through openstacksdk directly, by the marks."""

from __future__ import annotations

import uuid
from typing import Any

import openstack
import pytest

from services.storage.cloud import OpenStackStorageCloud, translate
from shared.executor.errors import CloudError
from shared.executor.marks import Owner, StepWork
from tests.fixtures.cloud_helpers import delete_server, http_error
from tests.fixtures.openstack import Cleanup, CloudUnderTest, Progress

pytestmark = pytest.mark.devcloud


@pytest.fixture
def conn(test_cloud: CloudUnderTest) -> Any:
    return test_cloud.connect()


@pytest.fixture
def admin(test_cloud: CloudUnderTest) -> Any:
    return test_cloud.connect(admin=True)


@pytest.fixture
def plan_id() -> str:
    return str(uuid.uuid4())


def _volume_work(plan_id: str, key: str = "volume/data", name: str = "data", size_gb: int = 1) -> StepWork:
    owner = Owner(plan_id, str(uuid.uuid4()), key)
    return StepWork(owner, "volume", "$.volumes[0]", {"name": name, "size_gb": size_gb, "type": None})


def _container_work(plan_id: str, name: str = "assets") -> StepWork:
    owner = Owner(plan_id, str(uuid.uuid4()), f"container/{name}")
    return StepWork(owner, "object_container", "$.object_containers[0]", {"name": name})


def _marked_volumes(conn: Any, plan_id: str, step_key: str) -> list[Any]:
    return [
        v
        for v in conn.block_storage.volumes()
        if (v.metadata or {}).get("dcostack_plan") == plan_id and (v.metadata or {}).get("dcostack_step") == step_key
    ]


def _volume(conn: Any, volume_id: str) -> Any:
    """The volume, or None once deleted (find_volume would list by name, which devcloud's Cinder refuses)."""
    try:
        return conn.block_storage.get_volume(volume_id)
    except openstack.exceptions.NotFoundException:
        return None


def _delete_volume(conn: Any, volume_id: str) -> None:
    conn.block_storage.delete_volume(volume_id, ignore_missing=True)
    volume = _volume(conn, volume_id)
    if volume is not None:
        conn.block_storage.wait_for_delete(volume, wait=120)


def _delete_container(conn: Any, name: str) -> None:
    for obj in conn.object_store.objects(name):
        conn.object_store.delete_object(obj.name, container=name)
    conn.object_store.delete_container(name)


class TestVolume:
    def test_creates_a_marked_available_volume_once_and_destroys_it(
        self, conn: Any, plan_id: str, cleanup: Cleanup
    ) -> None:
        cloud = OpenStackStorageCloud(conn)
        work = _volume_work(plan_id)
        progress = Progress()
        out = cloud.apply(work, progress)
        cleanup.add("volume", lambda: _delete_volume(conn, out["id"]))

        volume = conn.block_storage.get_volume(out["id"])
        assert volume.status == "available" == out["status"]
        assert volume.size == 1 == out["size"]
        assert volume.name == work.owner.name("data")
        assert volume.metadata == work.owner.metadata
        assert progress.messages[-1] == "volume available"

        assert cloud.apply(work, Progress())["id"] == out["id"]
        assert [v.id for v in _marked_volumes(conn, plan_id, "volume/data")] == [out["id"]]
        listed = [v for v in cloud.list_volumes() if v.id == out["id"]]
        assert listed[0].plan_id == plan_id
        assert listed[0].step_key == "volume/data"

        assert cloud.destroy(work, Progress()) is True
        assert _volume(conn, out["id"]) is None
        assert _marked_volumes(conn, plan_id, "volume/data") == []
        assert cloud.destroy(work, Progress()) is False

    def test_a_volume_in_error_is_replaced(self, conn: Any, admin: Any, plan_id: str, cleanup: Cleanup) -> None:
        cloud = OpenStackStorageCloud(conn)
        work = _volume_work(plan_id, "volume/app-0/data", "app-0-data")
        first = cloud.apply(work, Progress())
        cleanup.add("volume", lambda: _delete_volume(conn, first["id"]))
        admin.block_storage.reset_volume_status(first["id"], status="error", attach_status=None, migration_status=None)

        progress = Progress()
        second = cloud.apply(work, progress)
        cleanup.add("volume", lambda: _delete_volume(conn, second["id"]))
        assert second["id"] != first["id"]
        assert any("deleting it to create it again" in m for m in progress.messages)
        assert _volume(conn, first["id"]) is None
        assert [v.id for v in _marked_volumes(conn, plan_id, "volume/app-0/data")] == [second["id"]]
        assert cloud.destroy(work, Progress()) is True

    def test_destroying_an_attached_volume_is_retriable(self, conn: Any, plan_id: str, cleanup: Cleanup) -> None:
        cloud = OpenStackStorageCloud(conn)
        work = _volume_work(plan_id)
        out = cloud.apply(work, Progress())
        cleanup.add("volume", lambda: _delete_volume(conn, out["id"]))
        server = conn.compute.create_server(
            name=work.owner.name("holder"), flavor_id=conn.compute.find_flavor("m1.tiny").id,
            image_id=conn.image.find_image("devcloud-tiny").id, networks="none",
        )  # fmt: skip
        cleanup.add("server", lambda: delete_server(conn, server))
        conn.compute.wait_for_server(server, status="ACTIVE", failures=["ERROR"], wait=120)
        conn.compute.create_volume_attachment(server, out["id"])
        conn.block_storage.wait_for_status(conn.block_storage.get_volume(out["id"]), status="in-use", wait=120)

        with pytest.raises(CloudError) as raised:
            cloud.destroy(work, Progress())
        assert raised.value.retriable is True
        assert server.id in raised.value.message
        assert raised.value.resource_id == out["id"]

        conn.compute.delete_volume_attachment(server, out["id"])
        conn.block_storage.wait_for_status(conn.block_storage.get_volume(out["id"]), status="available", wait=120)
        assert cloud.destroy(work, Progress()) is True
        assert _volume(conn, out["id"]) is None


class TestObjectContainer:
    def test_creates_a_marked_container_once_and_destroys_it_with_its_objects(
        self, conn: Any, plan_id: str, cleanup: Cleanup
    ) -> None:
        cloud = OpenStackStorageCloud(conn)
        work = _container_work(plan_id)
        name = work.owner.name("assets")
        out = cloud.apply(work, Progress())
        cleanup.add("container", lambda: _delete_container(conn, name))
        assert out == {"id": name, "name": name}
        metadata = conn.object_store.get_container_metadata(name).metadata
        assert metadata["dcostack-plan"] == plan_id
        assert metadata["dcostack-step"] == "container/assets"
        assert metadata["dcostack-run"] == work.owner.run_id

        assert cloud.apply(work, Progress()) == out
        assert [c.name for c in conn.object_store.containers(prefix=name)] == [name]
        assert name in {c.name for c in cloud.list_containers()}

        conn.object_store.upload_object(container=name, name="index.html", data=b"<h1>hello</h1>")
        conn.object_store.upload_object(container=name, name="css/site.css", data=b"h1 {}")
        assert cloud.destroy(work, Progress()) is True
        assert list(conn.object_store.containers(prefix=name)) == []
        with pytest.raises(openstack.exceptions.NotFoundException):
            conn.object_store.get_object("index.html", container=name)
        assert cloud.destroy(work, Progress()) is False

    def test_a_name_taken_by_another_container_is_refused(self, conn: Any, plan_id: str, cleanup: Cleanup) -> None:
        cloud = OpenStackStorageCloud(conn)
        work = _container_work(plan_id, "logs")
        name = work.owner.name("logs")
        conn.object_store.create_container(name=name)
        cleanup.add("container", lambda: _delete_container(conn, name))
        with pytest.raises(CloudError) as raised:
            cloud.apply(work, Progress())
        assert name in raised.value.message
        assert raised.value.retriable is False
        assert cloud.destroy(work, Progress()) is False
        assert [c.name for c in conn.object_store.containers(prefix=name)] == [name]


class TestTranslate:
    work = _volume_work("p")

    def test_cinder_quota_keeps_its_message(self) -> None:
        message = "VolumeLimitExceeded: Maximum number of volumes allowed (10) exceeded for quota 'volumes'."
        error = translate(http_error(413, {"overLimit": {"code": 413, "message": message}}), self.work)
        assert error.message == message
        assert error.retriable is False
        assert error.hint == "raise the project's quota or lower the plan's count"

    @pytest.mark.parametrize(
        ("status", "message", "retriable"),
        [
            (500, "Internal Server Error", True),
            (400, "Invalid volume: Volume status must be available or error", True),
            (400, "Invalid input received: size must be an integer", False),
            (404, "Volume type nvme could not be found.", False),
        ],
    )
    def test_status_decides_retriable(self, status: int, message: str, retriable: bool) -> None:
        error = translate(http_error(status, {"badRequest": {"message": message}}), self.work)
        assert (error.message, error.http_status, error.retriable) == (message, status, retriable)
