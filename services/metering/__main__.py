from pathlib import Path

from services.metering.app import create_app
from services.metering.handlers import handlers
from services.metering.settings import MeteringSettings
from shared.runtime import ServiceSpec, run_service
from shared.topics import Lane, commands_topic, events_topic

SPEC = ServiceSpec(
    name="metering",
    settings_cls=MeteringSettings,
    migrations_dir=Path(__file__).parent / "migrations",
    handlers=handlers,
    consumes={Lane.CONTROL: [commands_topic("metering")], Lane.BULK: [commands_topic("metering", Lane.BULK)]},
    owns_topics=[*(topic("metering", lane) for lane in Lane for topic in (commands_topic, events_topic))],
    create_app=create_app,
)


def main() -> None:
    run_service(SPEC)


if __name__ == "__main__":
    main()
