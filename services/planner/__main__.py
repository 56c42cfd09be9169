import asyncio
from pathlib import Path

import structlog

from services.planner.app import create_app
from services.planner.handlers import handlers
from services.planner.probes.domain import PROBE_TARGETS
from services.planner.runs.service import watch_deadlines
from services.planner.runs.trusts import Delegation
from services.planner.settings import PlannerSettings
from shared.runtime import Runtime, ServiceSpec, run_service
from shared.topics import PLANNER_COMMANDS, PLANNER_EVENTS, Lane, commands_topic, events_topic

log = structlog.get_logger(__name__)


async def step_deadlines(runtime: Runtime) -> None:
    """Fail steps no service reported on before their deadline, so no run stays in progress forever, and ask
    again for steps nothing was heard from for a while."""
    settings = runtime.settings
    assert isinstance(settings, PlannerSettings)
    await watch_deadlines(
        runtime.pool, settings.step_timeout_seconds, settings.timeout_check_seconds, settings.step_reask_seconds
    )


async def trust_reaper(runtime: Runtime) -> None:
    """Delete the Keystone trusts of runs that ended, so no delegation outlives its run."""
    settings = runtime.settings
    assert isinstance(settings, PlannerSettings)
    delegation = Delegation(settings, settings.trust_lifetime_hours)
    while True:
        await asyncio.sleep(settings.timeout_check_seconds)
        if not delegation.enabled:  # noauth: runs carry no trust (a background task must not end)
            continue
        try:
            await delegation.revoke_finished(runtime.pool)
        except Exception as exc:  # the database may be briefly away; try again next round
            log.warning("trust.reaper_failed", error=str(exc) or type(exc).__name__)


SPEC = ServiceSpec(
    name="planner",
    settings_cls=PlannerSettings,
    migrations_dir=Path(__file__).parent / "migrations",
    handlers=handlers,
    consumes={
        Lane.CONTROL: [events_topic(d) for d in PROBE_TARGETS],  # step progress from the executors
        Lane.BULK: [events_topic(d, Lane.BULK) for d in PROBE_TARGETS],  # probe answers
    },
    owns_topics=[PLANNER_COMMANDS, PLANNER_EVENTS, *(commands_topic(d, lane) for d in PROBE_TARGETS for lane in Lane)],
    create_app=create_app,
    background=[step_deadlines, trust_reaper],
)


def main() -> None:
    run_service(SPEC)


if __name__ == "__main__":
    main()
