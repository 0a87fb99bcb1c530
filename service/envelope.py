"""Turn the error bodies BentoML writes (pydantic details, JSON arrays, plain text) into ours."""

from __future__ import annotations

import json
from typing import Any

from service.errors import error_body

_CODES = {
    400: "invalid_argument",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    503: "unavailable",
    504: "timeout",
}


def rewrite_error(status: int, raw: bytes, schema: dict[str, Any]) -> dict[str, Any]:
    """An error body in the one shape; bodies already in it pass unchanged."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body
    code = _CODES.get(status, "internal" if status >= 500 else "invalid_argument")
    if status >= 500 and code == "internal":
        return error_body(code, "unexpected error; see the server log")
    if isinstance(body, dict) and isinstance(body.get("detail"), list) and body["detail"]:
        return _validation_errors(body["detail"], schema)
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]  # BentoMLException: [{"error": message}]
    message = body.get("error") if isinstance(body, dict) else None
    return error_body(code, str(message or f"request failed with HTTP {status}"))


def _validation_errors(details: list[dict[str, Any]], schema: dict[str, Any]) -> dict[str, Any]:
    """Pydantic error details -> our shape; each message names its field and allowed values."""
    found = []
    for detail in details:
        loc = [part for part in detail.get("loc", []) if part != "body"]
        field = field_name(loc)
        message = str(detail.get("msg", "invalid value")).removeprefix("Value error, ")
        allowed = allowed_values(schema, loc)
        if allowed:
            message += f" (allowed: {allowed})"
        found.append({"field": field, "message": f"{field}: {message}" if field else message})
    first = found[0]
    return error_body(
        "invalid_argument", first["message"], first["field"], found if len(found) > 1 else None
    )


def field_name(loc: list[str | int]) -> str | None:
    """("options", "beam_size") -> "options.beam_size"; ("sentences", 3) -> "sentences[3]"."""
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or None


def allowed_values(schema: dict[str, Any], loc: list[str | int]) -> str | None:
    """The bounds the input JSON schema gives the field at `loc`, in words."""
    node: dict[str, Any] | None = schema
    for part in loc:
        node = _resolve(schema, node)
        if node is None:
            return None
        node = node.get("items") if isinstance(part, int) else node.get("properties", {}).get(part)
    node = _resolve(schema, node)
    if node is None:
        return None
    for low, high, unit in (
        ("minimum", "maximum", ""),
        ("minLength", "maxLength", " characters"),
        ("minItems", "maxItems", " items"),
    ):
        if low in node or high in node:
            return f"{node.get(low, 'any')} to {node.get(high, 'any')}{unit}"
    return None


def _resolve(schema: dict[str, Any], node: dict[str, Any] | None) -> dict[str, Any] | None:
    """Follow $ref and pick the non-null branch of Optional fields."""
    while isinstance(node, dict):
        if "$ref" in node:
            node = schema.get("$defs", {}).get(node["$ref"].rsplit("/", 1)[-1])
        elif "anyOf" in node:
            branches = [b for b in node["anyOf"] if b.get("type") != "null"]
            node = branches[0] if len(branches) == 1 else None
        else:
            return node
    return None
