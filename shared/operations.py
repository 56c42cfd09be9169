"""How a domain service executes plan steps: accept the command, then work on it until it is done.

The consumer's handler only records the command as an *operation* (in the same transaction as the
inbox row, so a redelivered command is a no-op). Workers claim operations with a lease, run the cloud
adapter in a thread, and finish each one in a transaction that marks it done and writes the
StepProgressedV1 event to the outbox. A killed service leaves leases that expire: the restarted one
(or another replica) claims the operation again, and the adapter's lookup by marks finds what the
first attempt created, so nothing is created twice. Retriable cloud errors are retried with
exponential backoff until the step's deadline; every transition is reported as an event.

Whose credentials act: a command carries the run's Keystone *trust* (the user who started the run
delegated their roles in their project to DCOSTACK's service user, ``DCOSTACK_SERVICE_CLOUD``), and
the step is executed as that service user scoped to the trust, as Heat does. Connections are kept
per trust, so every step of a run shares one trust-scoped token and a connection of one trust never
serves another. A command without a trust acts with the service's own ``DCOSTACK_CLOUD`` entry,
which only a noauth deployment allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, cast

import asyncpg

from shared.bus import make_outbox_row, write_outbox
from shared.bus.handlers import HandlerContext, HandlerRegistry
from shared.cloud import CloudError, Owner, StepWork
from shared.config import AuthStrategy, CloudExecutorSettings
from shared.events.steps import ApplyStepV1, DestroyStepV1, StepProgressedV1
from shared.logging import get_logger
from shared.topics import events_topic
from shared.trusts import trust_auth, user_auth

if TYPE_CHECKING:
    from shared.runtime import Runtime

log = get_logger(__name__)

Progress = Callable[[str], None]

#: How many trusts' cloud sessions (and idle connections) a service keeps: one per run in flight.
TRUST_CACHE_SIZE = 256
NO_TRUST_HINT = "start runs through the planner API with a Keystone token"
TRUST_REFUSED_HINT = "the run's trust was deleted or expired; resume the run to delegate again"


class Executor(Protocol):
    """A domain's cloud adapter: synchronous, idempotent by the marks in shared.cloud."""

    def apply(self, work: StepWork, progress: Progress) -> dict[str, Any]: ...

    def destroy(self, work: StepWork, progress: Progress) -> bool: ...


