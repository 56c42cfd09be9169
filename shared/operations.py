"""How a domain service executes plan steps: accept the command, then work on it until it is done.

The consumer's handler only records the command as an *operation* (in the same transaction as the
inbox row, so a redelivered command is a no-op). Workers claim operations with a lease, run the cloud
adapter in a thread, and finish each one in a transaction that marks it done and writes the
StepProgressedV1 event to the outbox. A killed service leaves leases that expire: the restarted one
(or another replica) claims the operation again, and the adapter's lookup by marks finds what the
first attempt created, so nothing is created twice. Retriable cloud errors are retried with
exponential backoff until the step's deadline; every transition is reported as an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, cast

import asyncpg

from shared.bus import make_outbox_row, write_outbox
from shared.bus.handlers import HandlerContext, HandlerRegistry
from shared.cloud import CloudError, Owner, StepWork
from shared.config import CloudExecutorSettings
from shared.events.steps import ApplyStepV1, DestroyStepV1, StepProgressedV1
from shared.logging import get_logger
from shared.topics import events_topic

if TYPE_CHECKING:
    from shared.runtime import Runtime

log = get_logger(__name__)

Progress = Callable[[str], None]


class Executor(Protocol):
    """A domain's cloud adapter: synchronous, idempotent by the marks in shared.cloud."""

    def apply(self, work: StepWork, progress: Progress) -> dict[str, Any]: ...

    def destroy(self, work: StepWork, progress: Progress) -> bool: ...


def register_step_handlers(handlers: HandlerRegistry) -> None:
    """Accept ApplyStepV1 / DestroyStepV1 commands as operations (idempotent by dispatch id)."""

    async def accept(cmd: ApplyStepV1 | DestroyStepV1, ctx: HandlerContext, action: str) -> None:
        await ctx.tx.execute(
            """INSERT INTO operations (dispatch_id, action, run_id, plan_id, step_key, kind, path, params,
                                       deadline, correlation_id, project_id)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() + make_interval(secs => $9), $10, $11)
               ON CONFLICT (dispatch_id) DO NOTHING""",
            cmd.dispatch_id,
            action,
            cmd.run_id,
            cmd.plan_id,
            cmd.step_key,
            cmd.kind,
            cmd.path,
            json.dumps(cmd.params),
            cmd.timeout_seconds,
            ctx.envelope.correlation_id,
            ctx.envelope.project_id,
        )

    @handlers.handles(ApplyStepV1)
    async def apply_step(cmd: ApplyStepV1, ctx: HandlerContext) -> None:
        await accept(cmd, ctx, "apply")

    @handlers.handles(DestroyStepV1)
    async def destroy_step(cmd: DestroyStepV1, ctx: HandlerContext) -> None:
        await accept(cmd, ctx, "destroy")


