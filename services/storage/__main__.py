from pathlib import Path

from services.storage.app import create_app
from services.storage.cloud import OpenStackStorageCloud
from services.storage.handlers import handlers
from services.storage.settings import StorageSettings
from shared.executor.workers import step_workers
from shared.runtime import ServiceSpec, run_service
from shared.topics import Lane, commands_topic, events_topic

SPEC = ServiceSpec(
    name="storage",
    settings_cls=StorageSettings,
    migrations_dir=Path(__file__).parent / "migrations",
    handlers=handlers,
    consumes={Lane.CONTROL: [commands_topic("storage")], Lane.BULK: [commands_topic("storage", Lane.BULK)]},
    owns_topics=[*(topic("storage", lane) for lane in Lane for topic in (commands_topic, events_topic))],
    create_app=create_app,
    background=[step_workers("storage", OpenStackStorageCloud)],
)


def main() -> None:
    run_service(SPEC)


if __name__ == "__main__":
    main()
