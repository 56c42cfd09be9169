from pathlib import Path

from services.network.app import create_app
from services.network.cloud import OpenStackNetworkCloud
from services.network.handlers import handlers
from services.network.settings import NetworkSettings
from shared.executor.workers import step_workers
from shared.runtime import ServiceSpec, run_service
from shared.topics import Lane, commands_topic, events_topic

SPEC = ServiceSpec(
    name="network",
    settings_cls=NetworkSettings,
    migrations_dir=Path(__file__).parent / "migrations",
    handlers=handlers,
    consumes={Lane.CONTROL: [commands_topic("network")], Lane.BULK: [commands_topic("network", Lane.BULK)]},
    owns_topics=[*(topic("network", lane) for lane in Lane for topic in (commands_topic, events_topic))],
    create_app=create_app,
    background=[step_workers("network", OpenStackNetworkCloud)],
)


def main() -> None:
    run_service(SPEC)


if __name__ == "__main__":
    main()
