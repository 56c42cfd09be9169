"""Every error an API sends is the one error model (shared/errors.py ErrorBody), in process on the planner's
own app: request validation (422 with each field path), unknown paths (404) and methods a path does not
take (405 with Allow listing every method of the path). None of these reach PostgreSQL or Kafka."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from services.cli.openapi import app_of
from shared.errors import ErrorBody


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = app_of("planner", auth_strategy="noauth")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://planner") as c:
        yield c


async def test_a_value_out_of_bounds_is_422_with_its_field_path(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/plans", params={"limit": 0})
    assert r.status_code == 422
    body = ErrorBody.model_validate(r.json())
    assert body.error == "InvalidInput"
    assert body.field == "query.limit"
    assert body.errors is not None
    assert [e.path for e in body.errors] == ["query.limit"]
    assert "query.limit" in body.detail


async def test_a_malformed_project_header_is_422_naming_the_header(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/plans", headers={"X-Project-Id": ""})
    assert r.status_code == 422
    assert ErrorBody.model_validate(r.json()).field == "X-Project-Id"


async def test_a_method_the_path_does_not_take_is_405_allowing_every_method_of_the_path(
    client: httpx.AsyncClient,
) -> None:
    r = await client.patch("/v1/plans/4b1e6f0e-6f4c-4a53-9d7e-2f8c3a0b9a11")
    assert r.status_code == 405
    assert r.headers["Allow"] == "DELETE, GET, HEAD, PUT"
    body = ErrorBody.model_validate(r.json())
    assert body.error == "MethodNotAllowed"
    assert "PUT" in body.detail


async def test_an_unknown_path_is_404_as_the_error_body(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/nowhere")
    assert r.status_code == 404
    assert ErrorBody.model_validate(r.json()).error == "NotFound"


async def test_a_body_that_is_not_text_is_400_as_the_error_body(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/probes", content=b"!\xff\x7f\x01(\xfe", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert ErrorBody.model_validate(r.json()).error == "BadRequest"
