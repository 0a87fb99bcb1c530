"""ASGI middleware in front of the API routes: media types, body size, form checks (no unknown or
repeated fields), and one JSON error shape for the errors BentoML itself answers. The cap on
requests in flight is the door in front of it (service/admission.py)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import IO, Any

from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartParser

from service.errors import RequestError, rewrite_error, unknown_field

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_FORM_JSON_DEPTH = 16  # nesting of a JSON value sent as a form field (Python's json recurses)
SPOOL_BYTES = 1024 * 1024  # bodies beyond this wait on disk, not in memory
CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class RouteRule:
    """What one API route accepts."""

    media_types: frozenset[str]
    max_bytes: int
    file_fields: frozenset[str]  # multipart fields that must be file uploads
    schema: dict[str, Any]  # the route's input JSON schema: its fields, and ranges for errors
    other_methods: frozenset[str] = frozenset()  # besides POST, passed on unchecked (GET /models)


class RequestGuard:
    """Checks a request to an API route before BentoML parses it; other paths pass untouched.

    BentoML would otherwise unpickle `application/vnd.bentoml+pickle` bodies in non-main
    services, fetch URLs given in place of files, read bodies of any size and answer several
    error shapes; here each of those becomes one JSON error with a 4xx status.
    """

    def __init__(self, app: ASGIApp, routes: dict[str, RouteRule]) -> None:
        self.app, self.routes = app, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rule = self.routes.get(scope.get("path", "")) if scope["type"] == "http" else None
        if rule is None:
            await self.app(scope, receive, send)
            return
        if scope.get("method") in rule.other_methods:
            await self.app(scope, receive, send)
            return
        if scope.get("method") != "POST":
            allowed = ", ".join(sorted({"POST", *rule.other_methods}))
            refused = RequestError(
                f"use {allowed}", code="method_not_allowed", status=405, headers={"Allow": allowed}
            )
            await refused.response()(scope, receive, send)
            return
        try:
            body = await self._checked_body(scope, receive, rule)
        except RequestError as refused:
            await refused.response()(scope, receive, send)
            return
        if body is None:  # the client disconnected
            return
        with body:
            await self.app(scope, _replay(body, receive), _error_rewriter(send, rule.schema))

    async def _checked_body(
        self, scope: Scope, receive: Receive, rule: RouteRule
    ) -> IO[bytes] | None:
        headers = Headers(scope=scope)
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type not in rule.media_types:
            raise RequestError(
                f"Content-Type {media_type or '(none)'!r} is not accepted here; send "
                f"{' or '.join(sorted(rule.media_types))}",
                code="unsupported_media_type",
                status=415,
            )
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > rule.max_bytes):
            raise _too_large(rule)
        body = await _read_body(receive, rule)
        if body is not None and media_type == "multipart/form-data":
            try:
                await _check_form(headers, body, rule)
            except RequestError:
                body.close()
                raise
        return body


async def _read_body(receive: Receive, rule: RouteRule) -> IO[bytes] | None:
    """The whole body, spooled to disk past 1 MiB and refused as soon as it passes the limit."""
    body = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 - the caller closes it
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            body.close()
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > rule.max_bytes:
            body.close()
            raise _too_large(rule)
        body.write(chunk)
        if not message.get("more_body", False):
            body.seek(0)
            return body


def _too_large(rule: RouteRule) -> RequestError:
    return RequestError(
        f"request body is larger than {rule.max_bytes:,} bytes",
        code="payload_too_large",
        status=413,
    )


async def _check_form(headers: Headers, body: IO[bytes], rule: RouteRule) -> None:
    """Parse the form the way BentoML will (same parser, same limits) and check its parts."""

    async def stream() -> Any:
        while chunk := body.read(CHUNK_BYTES):
            yield chunk

    try:
        form = await MultiPartParser(headers, stream()).parse()
    except Exception as error:
        message = getattr(error, "message", "") or "malformed multipart body"
        raise RequestError(f"malformed multipart/form-data: {message}") from None
    fields = rule.schema.get("properties", {})
    try:
        for name, value in form.multi_items():
            if name not in fields:
                raise RequestError(f"{name}: {unknown_field(list(fields))}", name or None)
            if fields[name].get("type") != "array" and len(form.getlist(name)) > 1:
                raise RequestError(f"{name}: given more than once; send it once", name)
            if name in rule.file_fields and not isinstance(value, UploadFile):
                raise RequestError(
                    f"{name} must be uploaded as a file (multipart file part); URLs and text "
                    "are not accepted and never fetched",
                    name,
                    code="invalid_image",
                )
            if name not in rule.file_fields and isinstance(value, UploadFile):
                raise RequestError(f"{name} must be a text field, not a file", name)
            if isinstance(value, str) and _json_depth(value) > MAX_FORM_JSON_DEPTH:
                raise RequestError(f"{name} nests deeper than {MAX_FORM_JSON_DEPTH}", name)
    finally:
        await form.close()
        body.seek(0)


def _json_depth(text: str) -> int:
    """Deepest nesting of brackets outside JSON strings."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _replay(body: IO[bytes], receive: Receive) -> Receive:
    """Hand the app the checked body again, chunk by chunk; then the real receive."""
    done = False

    async def replayed() -> Message:
        nonlocal done
        if done:
            return await receive()
        chunk = body.read(CHUNK_BYTES)
        more = bool(chunk) and body.read(1) != b""
        if more:
            body.seek(-1, 1)
        done = not more
        return {"type": "http.request", "body": chunk, "more_body": more}

    return replayed


def _error_rewriter(send: Send, schema: dict[str, Any]) -> Send:
    """Hold back error responses and put their body into the one error shape."""
    start: Message | None = None
    chunks: list[bytes] = []

    async def rewriting(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start" and message["status"] >= 400:
            start = message
            return
        if start is None:
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = json.dumps(rewrite_error(start["status"], b"".join(chunks), schema)).encode()
        headers = [
            (k, v)
            for k, v in start.get("headers", [])
            if k.lower() not in (b"content-length", b"content-type")
        ]
        headers += [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return rewriting
