"""The published OpenAPI document (/docs.json), corrected to say what the service really answers.

BentoML documents every API's errors as `{"error": "<text>"}` with statuses 400, 404 and 500;
the service answers one JSON shape (`service.errors.ERROR_SCHEMA`) with the statuses listed in
docs/service.md. Clients generated from the document, and schema checkers such as
schemathesis, would otherwise reject every real error answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from service.errors import ERROR_SCHEMA
from service.guard import ASGIApp, Message, Receive, Scope, Send

DOCUMENT_PATH = "/docs.json"
ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
API_ERRORS = {
    "400": "Invalid input: bad JSON or form, an option out of range, a bad image, unknown model",
    "405": "Only POST is allowed",
    "413": "Request body above the route's limit",
    "415": "Content-Type other than the one the route accepts",
    "429": "Too many requests in flight; retry after `Retry-After` seconds",
    "500": "A bug; details are in the server log only",
    "503": "Models not ready, queue full or out of memory; retry after `Retry-After` seconds",
    "504": "No answer within the request time limit",
}
PROBE_ERRORS = {"503": "Not ready (still loading, or a model failed its checks) or not alive"}


def corrected_document(document: dict[str, Any], api_paths: Iterable[str]) -> dict[str, Any]:
    """`document` with the API operations' error responses replaced by the real ones."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas["ErrorResponse"] = ERROR_SCHEMA
    for name in ("InvalidArgument", "NotFound", "InternalServerError"):
        schemas.pop(name, None)
    paths = document.get("paths", {})
    for path in api_paths:
        for operation in paths.get(path, {}).values():
            _replace_errors(operation, API_ERRORS, with_body=True)
            _require_body(operation)
    for path in ("/livez", "/readyz", "/healthz"):
        for operation in paths.get(path, {}).values():
            _replace_errors(operation, PROBE_ERRORS, with_body=False)
    return document


def _require_body(operation: dict[str, Any]) -> None:
    """Every API needs a body; a property defaulting to null also accepts null (BentoML drops
    the null branch of `X | None` inputs from the schema)."""
    body = operation.get("requestBody")
    if body is None:
        return
    body["required"] = True
    for media in body.get("content", {}).values():
        for prop in media.get("schema", {}).get("properties", {}).values():
            if "default" in prop and prop["default"] is None and "type" in prop:
                prop["nullable"] = True


def _replace_errors(operation: dict[str, Any], errors: dict[str, str], with_body: bool) -> None:
    responses = operation.setdefault("responses", {})
    for status in [s for s in responses if not s.startswith("2")]:
        del responses[status]
    for status, description in errors.items():
        responses[status] = {"description": description}
        if with_body:
            responses[status]["content"] = {"application/json": {"schema": ERROR_REF}}


class OpenAPIDocument:
    """ASGI middleware: rewrites BentoML's GET /docs.json answer with `corrected_document`."""

    def __init__(self, app: ASGIApp, api_paths: Iterable[str]) -> None:
        self.app, self.api_paths = app, tuple(api_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != DOCUMENT_PATH:
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def buffered(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False) or start is None:
                return
            body = b"".join(chunks)
            if start["status"] == 200:
                document = corrected_document(json.loads(body), self.api_paths)
                body = json.dumps(document).encode()
            headers = [
                (k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"
            ]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})

        await self.app(scope, receive, buffered)
