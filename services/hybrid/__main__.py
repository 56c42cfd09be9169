from pathlib import Path

from services.hybrid.app import create_app
from services.hybrid.handlers import handlers
from services.hybrid.settings import HybridSettings
from shared.runtime import ServiceSpec, run_service
from shared.topics import Lane, commands_topic, events_topic

SPEC = ServiceSpec(
    name="hybrid",
    settings_cls=HybridSettings,
    migrations_dir=Path(__file__).parent / "migrations",
    handlers=handlers,
    consumes={Lane.CONTROL: [commands_topic("hybrid")], Lane.BULK: [commands_topic("hybrid", Lane.BULK)]},
    owns_topics=[*(topic("hybrid", lane) for lane in Lane for topic in (commands_topic, events_topic))],
    create_app=create_app,
)


def main() -> None:
    run_service(SPEC)


if __name__ == "__main__":
    main()
