"""Published contracts stay true: generated files are fresh, schemas do not change under a version,
and every sample validates."""

from __future__ import annotations

import json

import pytest

from shared.events import REGISTRY
from shared.events.generate import ASYNCAPI, PINS, SAMPLES_DIR, main, rendered, schema_hash


def test_generated_schemas_and_asyncapi_are_committed_and_fresh() -> None:
    assert main(["--check"]) == 0, "run `python -m shared.events.generate` and commit the result"


@pytest.mark.parametrize("type_", sorted(REGISTRY))
def test_schema_has_not_changed_under_its_version(type_: str) -> None:
    pins = json.loads(PINS.read_text())
    assert type_ in pins, f"{type_} is new: pin it with `python -m shared.events.generate --pin`"
    assert schema_hash(type_) == pins[type_], (
        f"the schema of {type_} changed. Bump the version (a new ...V2 class) or add a default to the new "
        "field; if you only added fields with defaults, re-pin with `python -m shared.events.generate --pin`"
    )


@pytest.mark.parametrize("type_", sorted(REGISTRY))
def test_sample_exists_and_validates(type_: str) -> None:
    sample = SAMPLES_DIR / f"{type_}.json"
    assert sample.exists(), f"write an example payload at {sample}"
    REGISTRY[type_].model_validate_json(sample.read_text())


def test_asyncapi_lists_every_type_and_its_references_resolve() -> None:
    import yaml

    doc = yaml.safe_load(rendered()[ASYNCAPI])
    assert doc["asyncapi"] == "3.0.0"
    messages = doc["components"]["messages"]
    assert {m["name"] for m in messages.values()} == set(REGISTRY)
    for channel in doc["channels"].values():
        for ref in channel["messages"].values():
            assert ref["$ref"].removeprefix("#/components/messages/") in messages
