"""Delegation: a run acts in its project through a Keystone trust, as Heat's stacks do.

When a caller starts (or resumes) a run, the planner asks Keystone, with the caller's own token, for a
trust from the caller to DCOSTACK's service user (clouds.yaml entry ``DCOSTACK_SERVICE_CLOUD``) in the
caller's project, with the caller's roles there, impersonating the caller, expiring after
``trust_lifetime_hours``. The domain services authenticate as the service user with that trust, so what
they create belongs to the caller's project and user, and they can do nothing the caller could not. The
service user has no role in any user project of its own. When the run ends the trust is deleted (with a
token of the trust itself: an impersonating trust may delete itself); a resumed run gets a new one.

Under noauth there is no caller token: runs carry no trust and the domain services act with their own
clouds.yaml entry (development and tests)."""

from __future__ import annotations

import asyncio
import secrets
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import structlog

from services.planner.runs import repository
from shared.auth import KEYSTONE_TIMEOUT_SECONDS, TOKEN_HEADER, Caller, Forbidden, v3_url
from shared.config import AuthStrategy, ServiceSettings
from shared.errors import DependencyUnavailable
from shared.executor.credentials import trust_auth

log = structlog.get_logger(__name__)

SERVICE_CLOUD = "DCOSTACK_SERVICE_CLOUD"


def _service_entry(cloud: str) -> Any:
    import openstack.config

    return openstack.config.OpenStackConfig().get_one(cloud=cloud)


class Delegation:
    """Creates the trust a run acts through, and deletes it when the run no longer needs it."""

    def __init__(self, settings: ServiceSettings, lifetime_hours: float) -> None:
        self.settings = settings
        self.lifetime = timedelta(hours=lifetime_hours)
        self._trustee: str | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.settings.auth_strategy == AuthStrategy.KEYSTONE

    def _trustee_id(self) -> str:
        """The service user's id (it logs in once to learn it)."""
        with self._lock:
            if self._trustee is None:
                cloud = self.settings.service_cloud
                if not cloud:
                    raise DependencyUnavailable(
                        f"runs act through a Keystone trust to DCOSTACK's service user, and {SERVICE_CLOUD} "
                        "(its clouds.yaml entry) is not set; set it (devcloud writes `devcloud-dcostack`)"
                    )
                try:
                    self._trustee = _service_entry(cloud).get_session().get_user_id()
                except Exception as exc:
                    raise DependencyUnavailable(
                        f"DCOSTACK's service user ({SERVICE_CLOUD}={cloud}) cannot log in to Keystone: {exc}"
                    ) from exc
            assert self._trustee is not None
            return self._trustee

    async def delegate(self, caller: Caller, what: str) -> str | None:
        """A new trust from ``caller`` for a run (``what`` names it in errors); None under noauth."""
        if not self.enabled:
            return None
        assert caller.token
        assert caller.user_id
        assert self.settings.keystone_url
        trustee = await asyncio.to_thread(self._trustee_id)
        url = v3_url(self.settings.keystone_url) + "/OS-TRUST/trusts"
        # Keystone allows one trust per (trustor, trustee, project, impersonation, expires_at), deleted ones
        # included, and keeps expires_at to the second: two runs a user starts in the same second would
        # collide. The expiry gets a random extra (up to an hour) and a collision is retried with another.
        for _ in range(5):
            extra = timedelta(seconds=secrets.randbelow(3600))
            expires = (datetime.now(UTC) + self.lifetime + extra).strftime("%Y-%m-%dT%H:%M:%S.000000Z")
            body = {
                "trust": {
                    "trustor_user_id": caller.user_id,
                    "trustee_user_id": trustee,
                    "project_id": caller.project_id,
                    "impersonation": True,
                    "roles": [{"name": role} for role in sorted(caller.roles)],
                    "expires_at": expires,
                }
            }
            try:
                async with httpx.AsyncClient(timeout=KEYSTONE_TIMEOUT_SECONDS) as client:
                    r = await client.post(url, json=body, headers={TOKEN_HEADER: caller.token})
            except httpx.HTTPError as exc:
                raise DependencyUnavailable(f"Keystone did not answer creating the trust for {what}: {exc}") from exc
            if r.status_code != 409:
                break
        if r.status_code == 201:
            trust_id = str(r.json()["trust"]["id"])
            log.info("trust.created", trust_id=trust_id, project_id=caller.project_id, user_id=caller.user_id)
            return trust_id
        detail = _keystone_message(r)
        if r.status_code in (401, 403):
            raise Forbidden(
                f"Keystone refused to delegate your roles to DCOSTACK for {what}: {detail}. A token from an "
                "application credential or another trust cannot delegate; log in with a password or a "
                "normal token",
            )
        raise DependencyUnavailable(f"Keystone answered HTTP {r.status_code} creating the trust for {what}: {detail}")

    def _revoke(self, trust_id: str) -> bool:
        """Delete a trust with a token of the trust itself; True when it is gone (already gone counts)."""
        from keystoneauth1 import exceptions, session

        assert self.settings.service_cloud
        assert self.settings.keystone_url
        auth = _service_entry(self.settings.service_cloud).config["auth"]
        sess = session.Session(auth=trust_auth(auth, trust_id))
        try:
            sess.delete(v3_url(self.settings.keystone_url) + f"/OS-TRUST/trusts/{trust_id}", raise_exc=True)
        except (exceptions.Unauthorized, exceptions.NotFound):
            return True  # expired or deleted already: it cannot be used any more either way
        return True

    async def revoke(self, trust_id: str) -> bool:
        try:
            await asyncio.to_thread(self._revoke, trust_id)
        except Exception as exc:  # Keystone away: the next round tries again; the trust expires anyway
            log.warning("trust.delete_failed", trust_id=trust_id, error=str(exc) or type(exc).__name__)
            return False
        log.info("trust.deleted", trust_id=trust_id)
        return True

    async def revoke_finished(self, pool: asyncpg.Pool) -> int:
        """Delete the trusts of runs that ended (and of runs resumed with a new trust); returns how many."""
        if not self.enabled or not self.settings.service_cloud:
            return 0
        rows = await repository.ended_run_trusts(pool)
        old = await repository.retired_trusts(pool)
        done = 0
        for row in rows:
            if await self.revoke(row["trust_id"]):
                await repository.forget_run_trust(pool, row["id"], row["trust_id"])
                done += 1
        for trust_id in old:
            if await self.revoke(trust_id):
                await repository.forget_retired_trust(pool, trust_id)
                done += 1
        return done


def _keystone_message(r: httpx.Response) -> str:
    try:
        return str(r.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return r.text[:200] or f"HTTP {r.status_code}"
