"""schemathesis against every service that serves HTTP, in process: each service's ASGI app from
``create_app`` with its runtime started (real PostgreSQL and broker; the executors read devcloud), and the
document it serves at /openapi.json. The coverage and fuzzing phases run with every check; 0 failures means
the document says what the API answers. The planner also runs with Keystone tokens from devcloud, as the
issue's run did. Bounded (``MAX_EXAMPLES`` per operation) so it stays fast on 2 cores."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events
from schemathesis.python import asgi

from services.cli.infra import free_port
from shared.config import AuthStrategy
from shared.http import BEYOND_SCHEMA
from tests.api.conftest import EXECUTORS, HTTP_SERVICES, in_process_app
from tests.fixtures.openstack import CloudUnderTest

#: Examples per operation in the fuzzing phase; the coverage phase derives its own cases from the schema.
MAX_EXAMPLES = 15
RUNS = [*((s, "noauth") for s in HTTP_SERVICES), ("planner", "keystone")]


#: What schemathesis accepts by default: for a schema-valid request, and as not a server error.
ACCEPTED = ["2xx", "3xx", 401, 403, 404, 409, 429, "5xx"]
NOT_SERVER_ERRORS = ["2xx", "3xx", "4xx"]


def config(document: dict[str, Any], *, token: str | None) -> SchemathesisConfig:
    """Every check, the coverage and fuzzing phases; per operation, what its document says beyond the
    schema: a schema-valid request may get 422 where the operation lists checks beyond its schema, and 501
    is the answer of a capability that is declared not implemented yet."""
    operations = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            checks: dict[str, Any] = {}
            if operation.get(BEYOND_SCHEMA):
                checks["positive_data_acceptance"] = {"expected-statuses": [*ACCEPTED, 422]}
            if "501" in operation["responses"]:
                checks["not_a_server_error"] = {"expected-statuses": [*NOT_SERVER_ERRORS, 501]}
            if checks:
                operations.append({"include-path": path, "include-method": method.upper(), "checks": checks})
    return SchemathesisConfig.from_dict(
        {
            "seed": 10,
            "phases": {
                "examples": {"enabled": False},
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": False},
            },
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True},
            "request-timeout": 60,
            # noauth serves every caller by design: a call without a token is not "ignored auth" there
            "checks": {"ignored_auth": {"enabled": token is not None}},
            "operations": operations,
            **({"headers": {"X-Auth-Token": token}} if token else {}),
        }
    )


def failures_of(schema: Any) -> list[str]:
    """Run the coverage and fuzzing phases as the CLI does; every failed check and every error, one line each
    (operation, check, message and a curl line to reproduce it)."""
    found: dict[str, str] = {}
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.NonFatalError | events.FatalError):
            found[repr(event)] = f"error: {getattr(event, 'label', '')}: {getattr(event, 'value', None) or event}"
        recorder = getattr(event, "recorder", None)
        if recorder is None:
            continue
        for checks in recorder.checks.values():
            for check in checks:
                if check.status == Status.FAILURE and check.failure_info is not None:
                    failure = check.failure_info.failure
                    curl = check.failure_info.steps[-1].curl if check.failure_info.steps else ""
                    key = f"{failure.operation} {check.name} {failure.title}"
                    found.setdefault(key, f"{key}: {failure.message}\n    {curl}")
    return sorted(found.values())


@pytest.mark.devcloud
# hypothesis warns about schemathesis' own strategies; the suite's warnings-as-errors would count them as ours
@pytest.mark.filterwarnings("ignore:Generating overly large repr", "ignore:Do not use the `random` module")
@pytest.mark.parametrize(("service", "auth"), RUNS, ids=[f"{s}-{a}" for s, a in RUNS])
def test_the_api_answers_what_its_document_says(
    service: str, auth: str, service_settings: Callable[..., dict[str, Any]], test_cloud: CloudUnderTest
) -> None:
    extra: dict[str, Any] = {}
    token = None
    if auth == "keystone":
        member = test_cloud.connect()
        try:
            token = member.auth_token
            keystone = member.config.get_auth_args()["auth_url"]
        finally:
            member.close()
        extra = {"auth_strategy": AuthStrategy.KEYSTONE, "keystone_url": keystone}
    if service in EXECUTORS:
        extra["cloud"] = test_cloud.member
    if service == "planner":  # no domain service runs here: reads of live state answer 503 (declared)
        extra.update({f"{name}_url": f"http://127.0.0.1:{free_port()}" for name in EXECUTORS})
    app = in_process_app(service, **service_settings(service, **extra))
    try:
        schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config(app.openapi(), token=token))
        failures = failures_of(schema)
    finally:
        asgi.shutdown_lifespans()
    assert not failures, f"{len(failures)} contract failure(s) of {service} ({auth}):\n" + "\n".join(failures)
