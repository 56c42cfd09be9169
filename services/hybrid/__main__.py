from pathlib import Path

from services.hybrid.app import create_app
from services.hybrid.handlers import handlers
from services.hybrid.settings import HybridSettings
from shared.runtime import ServiceSpec, run_service
from shared.topics import commands_topic, events_topic

SPEC = ServiceSpec(
    name="hybrid",
    settings_cls=HybridSettings,
    migrations_dir=Path(__file__).parent / "migrations",
    handlers=handlers,
    consumes=[commands_topic("hybrid")],
    owns_topics=[commands_topic("hybrid"), events_topic("hybrid")],
    create_app=create_app,
)


def main() -> None:
    run_service(SPEC)


if __name__ == "__main__":
    main()
