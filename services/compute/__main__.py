from pathlib import Path

from services.compute.app import create_app
from services.compute.cloud import OpenStackComputeCloud
from services.compute.handlers import handlers
from services.compute.settings import ComputeSettings
from shared.executor.workers import step_workers
from shared.runtime import ServiceSpec, run_service
from shared.topics import Lane, commands_topic, events_topic

SPEC = ServiceSpec(
    name="compute",
    settings_cls=ComputeSettings,
    migrations_dir=Path(__file__).parent / "migrations",
    handlers=handlers,
    consumes={Lane.CONTROL: [commands_topic("compute")], Lane.BULK: [commands_topic("compute", Lane.BULK)]},
    owns_topics=[*(topic("compute", lane) for lane in Lane for topic in (commands_topic, events_topic))],
    create_app=create_app,
    background=[step_workers("compute", OpenStackComputeCloud)],
)


def main() -> None:
    run_service(SPEC)


if __name__ == "__main__":
    main()
