from pathlib import Path

from services.network.app import create_app
from services.network.cloud import OpenStackNetworkCloud
from services.network.handlers import handlers
from services.network.settings import NetworkSettings
from shared.executor.workers import step_workers
from shared.runtime import ServiceSpec, run_service
from shared.topics import commands_topic, events_topic

SPEC = ServiceSpec(
    name="network",
    settings_cls=NetworkSettings,
    migrations_dir=Path(__file__).parent / "migrations",
    handlers=handlers,
    consumes=[commands_topic("network")],
    owns_topics=[commands_topic("network"), events_topic("network")],
    create_app=create_app,
    background=[step_workers("network", OpenStackNetworkCloud)],
)


def main() -> None:
    run_service(SPEC)


if __name__ == "__main__":
    main()
