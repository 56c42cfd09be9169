from pathlib import Path

from services.monitor.app import create_app
from services.monitor.handlers import handlers
from services.monitor.settings import MonitorSettings
from shared.runtime import ServiceSpec, run_service
from shared.topics import commands_topic, events_topic

SPEC = ServiceSpec(
    name="monitor",
    settings_cls=MonitorSettings,
    migrations_dir=Path(__file__).parent / "migrations",
    handlers=handlers,
    consumes=[commands_topic("monitor")],
    owns_topics=[commands_topic("monitor"), events_topic("monitor")],
    create_app=create_app,
)


def main() -> None:
    run_service(SPEC)


if __name__ == "__main__":
    main()
