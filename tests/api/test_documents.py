"""The committed HTTP contracts (docs/api/: each service's OpenAPI document and the plan JSON Schema) are
what the code generates, and say what the handlers send."""

from __future__ import annotations

import json

from services.cli.openapi import COMMAND, PLAN_SCHEMA, app_of, document_path, stale
from tests.api.conftest import HTTP_SERVICES


def test_committed_documents_are_fresh() -> None:
    found = stale()
    assert not found, f"stale API contracts: {', '.join(found)}; run `{COMMAND}` and commit them"


def test_every_service_and_the_plan_schema_is_published() -> None:
    for service in HTTP_SERVICES:
        assert document_path(service).exists(), f"run `{COMMAND}`"
    assert json.loads(PLAN_SCHEMA.read_text())["$id"] == "https://dcostack.io/schemas/plan.v1.json"


class TestOneErrorModel:
    def test_every_error_response_is_the_error_body(self) -> None:
        for service in HTTP_SERVICES:
            document = app_of(service).openapi()
            for path, item in document["paths"].items():
                for method, operation in item.items():
                    for status, response in operation["responses"].items():
                        if int(status) < 400 or path == "/readyz":
                            continue
                        schema = response["content"]["application/json"]["schema"]
                        assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (service, method, path, status)
            assert "HTTPValidationError" not in document["components"]["schemas"], service

    def test_operations_that_need_a_caller_declare_the_token_and_its_errors(self) -> None:
        document = app_of("planner").openapi()
        operation = document["paths"]["/v1/plans/{plan_id}"]["get"]
        assert operation["security"] == [{"keystone": []}]
        assert {"401", "403", "404", "422", "503"} <= set(operation["responses"])
        assert document["components"]["securitySchemes"]["keystone"]["name"] == "X-Auth-Token"

    def test_noauth_serves_the_project_header_instead_of_the_token(self) -> None:
        document = app_of("planner", auth_strategy="noauth").openapi()
        operation = document["paths"]["/v1/plans"]["get"]
        assert "security" not in operation
        assert "X-Project-Id" in {p["name"] for p in operation["parameters"]}

    def test_rate_limited_operations_declare_429_with_retry_after(self) -> None:
        paths = app_of("planner").openapi()["paths"]
        for path, method in [
            ("/v1/probes", "post"),
            ("/v1/plans/{plan_id}/preview", "post"),
            ("/v1/plans/{plan_id}/runs", "post"),
            ("/v1/runs/{run_id}/resume", "post"),
        ]:
            assert "Retry-After" in paths[path][method]["responses"]["429"]["headers"], path
