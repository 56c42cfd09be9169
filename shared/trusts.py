"""Logging in as DCOSTACK's service user scoped to a Keystone trust: what the planner (to delete a run's
trust) and the domain services (to act for a run) both do. See services/planner/trusts.py for why."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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
