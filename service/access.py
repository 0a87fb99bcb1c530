"""In front of every route: which request this is (X-Request-ID), who may call (API keys), and
which web pages may call from a browser (CORS).

Order, outermost first (service/service.py adds them so): `RequestIds`, CORS, `ApiKeys`, then
the guard of the API routes. A request ID is therefore on every answer, a CORS preflight never
needs a key, and a 401 carries CORS headers that let a page read it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import uuid
from collections.abc import Sequence
from typing import Any

from starlette.datastructures import Headers

from service.errors import CURRENT_REQUEST, RequestContext, RequestError
from service.guard import ASGIApp, Message, Receive, Scope, Send
from service.settings import Settings

REQUEST_ID_HEADER = "X-Request-ID"
MAX_REQUEST_ID = 128
# printable ASCII without spaces: safe in a header, a log line and JSON as it is
_VALID_REQUEST_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_REQUEST_ID}}}")
HEALTH_PATHS = ("/livez", "/readyz", "/healthz")
METRICS_PATH = "/metrics"
# the API's documentation and the demo page: the same for every deployment, they reveal no data
DOCUMENT_PATHS = ("/", "/docs.json", "/schema.json", "/demo")
DOCUMENT_PREFIXES = ("/static_content/", "/demo/")
# what a page on another origin may send and read (the caption overlay's headers included)
CORS_HEADERS = ["Authorization", "Content-Type", REQUEST_ID_HEADER]
CORS_EXPOSED = [REQUEST_ID_HEADER, "Retry-After", "X-Caption", "X-Token", "X-Model"]


class RequestIds:
    """Every HTTP request gets an ID: the client's `X-Request-ID` when it is 1 to 128 printable
    ASCII characters without spaces, else a new random one. The answer echoes it in the same
    header, every error body carries it (`service.errors.error_body`) and the access log line
    ends with it (`RequestIdLog`). Paths other than `routes` are "other" in the metrics' route
    label, so that requests to made-up paths cannot grow it without bound."""

    def __init__(self, app: ASGIApp, routes: Sequence[str]) -> None:
        self.app, self.routes = app, frozenset(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get(REQUEST_ID_HEADER)
        request_id = given if given and _VALID_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        header = (REQUEST_ID_HEADER.lower().encode(), request_id.encode())

        async def with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        path = scope.get("path", "")
        route = path if path in self.routes else "other"
        token = CURRENT_REQUEST.set(RequestContext(request_id, route))
        try:
            await self.app(scope, receive, with_id)
        finally:
            CURRENT_REQUEST.reset(token)


class RequestIdLog(logging.Filter):
    """Ends each log line written while answering a request with `request_id=<its ID>`."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = CURRENT_REQUEST.get()
        if current is None or getattr(record, "request_id", None) or isinstance(record.args, dict):
            return True
        record.request_id = current.request_id
        message = str(record.msg) if record.args else str(record.msg).replace("%", "%%")
        record.msg = f"{message} request_id=%s"
        record.args = (*(record.args or ()), current.request_id)
        return True


class ApiKeys:
    """With keys configured, every request must send `Authorization: Bearer <key>` (what
    `bentoml.SyncHTTPClient(url, token=key)` sends), except to the open paths: the health probes
    and /metrics as configured, and the API documentation and demo page. Otherwise: 401.

    Keys are compared as SHA-256 digests with `hmac.compare_digest`, against every key, so the
    time an answer takes tells nothing about how much of a key was right, nor its length.
    """

    def __init__(self, app: ASGIApp, keys: Sequence[str], open_paths: Sequence[str]) -> None:
        self.app = app
        self.digests = [_digest(key.encode()) for key in keys]
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.digests or self._open(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        scheme, _, presented = Headers(scope=scope).get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not self._known(presented.strip().encode()):
            refused = RequestError(
                "a valid API key is required: send the header 'Authorization: Bearer <key>'",
                code="unauthorized",
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="seqserve"'},
            )
            await refused.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _open(self, path: str) -> bool:
        return path in self.open_paths or path.startswith(DOCUMENT_PREFIXES)

    def _known(self, presented: bytes) -> bool:
        digest = _digest(presented)
        found = False
        for known in self.digests:  # no early exit
            found |= hmac.compare_digest(digest, known)
        return found


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def api_key_options(settings: Settings) -> dict[str, Any]:
    """`ApiKeys`' arguments for these settings (no keys: it lets everything through)."""
    open_paths = [*DOCUMENT_PATHS]
    if settings.open_health:
        open_paths += HEALTH_PATHS
    if settings.open_metrics:
        open_paths.append(METRICS_PATH)
    return {"keys": settings.api_key_list(), "open_paths": open_paths}


def cors_options(settings: Settings) -> dict[str, Any] | None:
    """Starlette `CORSMiddleware` arguments for CORS_ORIGINS, or None when CORS is off."""
    origins = settings.cors_origin_list
    if not origins:
        return None
    return {
        "allow_origins": origins,
        "allow_methods": ["GET", "POST"],
        "allow_headers": CORS_HEADERS,
        "expose_headers": CORS_EXPOSED,
        "max_age": 600,
    }
