from pathlib import Path

from services.planner.app import create_app
from services.planner.domain import PROBE_TARGETS
from services.planner.handlers import handlers
from services.planner.runs import watch_deadlines
from services.planner.settings import PlannerSettings
from shared.runtime import Runtime, ServiceSpec, run_service
from shared.topics import PLANNER_COMMANDS, PLANNER_EVENTS, commands_topic, events_topic


async def step_deadlines(runtime: Runtime) -> None:
    """Fail steps no service reported on before their deadline, so no run stays in progress forever."""
    settings = runtime.settings
    assert isinstance(settings, PlannerSettings)
    await watch_deadlines(runtime.pool, settings.step_timeout_seconds, settings.timeout_check_seconds)


SPEC = ServiceSpec(
    name="planner",
    settings_cls=PlannerSettings,
    migrations_dir=Path(__file__).parent / "migrations",
    handlers=handlers,
    consumes=[events_topic(d) for d in PROBE_TARGETS],  # probe answers, and step progress from the executors
    owns_topics=[PLANNER_COMMANDS, PLANNER_EVENTS, *(commands_topic(d) for d in PROBE_TARGETS)],
    create_app=create_app,
    background=[step_deadlines],
)


def main() -> None:
    run_service(SPEC)


if __name__ == "__main__":
    main()
