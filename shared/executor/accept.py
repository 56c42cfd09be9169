"""How a domain service accepts plan steps: the command handler.

The handler only records the command as an *operation*, in the same transaction as the inbox row, so a
redelivered command is a no-op; workers (workers.py) do the work. A command asked again with the same
dispatch id (the planner heard nothing for a while: the broker may have lost the command or the progress
event) is answered, in the same transaction, with the operation's latest progress: its final
StepProgressedV1 with the same outputs or error when it is done, ``running`` with what it last saw
otherwise. The operation itself is never run twice.
"""

from __future__ import annotations

from shared.bus.handlers import HandlerContext, HandlerRegistry
from shared.events.steps import ApplyStepV1, ApplyStepV2, DestroyStepV1, DestroyStepV2
from shared.executor import repository
from shared.executor.models import latest_progress
from shared.logging import get_logger
from shared.topics import events_topic

log = get_logger(__name__)


async def accept(
    cmd: ApplyStepV1 | DestroyStepV1 | ApplyStepV2 | DestroyStepV2, ctx: HandlerContext, action: str, service: str
) -> None:
    """Record ``cmd`` as an operation, or answer it again when its dispatch id is known."""
    if await repository.insert(ctx.tx, cmd, action, ctx.envelope.correlation_id, ctx.envelope.project_id):
        return
    op = await repository.by_dispatch(ctx.tx, cmd.dispatch_id)
    if op is None:  # unreachable: the conflicting row is visible to this transaction
        raise RuntimeError(f"operation of dispatch {cmd.dispatch_id} conflicts but cannot be read")
    if (op["action"], op["step_key"]) != (action, cmd.step_key):
        log.warning(
            "operation.reask_mismatch",
            dispatch_id=str(cmd.dispatch_id),
            known=f"{op['action']} {op['step_key']}",
            asked=f"{action} {cmd.step_key}",
        )
    progress = latest_progress(op, service)
    ctx.publish(progress, topic=events_topic(service), key=str(op["run_id"]), subject=op["step_key"])
    log.info("operation.asked_again", step=op["step_key"], dispatch_id=str(cmd.dispatch_id), state=progress.state)


def register_step_handlers(handlers: HandlerRegistry, service: str) -> None:
    """Accept apply/destroy step commands as operations (idempotent by dispatch id). V2 carries typed
    params (shared/events/kinds.py); V1 stays accepted until nothing sends it."""

    @handlers.handles(ApplyStepV1)
    async def apply_step(cmd: ApplyStepV1, ctx: HandlerContext) -> None:
        await accept(cmd, ctx, "apply", service)

    @handlers.handles(DestroyStepV1)
    async def destroy_step(cmd: DestroyStepV1, ctx: HandlerContext) -> None:
        await accept(cmd, ctx, "destroy", service)

    @handlers.handles(ApplyStepV2)
    async def apply_step_v2(cmd: ApplyStepV2, ctx: HandlerContext) -> None:
        await accept(cmd, ctx, "apply", service)

    @handlers.handles(DestroyStepV2)
    async def destroy_step_v2(cmd: DestroyStepV2, ctx: HandlerContext) -> None:
        await accept(cmd, ctx, "destroy", service)
