"""How a domain service works on accepted steps until they are done (see accept.py for how they are
accepted).

Workers claim operations with a lease, run the cloud adapter in a thread, and finish each one in a
transaction that marks it done, records how it ended, and writes the StepProgressedV1 event to the outbox.
A killed service leaves leases that expire: the restarted one (or another replica) claims the operation
again, and the adapter's lookup by marks finds what the first attempt created, so nothing is created
twice. Retriable cloud errors are retried with exponential backoff until the step's deadline; every
transition is reported as an event.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, cast

import asyncpg

from shared.bus import make_outbox_row, write_outbox
from shared.bus.outbox import OutboxRow
from shared.config import AuthStrategy, CloudExecutorSettings
from shared.executor import repository
from shared.executor.credentials import TRUST_CACHE_SIZE, StepCredentials, TrustedExecutor
from shared.executor.errors import CloudError
from shared.executor.marks import Owner, StepWork
from shared.executor.models import Progress, StepAdapter, step_progressed
from shared.logging import get_logger
from shared.topics import events_topic

if TYPE_CHECKING:
    from shared.runtime import Runtime

log = get_logger(__name__)


class OperationWorkers:
    """Runs accepted operations with bounded concurrency; crash-safe through leases."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        service: str,
        schema: str,
        executor: Callable[[str | None], StepAdapter],
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
        # not shared between threads. Created on demand for an operation's trust (None: the service's
        # own cloud), reused afterwards only for the same trust; the least recently used trusts' idle
        # connections are dropped beyond TRUST_CACHE_SIZE.
        self._idle: OrderedDict[str | None, list[StepAdapter]] = OrderedDict()
        self._idle_lock = threading.Lock()
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
        return await repository.claim(self.pool, limit, self.lease)

    async def _execute(self, op: asyncpg.Record) -> None:
        work = StepWork(
            owner=Owner(plan_id=str(op["plan_id"]), run_id=str(op["run_id"]), step_key=op["step_key"]),
            kind=op["kind"],
            path=op["path"],
            params=json.loads(op["params"]),
        )
        loop = asyncio.get_running_loop()
        last = {"message": op["last_message"]}
        reports: list[concurrent.futures.Future[None]] = []

        def progress(message: str) -> None:  # called from the adapter's thread
            last["message"] = message
            reports.append(asyncio.run_coroutine_threadsafe(self._report(op, message), loop))

        async def reported() -> None:
            """Every progress report the adapter made is written before the operation's final event, so
            no ``running`` can follow ``succeeded``/``failed`` on the events topic."""
            await asyncio.gather(*(asyncio.wrap_future(f) for f in list(reports)), return_exceptions=True)

        heartbeat = asyncio.create_task(self._heartbeat(op["id"]))
        try:
            remaining = (op["deadline"] - datetime.now(UTC)).total_seconds()
            if remaining <= 0:
                raise TimeoutError
            async with asyncio.timeout(remaining):
                result = await asyncio.to_thread(self._call, op["action"], work, progress, op["trust_id"])
            await reported()
        except TimeoutError:
            seen = last["message"] or "nothing reported yet"
            error = CloudError(
                f"{op['action']} of {op['step_key']} did not finish before its deadline; last seen: {seen}",
                hint="the cloud may be slow or stuck; raise the step timeout or check the service's logs",
            )
            await self._finish(op, "failed", error.message, error=error.to_event())
        except CloudError as exc:
            await reported()
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

    def _call(self, action: str, work: StepWork, progress: Progress, trust_id: str | None) -> dict[str, Any] | bool:
        with self._idle_lock:
            idle = self._idle.get(trust_id)
            executor = idle.pop() if idle else None
        if executor is None:
            executor = self.new_executor(trust_id)  # raises CloudError when the credential is missing
        try:
            return executor.apply(work, progress) if action == "apply" else executor.destroy(work, progress)
        finally:
            self.release(executor, trust_id)

    def release(self, executor: StepAdapter, trust_id: str | None = None) -> None:
        """Keep ``executor`` (and its cloud connection) for the next operation of the same trust."""
        with self._idle_lock:
            self._idle.setdefault(trust_id, []).append(executor)
            self._idle.move_to_end(trust_id)
            while len(self._idle) > TRUST_CACHE_SIZE:
                self._idle.popitem(last=False)

    async def _heartbeat(self, op_id: int) -> None:
        while True:
            await asyncio.sleep(self.lease.total_seconds() / 3)
            await repository.extend_lease(self.pool, op_id, self.lease)

    def _event(
        self,
        op: asyncpg.Record,
        state: Literal["running", "succeeded", "failed"],
        message: str,
        outputs: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> OutboxRow:
        return make_outbox_row(
            step_progressed(op, self.service, state, message, outputs=outputs, error=error),
            source=self.source,
            topic=events_topic(self.service),
            key=str(op["run_id"]),
            subject=op["step_key"],
            correlation_id=op["correlation_id"],
            project_id=op["project_id"],
        )

    async def _report(self, op: asyncpg.Record, message: str) -> None:
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await repository.record_message(conn, op["id"], message)
                await write_outbox(conn, [self._event(op, "running", message)])
        except Exception as exc:  # progress is best effort; the final event is not
            log.warning("operation.progress_not_recorded", step=op["step_key"], error=str(exc))

    async def _retry_later(self, op: asyncpg.Record, delay: float, message: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await repository.retry_later(conn, op["id"], delay, message)
            await write_outbox(conn, [self._event(op, "running", message)])

    async def _finish(
        self,
        op: asyncpg.Record,
        outcome: Literal["succeeded", "failed"],
        message: str,
        *,
        outputs: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await repository.finish(conn, op["id"], outcome, message, outputs, error)
            await write_outbox(conn, [self._event(op, outcome, message, outputs, error)])
        log.info("operation.finished", step=op["step_key"], action=op["action"], state=outcome, tries=op["tries"])


def step_workers(service: str, adapter: Callable[[Any], StepAdapter]) -> Callable[[Runtime], Any]:
    """The background task of an executing service: workers acting in the cloud through each run's
    trust, or (noauth) in the cloud its settings name."""

    async def step_workers(runtime: Runtime) -> None:
        settings = cast(CloudExecutorSettings, runtime.settings)
        credentials = StepCredentials(settings)

        def new_executor(trust_id: str | None) -> StepAdapter:
            from openstack.connection import Connection

            # Connections are not shared between threads, but those of one trust (or of the service's
            # own cloud) share one cloud configuration and so one keystoneauth session: one token.
            region = credentials.region(trust_id)
            if trust_id is None:
                return adapter(Connection(config=region))
            return TrustedExecutor(adapter(Connection(config=region)), region, trust_id, credentials.forget)

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
                executor = new_executor(None)
                credentials.own().get_session().get_token()
                workers.release(executor)
            except Exception as exc:  # not reachable yet: the first step connects (and reports) itself
                log.warning("cloud.warm_up_failed", cloud=settings.cloud, error=str(exc) or type(exc).__name__)

        # With Keystone every step acts through its run's trust: the service's own cloud is not used.
        warming = (
            asyncio.create_task(asyncio.to_thread(warm)) if settings.auth_strategy == AuthStrategy.NOAUTH else None
        )
        try:
            await workers.run()
        finally:
            if warming is not None:
                warming.cancel()

    return step_workers
