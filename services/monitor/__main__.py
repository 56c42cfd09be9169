from pathlib import Path

from services.monitor.app import create_app
from services.monitor.handlers import handlers
from services.monitor.settings import MonitorSettings
from shared.runtime import ServiceSpec, run_service
from shared.topics import Lane, commands_topic, events_topic

SPEC = ServiceSpec(
    name="monitor",
    settings_cls=MonitorSettings,
    migrations_dir=Path(__file__).parent / "migrations",
    handlers=handlers,
    consumes={Lane.CONTROL: [commands_topic("monitor")], Lane.BULK: [commands_topic("monitor", Lane.BULK)]},
    owns_topics=[*(topic("monitor", lane) for lane in Lane for topic in (commands_topic, events_topic))],
    create_app=create_app,
)


def main() -> None:
    run_service(SPEC)


if __name__ == "__main__":
    main()