class OperationWorkers:
    """Runs accepted operations with bounded concurrency; crash-safe through leases."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        service: str,
        schema: str,
        executor: Callable[[], Executor],
        concurrency: int = 32,
        lease_seconds: float = 20.0,
        backoff_seconds: float = 1.0,
        backoff_max_seconds: float = 30.0,
        max_tries: int = 8,
    ) -> None:
        self.pool = pool
        self.service = service
        self.schema = schema
        self.new_executor = executor
        # One adapter (and cloud connection) per concurrent operation: openstacksdk connections are
        # not shared between threads. Created on demand, reused afterwards.
        self._idle: list[Executor] = []
        self.concurrency = concurrency
        self.lease = timedelta(seconds=lease_seconds)
        self.backoff = backoff_seconds
        self.backoff_max = backoff_max_seconds
        self.max_tries = max_tries
        self.source = f"/dcostack/{service}"
        self._wake = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()

    def wake(self, *_: object) -> None:
        self._wake.set()

    async def run(self) -> None:
        async with self.pool.acquire() as listener:
            await listener.add_listener(f"{self.schema}_operations", self.wake)
            try:
                while True:
                    free = self.concurrency - len(self._running)
                    claimed = await self._claim(free) if free > 0 else []
                    for op in claimed:
                        task = asyncio.create_task(self._execute(op), name=f"{self.service}-op-{op['id']}")
                        self._running.add(task)
                        task.add_done_callback(self._done)
                    if not claimed:
                        self._wake.clear()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._wake.wait(), timeout=0.5)
            finally:
                for task in self._running:
                    task.cancel()
                await asyncio.gather(*self._running, return_exceptions=True)
                with contextlib.suppress(Exception):
                    await listener.remove_listener(f"{self.schema}_operations", self.wake)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self.wake()
        if not task.cancelled() and task.exception() is not None:
            log.error("operation.crashed", task=task.get_name(), error=repr(task.exception()))

    async def _claim(self, limit: int) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self.pool.fetch(
            """UPDATE operations SET state = 'running', tries = tries + 1,
                      lease_until = now() + $2::interval, updated_at = now()
               WHERE id IN (SELECT id FROM operations
                            WHERE (state = 'pending' AND not_before <= now())
                               OR (state = 'running' AND lease_until < now())
                            ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
               RETURNING *""",
            limit,
            self.lease,
        )
        return rows

    async def _execute(self, op: asyncpg.Record) -> None:
        work = StepWork(
            owner=Owner(plan_id=str(op["plan_id"]), run_id=str(op["run_id"]), step_key=op["step_key"]),
            kind=op["kind"],
            path=op["path"],
            params=json.loads(op["params"]),
        )
        loop = asyncio.get_running_loop()
        last = {"message": op["last_message"]}

        def progress(message: str) -> None:  # called from the adapter's thread
            last["message"] = message
            asyncio.run_coroutine_threadsafe(self._report(op, "running", message), loop)

        heartbeat = asyncio.create_task(self._heartbeat(op["id"]))
        try:
            remaining = (op["deadline"] - datetime.now(UTC)).total_seconds()
            if remaining <= 0:
                raise TimeoutError
            async with asyncio.timeout(remaining):
                result = await asyncio.to_thread(self._call, op["action"], work, progress)
        except TimeoutError:
            seen = last["message"] or "nothing reported yet"
            error = CloudError(
                f"{op['action']} of {op['step_key']} did not finish before its deadline; last seen: {seen}",
                hint="the cloud may be slow or stuck; raise the step timeout or check the service's logs",
            )
            await self._finish(op, "failed", error.message, error=error.to_event())
        except CloudError as exc:
            if exc.retriable and op["tries"] < self.max_tries and datetime.now(UTC) < op["deadline"]:
                delay = min(self.backoff * 2 ** (op["tries"] - 1), self.backoff_max)
                await self._retry_later(op, delay, f"retrying in {delay:.0f}s: {exc.message}")
            else:
                await self._finish(op, "failed", exc.message, error=exc.to_event())
        except Exception as exc:  # an adapter bug: report it, do not loop on it
            log.exception("operation.failed_unexpectedly", step=op["step_key"])
            error = CloudError(f"{type(exc).__name__}: {exc}", hint="an internal error; see the service's log")
            await self._finish(op, "failed", error.message, error=error.to_event())
        else:
            outputs = result if isinstance(result, dict) else {"deleted": bool(result)}
            await self._finish(op, "succeeded", f"{op['action']} done", outputs=outputs)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    def _call(self, action: str, work: StepWork, progress: Progress) -> dict[str, Any] | bool:
        executor = self._idle.pop() if self._idle else self.new_executor()
        try:
            return executor.apply(work, progress) if action == "apply" else executor.destroy(work, progress)
        finally:
            self.release(executor)

    def release(self, executor: Executor) -> None:
        """Keep ``executor`` (and its cloud connection) for the next operation."""
        self._idle.append(executor)

    async def _heartbeat(self, op_id: int) -> None:
        while True:
            await asyncio.sleep(self.lease.total_seconds() / 3)
            await self.pool.execute(
                "UPDATE operations SET lease_until = now() + $2::interval WHERE id = $1 AND state = 'running'",
                op_id,
                self.lease,
            )

    def _event(self, op: asyncpg.Record, state: str, message: str, **extra: Any) -> Any:
        data = StepProgressedV1(
            dispatch_id=op["dispatch_id"],
            run_id=op["run_id"],
            step_key=op["step_key"],
            service=self.service,
            state=state,
            message=message[:2000],
            at=datetime.now(UTC),
            **extra,
        )
        return make_outbox_row(
            data,
            source=self.source,
            topic=events_topic(self.service),
            key=str(op["run_id"]),
            subject=op["step_key"],
            correlation_id=op["correlation_id"],
            project_id=op["project_id"],
        )

    async def _report(self, op: asyncpg.Record, state: str, message: str) -> None:
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "UPDATE operations SET last_message = $2, updated_at = now() WHERE id = $1", op["id"], message
                )
                await write_outbox(conn, [self._event(op, state, message)])
        except Exception as exc:  # progress is best effort; the final event is not
            log.warning("operation.progress_not_recorded", step=op["step_key"], error=str(exc))

    async def _retry_later(self, op: asyncpg.Record, delay: float, message: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """UPDATE operations SET state = 'pending', lease_until = NULL, last_message = $3,
                          not_before = now() + make_interval(secs => $2), updated_at = now()
                   WHERE id = $1""",
                op["id"],
                delay,
                message,
            )
            await write_outbox(conn, [self._event(op, "running", message)])

    async def _finish(self, op: asyncpg.Record, state: str, message: str, **extra: Any) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE operations SET state = 'done', lease_until = NULL, last_message = $2, updated_at = now() "
                "WHERE id = $1",
                op["id"],
                message,
            )
            await write_outbox(conn, [self._event(op, state, message, **extra)])
        log.info("operation.finished", step=op["step_key"], action=op["action"], state=state, tries=op["tries"])


def step_workers(service: str, adapter: Callable[[Any], Executor]) -> Callable[[Runtime], Any]:
    """The background task of an executing service: workers acting in the cloud its settings name."""

    async def step_workers(runtime: Runtime) -> None:
        settings = cast(CloudExecutorSettings, runtime.settings)
        region: list[Any] = []
        lock = threading.Lock()

        def new_executor() -> Executor:
            import openstack
            from openstack.connection import Connection

            # Connections are not shared between threads, but they share one cloud configuration and
            # so one keystoneauth session: one token and one endpoint discovery for all of them.
            with lock:
                if not region:
                    region.append(openstack.config.get_cloud_region(cloud=settings.cloud))
            return adapter(Connection(config=region[0]))

        workers = OperationWorkers(
            runtime.pool,
            service=service,
            schema=settings.db_schema,
            executor=new_executor,
            concurrency=settings.cloud_concurrency,
            lease_seconds=settings.operation_lease_seconds,
            backoff_seconds=settings.step_retry_backoff_seconds,
            max_tries=settings.step_max_tries,
        )

        def warm() -> None:
            """Authenticate before the first command arrives, so that its step does not wait for Keystone."""
            try:
                executor = new_executor()
                region[0].get_session().get_token()
                workers.release(executor)
            except Exception as exc:  # not reachable yet: the first step connects (and reports) itself
                log.warning("cloud.warm_up_failed", cloud=settings.cloud, error=str(exc) or type(exc).__name__)

        warming = asyncio.create_task(asyncio.to_thread(warm))
        try:
            await workers.run()
        finally:
            warming.cancel()

    return step_workers
