"""Generate the published contracts from the registry: one JSON Schema per event type and an
AsyncAPI 3 document. ``python -m shared.events.generate`` rewrites them; ``--check`` fails when the
committed files are stale; ``--pin`` records the schema hashes that the contract test guards."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from shared.events import REGISTRY
from shared.events.base import check_lane
from shared.topics import DOMAINS, Lane, commands_topic, events_topic, lane_of

ROOT = Path(__file__).parent
SCHEMA_DIR = ROOT / "schemas"
SAMPLES_DIR = ROOT / "samples"
ASYNCAPI = ROOT / "asyncapi.yaml"
PINS = ROOT / "schema-hashes.json"

#: Which channels carry which types, by lane (a probe command goes to every domain's bulk commands topic).
EXECUTORS = ("compute", "network", "storage")  # the domain services that apply plan steps
ANSWERING = [d for d in DOMAINS if d != "planner"]  # every domain service answers the self-check
CHANNELS: dict[str, list[str]] = {
    # control lane: what a run waits for
    **{
        commands_topic(d): [
            "io.dcostack.planner.step.apply.v1",
            "io.dcostack.planner.step.destroy.v1",
            "io.dcostack.planner.step.apply.v2",
            "io.dcostack.planner.step.destroy.v2",
        ]
        for d in EXECUTORS
    },
    **{events_topic(d): ["io.dcostack.cloud.step.progressed.v1"] for d in EXECUTORS},
    events_topic("planner"): ["io.dcostack.planner.run.changed.v1", "io.dcostack.planner.run.changed.v2"],
    # bulk lane: large or bursty
    **{commands_topic(d, Lane.BULK): ["io.dcostack.platform.probe.run.v1"] for d in ANSWERING},
    **{events_topic(d, Lane.BULK): ["io.dcostack.platform.probe.answered.v1"] for d in ANSWERING},
}
LANE_TEXT = {
    Lane.CONTROL: "Control lane: what a run waits for (step commands, step progress, run changes).",
    Lane.BULK: "Bulk lane: what can be large or bursty (self-check probes; later notifications, samples, "
    "metrics, logs). Consumed in separate consumer groups, so it never delays the control lane.",
}


def lane_checked(topic: str, types: list[str]) -> Lane:
    """The lane of a channel; every type listed on it must belong to that lane."""
    lane = lane_of(topic)
    if lane is None:
        raise ValueError(f"{topic} belongs to no lane; name it in shared/topics.py")
    for t in types:
        check_lane(REGISTRY[t], topic)
    return lane


def schema_of(type_: str) -> dict[str, Any]:
    cls = REGISTRY[type_]
    schema = cls.model_json_schema(mode="serialization")
    schema["$id"] = f"https://dcostack.io/schemas/{type_}.json"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, indent=2) + "\n"


def schema_hash(type_: str) -> str:
    return hashlib.sha256(canonical(schema_of(type_)).encode()).hexdigest()


def asyncapi() -> dict[str, Any]:
    messages: dict[str, Any] = {}
    for type_ in sorted(REGISTRY):
        cls = REGISTRY[type_]
        sample = SAMPLES_DIR / f"{type_}.json"
        message: dict[str, Any] = {
            "name": type_,
            "title": cls.__name__,
            "summary": (cls.__doc__ or "").strip().splitlines()[0],
            "description": (cls.__doc__ or "").strip(),
            "contentType": "application/json",
            "tags": [{"name": f"lane:{cls.LANE}"}],
            "bindings": {"kafka": {"bindingVersion": "0.5.0"}},
            "headers": {
                "type": "object",
                "required": ["ce_specversion", "ce_id", "ce_source", "ce_type"],
                "properties": {
                    "ce_specversion": {"const": "1.0"},
                    "ce_id": {"type": "string"},
                    "ce_source": {"type": "string"},
                    "ce_type": {"const": type_},
                    "ce_time": {"type": "string", "format": "date-time"},
                    "ce_subject": {"type": "string"},
                    "ce_correlationid": {"type": "string", "description": "The plan-run step"},
                    "ce_projectid": {"type": "string", "description": "The Keystone project"},
                    "ce_traceparent": {"type": "string", "description": "W3C trace context"},
                },
            },
            "payload": {"$ref": f"schemas/{type_}.json"},
        }
        if sample.exists():
            message["examples"] = [{"payload": json.loads(sample.read_text())}]
        messages[cls.__name__] = message
    channels = {
        topic.replace(".", "_"): {
            "address": topic,
            "description": LANE_TEXT[lane_checked(topic, types)],
            "tags": [{"name": f"lane:{lane_checked(topic, types)}"}],
            "messages": {
                REGISTRY[t].__name__: {"$ref": f"#/components/messages/{REGISTRY[t].__name__}"} for t in types
            },
        }
        for topic, types in CHANNELS.items()
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "DCOSTACK events",
            "version": "1.0.0",
            "description": "CloudEvents 1.0 in Kafka binary content mode: attributes as ce_* headers, JSON payload.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "components": {"messages": messages},
    }


def rendered() -> dict[Path, str]:
    files = {SCHEMA_DIR / f"{t}.json": canonical(schema_of(t)) for t in sorted(REGISTRY)}
    files[ASYNCAPI] = yaml.safe_dump(asyncapi(), sort_keys=False, width=110)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed files are stale")
    parser.add_argument("--pin", action="store_true", help="record the current schema hashes")
    args = parser.parse_args(argv)
    files = rendered()
    if args.check:
        stale = [
            str(p.relative_to(ROOT.parent.parent))
            for p, text in files.items()
            if not p.exists() or p.read_text() != text
        ]
        if stale:
            sys.stderr.write(f"stale event contracts: {', '.join(stale)}; run `python -m shared.events.generate`\n")
            return 1
        return 0
    SCHEMA_DIR.mkdir(exist_ok=True)
    for path, text in files.items():
        path.write_text(text)
    if args.pin:
        PINS.write_text(canonical({t: schema_hash(t) for t in sorted(REGISTRY)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