def register_step_handlers(handlers: HandlerRegistry) -> None:
    """Accept ApplyStepV1 / DestroyStepV1 commands as operations (idempotent by dispatch id)."""

    async def accept(cmd: ApplyStepV1 | DestroyStepV1, ctx: HandlerContext, action: str) -> None:
        await ctx.tx.execute(
            """INSERT INTO operations (dispatch_id, action, run_id, plan_id, step_key, kind, path, params,
                                       deadline, correlation_id, project_id, trust_id)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() + make_interval(secs => $9), $10, $11, $12)
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
            cmd.trust_id,
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
        executor: Callable[[str | None], Executor],
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
        self._idle: OrderedDict[str | None, list[Executor]] = OrderedDict()
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
                result = await asyncio.to_thread(self._call, op["action"], work, progress, op["trust_id"])
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

    def release(self, executor: Executor, trust_id: str | None = None) -> None:
        """Keep ``executor`` (and its cloud connection) for the next operation of the same trust."""
        with self._idle_lock:
            self._idle.setdefault(trust_id, []).append(executor)
            self._idle.move_to_end(trust_id)
            while len(self._idle) > TRUST_CACHE_SIZE:
                self._idle.popitem(last=False)

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


class TrustedExecutor:
    """An adapter acting through one trust. Authenticates first (the session's cached token, so only
    the first step of a run asks Keystone), and when Keystone refuses the trust, before or during the
    step, fails the step with Keystone's words and what to do; nothing is retried then."""

    def __init__(self, adapter: Executor, region: Any, trust_id: str, forget: Callable[[str], None]) -> None:
        self.adapter = adapter
        self.region = region
        self.trust_id = trust_id
        self.forget = forget

    def apply(self, work: StepWork, progress: Progress) -> dict[str, Any]:
        self._authenticate(work)
        try:
            return self.adapter.apply(work, progress)
        except CloudError as exc:
            self._recheck(exc, work)
            raise

    def destroy(self, work: StepWork, progress: Progress) -> bool:
        self._authenticate(work)
        try:
            return self.adapter.destroy(work, progress)
        except CloudError as exc:
            self._recheck(exc, work)
            raise

    def _recheck(self, exc: CloudError, work: StepWork) -> None:
        """A Keystone refusal inside the adapter (the trust deleted during the step: its token was
        revoked and re-authenticating failed): ask Keystone again, with a fresh token."""
        import keystoneauth1.exceptions as ksa

        if isinstance(exc.__cause__, ksa.Unauthorized | ksa.Forbidden | ksa.NotFound):
            self._authenticate(work, fresh=True)

    def _authenticate(self, work: StepWork, fresh: bool = False) -> None:
        import keystoneauth1.exceptions as ksa

        from shared.cloud_errors import translate_sdk_error

        session = self.region.get_session()
        try:
            if fresh:
                session.invalidate()
            session.get_token()
        except (ksa.Unauthorized, ksa.Forbidden, ksa.NotFound) as exc:
            self.forget(self.trust_id)
            raise CloudError(
                f"Keystone refused trust {self.trust_id}: {exc.message}",
                hint=TRUST_REFUSED_HINT,
                http_status=exc.http_status,
            ) from exc
        except (ksa.ClientException, OSError) as exc:  # Keystone unreachable or failing: retriable
            raise translate_sdk_error(exc, work, ()) from exc


class StepCredentials:
    """Which cloud configuration an operation acts with: the service's own ``DCOSTACK_CLOUD`` entry
    (no trust; noauth deployments only), or the ``DCOSTACK_SERVICE_CLOUD`` user scoped to the
    operation's trust. One CloudRegion per trust, so one keystoneauth session and one token for all
    steps of a run (keystoneauth re-authenticates when it expires), least recently used first out."""

    def __init__(self, settings: CloudExecutorSettings, size: int = TRUST_CACHE_SIZE) -> None:
        self.settings = settings
        self.size = size
        self._own: Any = None
        self._service: Any = None
        self._trusts: OrderedDict[str, Any] = OrderedDict()
        # Endpoint version discovery is the same whoever asks: done once, not once per trust.
        self._discovery: dict[str, Any] = {}
        self._lock = threading.Lock()

    def region(self, trust_id: str | None) -> Any:
        """The CloudRegion to connect with; raises CloudError (not retriable) when the operation carries
        no credential this deployment accepts."""
        if trust_id is None:
            if self.settings.auth_strategy == AuthStrategy.KEYSTONE:
                raise CloudError("this step carries no delegated credential (trust)", hint=NO_TRUST_HINT)
            return self.own()
        with self._lock:
            region = self._trusts.get(trust_id)
            if region is None:
                region = self._trusts[trust_id] = self._trust_region(trust_id)
                while len(self._trusts) > self.size:
                    self._trusts.popitem(last=False)
            self._trusts.move_to_end(trust_id)
            return region

    def own(self) -> Any:
        """The service's own cloud (``DCOSTACK_CLOUD``), loaded once."""
        import openstack

        with self._lock:
            if self._own is None:
                self._own = openstack.config.get_cloud_region(cloud=self.settings.cloud)
            return self._own

    def forget(self, trust_id: str) -> None:
        with self._lock:
            self._trusts.pop(trust_id, None)

    def _trust_region(self, trust_id: str) -> Any:
        from openstack.config.cloud_region import CloudRegion

        base = self._service_region()
        auth = dict(base.config.get("auth") or {})
        config = {**base.config, "auth_type": "password"}
        config["auth"] = {k: v for k, v in user_auth(auth).items() if k != "password"} | {"trust_id": trust_id}
        plugin = trust_auth(auth, trust_id)
        return CloudRegion(
            name=base.name,
            region_name=base.region_name,
            config=config,
            auth_plugin=plugin,
            discovery_cache=self._discovery,
        )

    def _service_region(self) -> Any:
        """The ``DCOSTACK_SERVICE_CLOUD`` entry: whose user name, password and domain act for trusts."""
        import openstack
        import openstack.config

        name = self.settings.service_cloud
        if not name:
            raise CloudError(
                "this step carries a trust but DCOSTACK_SERVICE_CLOUD is not set",
                hint="set DCOSTACK_SERVICE_CLOUD to the clouds.yaml entry of DCOSTACK's service user (the trustee)",
            )
        if self._service is None:
            try:
                region = openstack.config.OpenStackConfig().get_one(cloud=name)
            except openstack.exceptions.ConfigException as exc:
                raise CloudError(f"DCOSTACK_SERVICE_CLOUD={name}: {exc}", hint="name an entry of clouds.yaml") from exc
            auth = region.config.get("auth") or {}
            if (
                not auth.get("auth_url")
                or not auth.get("password")
                or not (auth.get("username") or auth.get("user_id"))
            ):
                raise CloudError(
                    f"DCOSTACK_SERVICE_CLOUD={name} has no auth_url, user and password",
                    hint="the trustee authenticates by password; give the entry auth_url, username and password",
                )
            self._service = region
        return self._service


def step_workers(service: str, adapter: Callable[[Any], Executor]) -> Callable[[Runtime], Any]:
    """The background task of an executing service: workers acting in the cloud through each run's
    trust, or (noauth) in the cloud its settings name."""

    async def step_workers(runtime: Runtime) -> None:
        settings = cast(CloudExecutorSettings, runtime.settings)
        credentials = StepCredentials(settings)

        def new_executor(trust_id: str | None) -> Executor:
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
