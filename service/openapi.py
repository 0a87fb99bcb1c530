"""The published OpenAPI document (/docs.json), corrected to say what the service really answers
and amended with the rules that depend on what is loaded.

BentoML documents every API's errors as `{"error": "<text>"}` with statuses 400, 404 and 500;
the service answers one JSON shape (`service.errors.ERROR_SCHEMA`) with the statuses listed in
docs/service.md. Clients generated from the document, and schema checkers such as
schemathesis, would otherwise reject every real error answer. The tasks then state their own
rules (`amend`): which translators `model` may name, which units /inspect knows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from service.errors import ERROR_SCHEMA
from service.guard import ASGIApp, Message, Receive, Scope, Send
from service.images import ALLOWED_FORMATS, MEDIA_TYPES

DOCUMENT_PATH = "/docs.json"
ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
API_ERRORS = {
    "400": "Invalid input: bad JSON or form, an option out of range, a bad image, unknown model",
    "405": "Only POST is allowed",
    "413": "Request body above the route's limit",
    "415": "Content-Type other than the one the route accepts",
    "401": "No valid API key (only when the service is configured with keys)",
    "429": "Too many requests in flight; retry after `Retry-After` seconds",
    "500": "A bug; details are in the server log only",
    "503": "Models not ready, queue full or out of memory; retry after `Retry-After` seconds",
    "504": "No answer within the request time limit",
}
PROBE_ERRORS = {"503": "Not ready (still loading, or a model failed its checks) or not alive"}


REQUEST_ID = {
    "name": "X-Request-ID",
    "in": "header",
    "required": False,
    "description": "the request's ID, echoed in the answer's X-Request-ID, error bodies and the "
    "access log: 1 to 128 printable ASCII characters without spaces; any other value (or none) "
    "is replaced by a new random ID",
    "schema": {"type": "string"},
}
BEARER = {"ApiKey": {"type": "http", "scheme": "bearer", "description": "SEQSERVE_API_KEYS"}}


def request_schema(document: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The request body schema of the POST operation at `path`, to amend in place."""
    operation = document.get("paths", {}).get(path, {}).get("post", {})
    for media in operation.get("requestBody", {}).get("content", {}).values():
        return media.get("schema")
    return None


def corrected_document(
    document: dict[str, Any], api_paths: Iterable[str], with_keys: bool = False
) -> dict[str, Any]:
    """`document` with the API operations' error responses replaced by the real ones, the
    X-Request-ID header stated, and (`with_keys`) the bearer API key required by the APIs."""
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["ErrorResponse"] = ERROR_SCHEMA
    if with_keys:
        components["securitySchemes"] = BEARER
    for name in ("InvalidArgument", "NotFound", "InternalServerError"):
        schemas.pop(name, None)
    paths = document.get("paths", {})
    for path in api_paths:
        for operation in paths.get(path, {}).values():
            _replace_errors(operation, API_ERRORS, with_body=True)
            _require_body(operation)
            _image_parts(operation)
            operation.setdefault("parameters", []).append(REQUEST_ID)
            if with_keys:
                operation["security"] = [{"ApiKey": []}]
    if "post" in paths.get("/models", {}):  # the same answer by GET, for browsers and curl
        get = {**paths["/models"]["post"], "operationId": "seqserve__model_info_get"}
        get.pop("requestBody", None)
        paths["/models"]["get"] = get
    for path in ("/livez", "/readyz", "/healthz"):
        for operation in paths.get(path, {}).values():
            _replace_errors(operation, PROBE_ERRORS, with_body=False)
    return document


def _image_parts(operation: dict[str, Any]) -> None:
    """State what a file part of a form must be: a file part (one with a filename), holding an
    image whatever Content-Type it declares."""
    form = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data")
    if form is None:
        return
    for name, prop in form.get("schema", {}).get("properties", {}).items():
        if prop.get("format") == "binary" or prop.get("items", {}).get("format") == "binary":
            disposition = f'form-data; name="{name}"; filename="{name}.jpg"'
            form.setdefault("encoding", {})[name] = {
                "contentType": MEDIA_TYPES,
                "headers": {
                    "Content-Disposition": {"schema": {"type": "string"}, "example": disposition}
                },
            }
            prop["description"] = (
                f"a file part (with a filename) holding a {ALLOWED_FORMATS} image, told by its "
                "bytes (the declared type is ignored), of at most SEQSERVE_MAX_IMAGE_PIXELS (25 "
                "megapixels by default); text or a URL is refused, never fetched"
            )


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
    """ASGI middleware: rewrites BentoML's GET /docs.json answer with `corrected_document`, then
    lets `amend` add what depends on the loaded models."""

    def __init__(
        self,
        app: ASGIApp,
        api_paths: Iterable[str],
        with_keys: bool = False,
        amend: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.app, self.api_paths = app, tuple(api_paths)
        self.with_keys, self.amend = with_keys, amend

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
                document = corrected_document(json.loads(body), self.api_paths, self.with_keys)
                if self.amend is not None:
                    self.amend(document)
                body = json.dumps(document).encode()
            headers = [
                (k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"
            ]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})

        await self.app(scope, receive, buffered)
