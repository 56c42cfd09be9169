"""Reading a plan document from bytes: JSON or YAML, bounded in size, depth and expansion, and
turned into plain JSON values (what PostgreSQL's jsonb stores and the spec validates).

Shared by the HTTP API and the offline ``dcostack plan validate``, so both refuse the same inputs
with the same messages. Pure: no I/O.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

import yaml

from shared.errors import DcostackError

#: The largest document accepted, in bytes (the issue asks for 1 MiB).
MAX_DOCUMENT_BYTES = 1024 * 1024
#: Deeper nesting than any plan needs; the bound keeps the parsers' recursion far from the C stack limit.
MAX_DEPTH = 64
#: Values after YAML aliases are expanded; a billion-laughs document is refused here, not after using GBs.
MAX_VALUES = 200_000

Format = Literal["json", "yaml"]

JSON_TYPES = ("application/json",)
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


class BodyTooLarge(DcostackError):
    status_code = 413


class MediaTypeUnsupported(DcostackError):
    status_code = 415


class DocumentMalformed(DcostackError):
    """The bytes are not a JSON or YAML document that can be read as plain JSON values."""

    status_code = 400


def format_of(content_type: str | None) -> Format:
    """The document format a Content-Type names; ``+json``/``+yaml`` suffixes count."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media in JSON_TYPES or media.endswith("+json"):
        return "json"
    if media in YAML_TYPES or media.endswith("+yaml"):
        return "yaml"
    given = f"Content-Type {media!r}" if media else "no Content-Type"
    raise MediaTypeUnsupported(f"{given}: send the plan as application/json or application/yaml", field="Content-Type")


def parse_document(data: bytes, fmt: Format) -> Any:
    """The document as plain JSON values, or :class:`DocumentMalformed`/:class:`BodyTooLarge` saying why not."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise too_large(len(data))
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DocumentMalformed(f"the {fmt.upper()} document is not UTF-8: {e}") from None
    if not text.strip():
        raise DocumentMalformed(f"the {fmt.upper()} document is empty")
    value = _parse_json(text) if fmt == "json" else _parse_yaml(text)
    return _plain(value)


def too_large(size: int | None = None) -> BodyTooLarge:
    got = f" ({size} bytes)" if size is not None else ""
    return BodyTooLarge(f"the plan document is larger than {MAX_DOCUMENT_BYTES} bytes (1 MiB){got}")


def _refuse_constant(name: str) -> Any:
    raise DocumentMalformed(f"{name} is not a JSON number; plans take finite numbers only")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise DocumentMalformed(f"key {k!r} appears twice in the same object; keep one")
        out[k] = v
    return out


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        raise DocumentMalformed(f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise _too_deep() from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise DocumentMalformed(f"not valid JSON: {e}") from None


class _Loader(yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader):  # type: ignore[misc]
    """YAML's safe loader, except that a date stays the string written (JSON has no date type) and a
    key written twice in one mapping is an error (YAML 1.2 forbids it; PyYAML keeps the last silently)."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # '<<: *base' merges keys that the mapping may override
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # an unhashable key; the base class reports it
            if duplicate:
                raise DocumentMalformed(
                    f"key {key!r} appears twice in the same mapping (line {key_node.start_mark.line + 1}); keep one"
                )
            seen.add(key)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def _parse_yaml(text: str) -> Any:
    # libyaml's composer recurses in C without a depth check, so a deeply nested document would crash
    # the process (measured: 100,000 '[' is a SIGSEGV). Its event parser keeps an explicit stack, so
    # the depth is checked on the events first, and the document is loaded only if it is shallow.
    try:
        depth = 0
        documents = 0
        for event in yaml.parse(text, Loader=_Loader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise _too_deep()
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
            elif isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise DocumentMalformed("the YAML holds more than one document ('---'); send one plan")
        return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.MarkedYAMLError as e:
        where = f" at line {e.problem_mark.line + 1} column {e.problem_mark.column + 1}" if e.problem_mark else ""
        raise DocumentMalformed(f"not valid YAML: {e.problem or e.context}{where}") from None
    except yaml.YAMLError as e:
        raise DocumentMalformed(f"not valid YAML: {e}") from None
    except RecursionError:
        raise _too_deep() from None


def _too_deep() -> DocumentMalformed:
    return DocumentMalformed(f"the document nests deeper than {MAX_DEPTH} levels")


def _path(parts: list[str | int]) -> str:
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def _plain(value: Any) -> Any:
    """A copy made of dict/list/str/int/float/bool/None only, with string keys and finite numbers.

    YAML aliases are copied out, so the result is a tree; counting the copies bounds the expansion.
    """
    count = 0

    def walk(node: Any, parts: list[str | int], ancestors: tuple[int, ...]) -> Any:
        nonlocal count
        count += 1
        if count > MAX_VALUES:
            raise DocumentMalformed(
                f"the document expands to more than {MAX_VALUES} values (YAML aliases repeating a large node?)"
            )
        if isinstance(node, dict | list):
            if id(node) in ancestors:
                raise DocumentMalformed(f"{_path(parts)} contains itself (a recursive YAML alias)")
            if len(ancestors) >= MAX_DEPTH:
                raise _too_deep()
            inner = (*ancestors, id(node))
            if isinstance(node, list):
                return [walk(v, [*parts, i], inner) for i, v in enumerate(node)]
            out: dict[str, Any] = {}
            for k, v in node.items():
                if not isinstance(k, str):
                    raise DocumentMalformed(
                        f"{_path(parts)} has the key {k!r}, which is not a string; quote it (YAML reads "
                        "on/off/yes/no as booleans and bare numbers as numbers)"
                    )
                out[k] = walk(v, [*parts, k], inner)
            return out
        if node is None or isinstance(node, str | bool | int):
            return node
        if isinstance(node, float):
            if not math.isfinite(node):
                raise DocumentMalformed(f"{_path(parts)} is {node}; plans take finite numbers only")
            return node
        raise DocumentMalformed(
            f"{_path(parts)} is a YAML {type(node).__name__}, which JSON cannot hold; write it as a string"
        )

    return walk(value, [], ())
