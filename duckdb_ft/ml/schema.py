"""The ``response_format`` of AI_COMPLETE and COMPLETE: ``{"type": "json", "schema": {...}}`` read and its JSON
Schema checked against the subset constrained decoding guarantees, before anything is generated (pure Python: no
torch, no grammar engine).

Supported: ``type`` (object, array, string, number, integer, boolean, null, or a list of them), ``properties``,
``required``, ``additionalProperties`` (true or false; default false: the answer has only the listed properties),
``items``, ``minItems``, ``maxItems``, ``enum``, ``const``, ``minLength``, ``maxLength``, ``pattern`` (a regular
expression), ``minimum``, ``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum``, nested objects and arrays, and the
annotations ``title``, ``description``, ``$schema``, ``$id``, ``$comment``, ``examples``, ``default`` (ignored).
Anything else (``anyOf``, ``$ref``, ``format``, ...) is an error naming the keyword and where it is.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..errors import InvalidArgument

TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
ANNOTATIONS = {"title", "description", "$schema", "$id", "$comment", "examples", "default"}
KEYWORDS = {"type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems", "enum",
            "const", "minLength", "maxLength", "pattern", "minimum", "maximum", "exclusiveMinimum",
            "exclusiveMaximum"} | ANNOTATIONS
#: Deeper schemas are refused: a runaway nesting is a mistake, and each level costs closing tokens.
MAX_DEPTH = 16


def parse_response_format(value: Any) -> str | None:
    """``response_format`` as given (a dict, JSON text, or None) checked; returns the schema as canonical JSON text
    (sorted keys), or None when there is no response format.

    Raises:
        InvalidArgument: not ``{"type": "json", "schema": {...}}``, or a schema outside the supported subset.
    """
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise InvalidArgument(f"response_format is not valid JSON ({e.msg} at position {e.pos})") from None
        if isinstance(value, str):  # JSON text given where a struct was expected: to_json quoted it
            return parse_response_format(value)
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"type", "schema"} or value.get("type") != "json" \
            or not isinstance(value.get("schema"), dict):
        raise InvalidArgument("response_format must be {'type': 'json', 'schema': {...a JSON Schema object...}}, "
                              f"got {json.dumps(value)[:120]}")
    check_schema(value["schema"])
    return json.dumps(value["schema"])


def check_schema(schema: Any, path: str = "$", depth: int = 0) -> None:
    """Raise InvalidArgument at the first thing in ``schema`` that constrained decoding does not support."""
    if depth > MAX_DEPTH:
        raise _bad(path, f"nests deeper than {MAX_DEPTH} levels")
    if not isinstance(schema, dict):
        raise _bad(path, f"must be a JSON Schema object, got {json.dumps(schema)[:60]}")
    unknown = sorted(set(schema) - KEYWORDS)
    if unknown:
        raise _bad(path, f"uses unsupported JSON Schema keyword(s) {', '.join(unknown)}; supported: "
                         f"{', '.join(sorted(KEYWORDS - ANNOTATIONS))}")
    types = schema.get("type")
    listed = [types] if isinstance(types, str) else types
    if types is not None and (not isinstance(listed, list) or not listed
                              or not all(isinstance(t, str) and t in TYPES for t in listed)):
        raise _bad(path, f"has type {json.dumps(types)}; valid types: {', '.join(TYPES)}")
    if types is None and "enum" not in schema and "const" not in schema:
        raise _bad(path, "needs a 'type' (or an 'enum' or 'const')")
    if "enum" in schema and (not isinstance(schema["enum"], list) or not schema["enum"]):
        raise _bad(path, "has an 'enum' that is not a non-empty list of values")
    props = schema.get("properties", {})
    if not isinstance(props, dict) or not all(isinstance(k, str) for k in props):
        raise _bad(path, "has 'properties' that are not an object of property schemas")
    for name, sub in props.items():
        check_schema(sub, f"{path}.properties.{name}", depth + 1)
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise _bad(path, "has 'required' that is not a list of property names")
    missing = [r for r in required if r not in props]
    if missing:
        raise _bad(path, f"requires {', '.join(missing)}, which 'properties' does not define")
    if not isinstance(schema.get("additionalProperties", False), bool):
        raise _bad(path, "has an 'additionalProperties' schema; only true or false are supported")
    if "items" in schema:
        check_schema(schema["items"], f"{path}.items", depth + 1)
    for key in ("minItems", "maxItems", "minLength", "maxLength"):
        v = schema.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise _bad(path, f"has {key} {json.dumps(v)}; it must be an integer of at least 0")
    for lo, hi in (("minItems", "maxItems"), ("minLength", "maxLength"), ("minimum", "maximum")):
        if lo in schema and hi in schema and _number(schema[lo]) and _number(schema[hi]) and schema[lo] > schema[hi]:
            raise _bad(path, f"has {lo} {schema[lo]} above {hi} {schema[hi]}")
    for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if key in schema and not _number(schema[key]):
            raise _bad(path, f"has {key} {json.dumps(schema[key])}; it must be a number")
    if "pattern" in schema:
        try:
            re.compile(schema["pattern"])
        except (re.error, TypeError) as e:
            raise _bad(path, f"has a pattern that is not a regular expression ({e})") from None


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _bad(path: str, what: str) -> InvalidArgument:
    return InvalidArgument(f"response_format schema at {path} {what}")
