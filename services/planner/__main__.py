from pathlib import Path

from services.planner.app import create_app
from services.planner.domain import PROBE_TARGETS
from services.planner.handlers import handlers
from services.planner.settings import PlannerSettings
from shared.runtime import ServiceSpec, run_service
from shared.topics import PLANNER_COMMANDS, PLANNER_EVENTS, commands_topic, events_topic

SPEC = ServiceSpec(
    name="planner",
    settings_cls=PlannerSettings,
    migrations_dir=Path(__file__).parent / "migrations",
    handlers=handlers,
    consumes=[events_topic(d) for d in PROBE_TARGETS],
    owns_topics=[PLANNER_COMMANDS, PLANNER_EVENTS, *(commands_topic(d) for d in PROBE_TARGETS)],
    create_app=create_app,
)


def main() -> None:
    run_service(SPEC)


if __name__ == "__main__":
    main()
