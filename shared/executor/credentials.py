"""Whose credentials an operation acts with, and the login as DCOSTACK's service user scoped to a Keystone
trust (what the planner does to delete a run's trust, and the domain services to act for a run; see
services/planner/runs/trusts.py for why).

A command carries the run's Keystone *trust* (the user who started the run delegated their roles in their
project to DCOSTACK's service user, ``DCOSTACK_SERVICE_CLOUD``), and the step is executed as that service
user scoped to the trust, as Heat does. Connections are kept per trust, so every step of a run shares one
trust-scoped token and a connection of one trust never serves another. A command without a trust acts
with the service's own ``DCOSTACK_CLOUD`` entry, which only a noauth deployment allows.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from shared.config import AuthStrategy, CloudExecutorSettings
from shared.executor.errors import CloudError, translate_sdk_error
from shared.executor.marks import StepWork
from shared.executor.models import Progress, StepAdapter

#: How many trusts' cloud sessions (and idle connections) a service keeps: one per run in flight.
TRUST_CACHE_SIZE = 256
NO_TRUST_HINT = "start runs through the planner API with a Keystone token"
TRUST_REFUSED_HINT = "the run's trust was deleted or expired; resume the run to delegate again"

#: The keys of a clouds.yaml ``auth`` block that name the user; a trust-scoped login takes only these.
USER_KEYS = ("auth_url", "username", "user_id", "password", "user_domain_id", "user_domain_name")


def user_auth(auth: Mapping[str, Any]) -> dict[str, Any]:
    """The user part of a clouds.yaml ``auth`` block (no project or domain scope)."""
    return {k: auth[k] for k in USER_KEYS if auth.get(k)}


def trust_auth(auth: Mapping[str, Any], trust_id: str) -> Any:
    """A keystoneauth password plugin for the user of ``auth`` scoped to ``trust_id``: the trust names the
    project, so no project or domain scope comes with it (Keystone refuses both)."""
    from keystoneauth1.identity.generic import Password

    return Password(**user_auth(auth), trust_id=trust_id)


class TrustedExecutor:
    """An adapter acting through one trust. Authenticates first (the session's cached token, so only
    the first step of a run asks Keystone), and when Keystone refuses the trust, before or during the
    step, fails the step with Keystone's words and what to do; nothing is retried then."""

    def __init__(self, adapter: StepAdapter, region: Any, trust_id: str, forget: Callable[[str], None]) -> None:
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
            raise translate_sdk_error(exc, work) from exc


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
