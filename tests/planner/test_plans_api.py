"""The plans API against the real planner process, on real PostgreSQL and a real broker.

One planner serves the whole module (starting one per test would be most of the run time); each test
keeps to a project of its own through ``X-Project-Id``, which is also what scopes plans.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from services.planner.plans.compiler import compile_plan
from services.planner.plans.domain import count_dependencies, count_steps
from services.planner.plans.spec import validate_plan
from tests.fixtures.planner import PlannerUnderTest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "two-tier.yaml"
YAML = {"Content-Type": "application/yaml"}


def example() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    return document


def invalid_example() -> dict[str, Any]:
    """Three structural errors at once, each at its own path."""
    doc = example()
    doc["networks"][0]["cidr"] = "10.42.0.1/24"
    doc["instance_groups"][0]["count"] = -1
    doc["security_groups"][0]["rules"][0]["protocol"] = "sctp"
    return doc


INVALID_PATHS = {
    "$.networks[0].cidr",
    "$.instance_groups[0].count",
    "$.security_groups[0].rules[0].protocol",
}


@pytest.fixture(scope="module")
def planner_url(planner: PlannerUnderTest) -> str:
    return planner.url


@pytest.fixture
def project() -> str:
    return f"p-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def api(planner_url: str, project: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=planner_url, timeout=30, headers={"X-Project-Id": project}) as client:
        yield client


def create(api: httpx.Client, document: dict[str, Any]) -> dict[str, Any]:
    r = api.post("/v1/plans", json=document)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def renamed(name: str) -> dict[str, Any]:
    doc = example()
    doc["name"] = name
    return doc


class TestPlanSchema:
    def test_schema_is_the_published_json_schema_of_a_plan(self, api: httpx.Client) -> None:
        r = api.get("/v1/plan-schema")
        assert r.status_code == 200
        schema = r.json()
        assert schema["$id"] == "https://dcostack.io/schemas/plan.v1.json"
        assert {"name", "networks", "instance_groups", "load_balancers"} <= set(schema["properties"])


class TestValidatePlan:
    def test_example_gives_the_normalised_plan_and_its_steps_in_dependency_order(self, api: httpx.Client) -> None:
        r = api.post("/v1/plans/validate", content=EXAMPLE.read_bytes(), headers=YAML)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["valid"] is True
        assert body["name"] == "two-tier"
        # Parameters are substituted with their defaults, and keep their type.
        assert [g["count"] for g in body["plan"]["instance_groups"]] == [2, 2]
        assert body["plan"]["networks"][0]["router"]["external_network"] == "public"
        assert body["plan"]["rollout"] == {"max_parallel": 10, "batch_size": 5}
        steps = body["steps"]
        keys = [s["key"] for s in steps]
        assert body["summary"]["total"] == len(steps) == len(set(keys)) == 26
        assert body["summary"]["by_kind"]["server"] == 4
        assert body["summary"]["by_kind"]["member"] == 2
        assert body["summary"]["by_service"] == {"network": 17, "compute": 7, "storage": 2}
        # Every step comes after all the steps it waits for.
        position = {k: i for i, k in enumerate(keys)}
        for s in steps:
            assert all(position[d] < position[s["key"]] for d in s["after"]), s
        assert position["network/two-tier-net"] < position["subnet/two-tier-net"] < position["server/app-0"]
        # web depends_on app: every app server is created before any web server.
        assert max(position[f"server/app-{i}"] for i in range(2)) < min(position[f"server/web-{i}"] for i in range(2))
        assert position["server/web-1"] < position["member/web-lb/web-1"]

    @pytest.mark.parametrize("as_yaml", [False, True], ids=["json", "yaml"])
    def test_invalid_plan_is_422_with_every_error_and_its_path(self, api: httpx.Client, as_yaml: bool) -> None:
        doc = invalid_example()
        if as_yaml:
            r = api.post("/v1/plans/validate", content=yaml.safe_dump(doc), headers=YAML)
        else:
            r = api.post("/v1/plans/validate", json=doc)
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["error"] == "PlanInvalid"
        assert {e["path"] for e in body["errors"]} == INVALID_PATHS
        assert all(e["message"] for e in body["errors"])
        cidr = next(e for e in body["errors"] if e["path"] == "$.networks[0].cidr")
        assert "host bits set" in cidr["message"]

    def test_reference_errors_are_all_reported_too(self, api: httpx.Client) -> None:
        doc = example()
        doc["instance_groups"][1]["networks"] = ["nowhere"]
        doc["load_balancers"][0]["pool"]["members"]["group"] = "ghost"
        r = api.post("/v1/plans/validate", json=doc)
        assert r.status_code == 422
        paths = {e["path"] for e in r.json()["errors"]}
        assert {"$.instance_groups[1].networks[0]", "$.load_balancers[0].pool.members.group"} <= paths

    def test_a_plan_compiling_to_too_many_steps_is_refused_not_built(self, api: httpx.Client) -> None:
        doc = {
            "name": "huge",
            "networks": [{"name": "net", "cidr": "10.0.0.0/16"}],
            "instance_groups": [
                {"name": f"g{i}", "flavor": "f", "image": "i", "count": 1000, "networks": ["net"]} for i in range(30)
            ],
        }
        r = api.post("/v1/plans/validate", json=doc)
        assert r.status_code == 422
        assert "at most 20000" in r.json()["errors"][0]["message"]

    def test_too_many_entries_in_a_list_are_refused_before_the_quadratic_checks(self, api: httpx.Client) -> None:
        doc = example()
        doc["networks"] = [{"name": f"n{i}", "cidr": f"10.{i // 256}.{i % 256}.0/24"} for i in range(251)]
        r = api.post("/v1/plans/validate", json=doc)
        assert r.status_code == 422
        assert r.json()["errors"] == [
            {"path": "$.networks", "message": "has 251 entries; at most 250 are allowed (split it into plans)"}
        ]

    def test_a_dense_depends_on_chain_is_refused_before_compiling(self, api: httpx.Client) -> None:
        doc = {
            "name": "dense",
            "networks": [{"name": "net", "cidr": "10.0.0.0/16"}],
            "instance_groups": [
                {
                    "name": f"g{i}",
                    "flavor": "f",
                    "image": "i",
                    "count": 100,
                    "networks": ["net"],
                    "depends_on": [f"g{j}" for j in range(i)],
                }
                for i in range(40)
            ],
        }
        r = api.post("/v1/plans/validate", json=doc)
        assert r.status_code == 422
        assert "dependencies between them" in r.json()["errors"][0]["message"]


class TestPlanLimits:
    """The limits are computed from the validated plan, before compiling: they must not undercount."""

    @pytest.mark.parametrize(
        "change",
        [
            {},
            {"rollout": {"batch_size": 1}},
            {"volumes": [{"name": "shared", "size_gb": 5}], "object_containers": [{"name": "logs"}]},
        ],
        ids=["example", "batch-of-one", "plan-volumes"],
    )
    def test_step_and_dependency_counts_match_the_compiler(self, change: dict[str, Any]) -> None:
        plan = validate_plan({**example(), **change})
        graph = compile_plan(plan)
        assert count_steps(plan) == len(graph.steps)
        assert count_dependencies(plan) >= sum(len(s.after) for s in graph.steps.values())


class TestUnreadableBodies:
    @pytest.mark.parametrize(
        ("content", "headers", "status", "says"),
        [
            (b'{"name": "x"}', {"Content-Type": "text/plain"}, 415, "application/json or application/yaml"),
            (b'{"name": "x"}', {}, 415, "no Content-Type"),
            (b'{"name": ', {"Content-Type": "application/json"}, 400, "not valid JSON"),
            (b"name: [unclosed", YAML, 400, "not valid YAML"),
            (b"\xff\xfe\x00garbage", {"Content-Type": "application/json"}, 400, "not UTF-8"),
            (b"", {"Content-Type": "application/json"}, 400, "empty"),
            (b'{"name": "a", "name": "b"}', {"Content-Type": "application/json"}, 400, "appears twice"),
            (b'{"name": NaN}', {"Content-Type": "application/json"}, 400, "finite numbers"),
            (b"!!python/object/apply:os.system ['true']", YAML, 400, "not valid YAML"),
            (b"name: a\n---\nname: b\n", YAML, 400, "more than one document"),
            (b"&a [*a]", YAML, 400, "contains itself"),
            (b"[" * 100_000 + b"]" * 100_000, YAML, 400, "nests deeper than 64"),
            (b"[" * 100_000 + b"]" * 100_000, {"Content-Type": "application/json"}, 400, "nests deeper than 64"),
        ],
        ids=[
            "text-plain",
            "no-content-type",
            "broken-json",
            "broken-yaml",
            "not-utf8",
            "empty",
            "duplicate-key",
            "nan",
            "python-tag",
            "two-documents",
            "recursive-alias",
            "deep-yaml",
            "deep-json",
        ],
    )
    def test_is_a_4xx_that_says_why(
        self, api: httpx.Client, content: bytes, headers: dict[str, str], status: int, says: str
    ) -> None:
        for path in ("/v1/plans/validate", "/v1/plans"):
            r = api.post(path, content=content, headers=headers)
            assert r.status_code == status, r.text
            assert says in r.json()["detail"]

    def test_a_yaml_bomb_is_refused_without_expanding_it(self, api: httpx.Client) -> None:
        lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
        for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
            lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]")  # 10**9 values in all
        r = api.post("/v1/plans", content="\n".join(lines).encode(), headers=YAML)
        assert r.status_code == 400
        assert "expands to more than" in r.json()["detail"]
        assert api.get("/v1/plans").json()["plans"] == []

    def test_a_body_over_1_mib_is_413(self, api: httpx.Client) -> None:
        doc = example()
        doc["description"] = "x" * (1024 * 1024)
        r = api.post("/v1/plans", json=doc)
        assert r.status_code == 413
        assert "1 MiB" in r.json()["detail"]

    def test_a_streamed_body_over_1_mib_without_length_is_413(self, api: httpx.Client) -> None:
        def chunks() -> Iterator[bytes]:
            yield b'{"name": "big", "description": "'
            for _ in range(20):
                yield b"x" * 65536
            yield b'"}'

        r = api.post("/v1/plans", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413

    def test_a_bad_project_header_is_422(self, api: httpx.Client) -> None:
        r = api.get("/v1/plans", headers={"X-Project-Id": "no spaces/allowed"})
        assert r.status_code == 422


class TestCreatePlan:
    def test_create_the_example_from_yaml_and_read_it_back(self, api: httpx.Client, project: str) -> None:
        r = api.post("/v1/plans", content=EXAMPLE.read_bytes(), headers=YAML)
        assert r.status_code == 201, r.text
        created = r.json()
        assert r.headers["Location"] == f"/v1/plans/{created['id']}"
        assert created["name"] == "two-tier"
        assert created["project_id"] == project
        assert created["latest_version"] == 1
        assert created["version"]["version"] == 1
        assert created["version"]["created_by"] is None
        # Stored as submitted: templates are not substituted.
        assert created["version"]["document"] == example()
        got = api.get(f"/v1/plans/{created['id']}")
        assert got.status_code == 200
        # warnings: checks the create could not run (no compute service here); a read runs none
        assert got.json() == {**created, "warnings": []}

    def test_the_same_name_in_the_same_project_is_409(self, api: httpx.Client, planner_url: str) -> None:
        create(api, example())
        r = api.post("/v1/plans", json=example())
        assert r.status_code == 409
        assert r.json()["error"] == "PlanNameTaken"
        assert "two-tier" in r.json()["detail"]
        # Another project has its own namespace.
        other = api.post("/v1/plans", json=example(), headers={"X-Project-Id": f"p-{uuid.uuid4().hex[:12]}"})
        assert other.status_code == 201

    def test_an_invalid_plan_is_422_and_nothing_is_stored(self, api: httpx.Client) -> None:
        r = api.post("/v1/plans", content=yaml.safe_dump(invalid_example()), headers=YAML)
        assert r.status_code == 422
        assert {e["path"] for e in r.json()["errors"]} == INVALID_PATHS
        assert api.get("/v1/plans").json()["plans"] == []

    def test_the_default_project_is_used_without_the_header(self, planner_url: str) -> None:
        name = f"d-{uuid.uuid4().hex[:10]}"
        with httpx.Client(base_url=planner_url, timeout=30) as client:
            r = client.post("/v1/plans", json=renamed(name))
            assert r.status_code == 201
            assert r.json()["project_id"] == "default"
            assert [p["name"] for p in client.get("/v1/plans", params={"name": name}).json()["plans"]] == [name]


class TestUpdatePlan:
    def test_update_makes_version_2_and_version_1_stays_readable(self, api: httpx.Client) -> None:
        plan = create(api, example())
        changed = example()
        changed["parameters"]["web_count"]["default"] = 5
        r = api.put(f"/v1/plans/{plan['id']}", json=changed)
        assert r.status_code == 200, r.text
        assert r.json()["latest_version"] == 2
        assert r.json()["version"]["version"] == 2
        latest = api.get(f"/v1/plans/{plan['id']}").json()
        assert latest["version"]["document"] == changed
        v1 = api.get(f"/v1/plans/{plan['id']}/versions/1").json()
        assert v1["version"]["version"] == 1
        assert v1["latest_version"] == 2
        assert v1["version"]["document"] == example()
        versions = api.get(f"/v1/plans/{plan['id']}/versions").json()
        assert [v["version"] for v in versions["versions"]] == [1, 2]
        assert all(v["document"] is None for v in versions["versions"])
        missing = api.get(f"/v1/plans/{plan['id']}/versions/3")
        assert missing.status_code == 404
        assert "versions are 1 to 2" in missing.json()["detail"]

    def test_sending_the_latest_document_again_adds_no_version(self, api: httpx.Client) -> None:
        plan = create(api, example())
        # Same content, other key order and format: jsonb equality, not text equality.
        r = api.put(f"/v1/plans/{plan['id']}", content=EXAMPLE.read_bytes(), headers=YAML)
        assert r.status_code == 200
        assert r.json()["latest_version"] == 1
        assert r.json()["version"] == plan["version"]

    def test_an_invalid_update_is_422_and_keeps_the_latest(self, api: httpx.Client) -> None:
        plan = create(api, example())
        r = api.put(f"/v1/plans/{plan['id']}", json=invalid_example())
        assert r.status_code == 422
        assert {e["path"] for e in r.json()["errors"]} == INVALID_PATHS
        assert api.get(f"/v1/plans/{plan['id']}").json()["latest_version"] == 1

    def test_a_new_version_keeps_the_plan_name(self, api: httpx.Client) -> None:
        plan = create(api, example())
        r = api.put(f"/v1/plans/{plan['id']}", json=renamed("other-name"))
        assert r.status_code == 422
        assert [e["path"] for e in r.json()["errors"]] == ["$.name"]

    def test_an_unknown_plan_is_404(self, api: httpx.Client) -> None:
        r = api.put(f"/v1/plans/{uuid.uuid4()}", json=example())
        assert r.status_code == 404
        assert r.json()["error"] == "PlanNotFound"

    def test_a_plan_of_another_project_is_404(self, api: httpx.Client) -> None:
        plan = create(api, example())
        other = {"X-Project-Id": f"p-{uuid.uuid4().hex[:12]}"}
        assert api.get(f"/v1/plans/{plan['id']}", headers=other).status_code == 404
        assert api.put(f"/v1/plans/{plan['id']}", json=example(), headers=other).status_code == 404

    def test_concurrent_updates_each_get_their_own_version(self, api: httpx.Client) -> None:
        plan = create(api, example())

        def put(n: int) -> int:
            doc = copy.deepcopy(example())
            doc["description"] = f"change {n}"
            return api.put(f"/v1/plans/{plan['id']}", json=doc).status_code

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(put, range(8))) == [200] * 8
        versions = api.get(f"/v1/plans/{plan['id']}/versions").json()["versions"]
        assert [v["version"] for v in versions] == list(range(1, 10))
        descriptions = {
            api.get(f"/v1/plans/{plan['id']}/versions/{n}").json()["version"]["document"]["description"]
            for n in range(2, 10)
        }
        assert descriptions == {f"change {n}" for n in range(8)}


class TestListPlans:
    def test_newest_first_with_the_latest_version(self, api: httpx.Client) -> None:
        first = create(api, renamed("first"))
        second = create(api, renamed("second"))
        changed = renamed("first")
        changed["description"] = "changed"
        assert api.put(f"/v1/plans/{first['id']}", json=changed).status_code == 200
        plans = api.get("/v1/plans").json()["plans"]
        assert [(p["id"], p["name"], p["latest_version"]) for p in plans] == [
            (second["id"], "second", 1),
            (first["id"], "first", 2),
        ]
        assert "version" not in plans[0]
        by_name = api.get("/v1/plans", params={"name": "first"}).json()["plans"]
        assert [p["id"] for p in by_name] == [first["id"]]


class TestDeletePlan:
    def test_delete_hides_the_plan_and_frees_its_name(self, api: httpx.Client) -> None:
        plan = create(api, example())
        r = api.delete(f"/v1/plans/{plan['id']}")
        assert r.status_code == 204
        assert api.get(f"/v1/plans/{plan['id']}").status_code == 404
        assert api.get(f"/v1/plans/{plan['id']}/versions").status_code == 404
        assert api.get("/v1/plans").json()["plans"] == []
        assert api.delete(f"/v1/plans/{plan['id']}").status_code == 404
        again = create(api, example())
        assert again["id"] != plan["id"]
        assert again["latest_version"] == 1


class TestRuns:
    """The planner's side of a run, with no domain service answering: what it dispatches, and when."""

    def test_apply_dispatches_only_steps_whose_dependencies_succeeded(self, api: httpx.Client) -> None:
        plan = create(api, example())
        r = api.post(f"/v1/plans/{plan['id']}/runs", json={"action": "apply"})
        assert r.status_code == 202, r.text
        run = r.json()
        assert r.headers["Location"] == f"/v1/runs/{run['id']}"
        assert run["state"] == "running"
        assert run["action"] == "apply"
        assert run["plan_version"] == 1
        by_key = {s["key"]: s for s in run["steps"]}
        dispatched = {k for k, s in by_key.items() if s["state"] == "dispatched"}
        # Only steps with no dependencies can go first: networks, security groups, server groups, ...
        assert "network/two-tier-net" in dispatched
        assert not any(k.startswith(("server/", "subnet/", "member/", "floating-ip/")) for k in dispatched)
        assert len(dispatched) <= 10  # rollout.max_parallel of the example
        assert {s["state"] for k, s in by_key.items() if k not in dispatched} == {"pending"}
        assert api.get(f"/v1/runs/{run['id']}").json()["counts"] == run["counts"]

    def test_a_second_run_of_a_busy_plan_is_refused_and_unknown_runs_are_404(self, api: httpx.Client) -> None:
        plan = create(api, example())
        first = api.post(f"/v1/plans/{plan['id']}/runs", json={"action": "apply"}).json()
        r = api.post(f"/v1/plans/{plan['id']}/runs", json={"action": "destroy"})
        assert r.status_code == 409
        assert first["id"] in r.json()["detail"]
        listed = api.get(f"/v1/plans/{plan['id']}/runs").json()["runs"]
        assert [x["id"] for x in listed] == [first["id"]]
        assert api.get(f"/v1/runs/{uuid.uuid4()}").status_code == 404
        assert api.post(f"/v1/plans/{uuid.uuid4()}/runs", json={}).status_code == 404
        bad = api.post(f"/v1/plans/{plan['id']}/runs", json={"action": "explode"})
        assert bad.status_code == 422


class TestOpenApi:
    def test_plan_endpoints_document_their_bodies_and_errors(self, api: httpx.Client) -> None:
        spec = api.get("/openapi.json").json()
        create_op = spec["paths"]["/v1/plans"]["post"]
        assert set(create_op["requestBody"]["content"]) == {"application/json", "application/yaml"}
        assert {"201", "400", "409", "413", "415", "422"} <= set(create_op["responses"])
        assert json.dumps(spec)  # the whole document serialises
