"""Generate the published HTTP contracts: each service's OpenAPI document and the plan JSON Schema
(``GET /v1/plan-schema``), under ``docs/api/``. ``python -m services.cli.openapi`` (``make contracts``)
rewrites them; ``--check`` (``make check``) fails when the committed files are stale.

The documents come from each service's own ``create_app``; nothing is started (no PostgreSQL, Kafka or
cloud): building the app and its OpenAPI document needs none of them."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from services.cli.processes import SERVICES
from shared.config import AuthStrategy, Environment
from shared.runtime import Runtime, ServiceSpec

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "api"
PLAN_SCHEMA = DOCS / "plan.schema.json"
COMMAND = "make contracts (python -m services.cli.openapi)"


def spec_of(service: str) -> ServiceSpec:
    spec: ServiceSpec = importlib.import_module(f"services.{service}.__main__").SPEC
    return spec


def app_of(service: str, **settings: Any) -> FastAPI:
    """The service's app over a runtime that is not started (enough to build its OpenAPI document), with
    Keystone as the auth strategy unless ``settings`` say otherwise."""
    spec = spec_of(service)
    given = {
        "env": Environment.TEST,
        "auth_strategy": AuthStrategy.KEYSTONE,
        "keystone_url": "https://keystone.example/v3",  # published documents are those of Keystone
        "secret_key": "openapi-generator",
        **settings,
    }
    return spec.create_app(Runtime(spec, spec.settings_cls(**given)))


def document_path(service: str) -> Path:
    return DOCS / f"{service}.openapi.json"


def canonical(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def rendered() -> dict[Path, str]:
    from services.planner.plans.spec import plan_json_schema

    files = {document_path(s): canonical(app_of(s).openapi()) for s in SERVICES}
    files[PLAN_SCHEMA] = canonical(plan_json_schema())
    return files


def stale() -> list[str]:
    """The committed files that differ from what the code generates now (or are missing)."""
    return [
        str(path.relative_to(ROOT))
        for path, text in rendered().items()
        if not path.exists() or path.read_text() != text
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed documents are stale")
    args = parser.parse_args(argv)
    if args.check:
        found = stale()
        if found:
            sys.stderr.write(f"stale API contracts: {', '.join(found)}; run `{COMMAND}` and commit them\n")
            return 1
        return 0
    DOCS.mkdir(parents=True, exist_ok=True)
    for path, text in rendered().items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
