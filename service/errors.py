"""The one error type and the one JSON shape every refused request gets: {"error": {...}}.

`RequestError` is raised by the API methods' tasks, the middleware and the batch queue;
`error_body` renders it (with the request's ID, and counted on /metrics), and `ERROR_SCHEMA` is
that rendering as the OpenAPI document states it. BentoML's own error bodies (pydantic details,
JSON arrays, plain text) are turned into a `RequestError` by `rewrite_error`, so they come out
of the same renderer.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from starlette.responses import JSONResponse

from service.metrics import metrics

logger = logging.getLogger("bentoml.seqserve")
P = ParamSpec("P")
R = TypeVar("R")
INTERNAL_MESSAGE = "unexpected error; see the server log"
# the codes of statuses BentoML answers itself, when its body does not carry ours
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


@dataclass(frozen=True)
class RequestContext:
    """The request being answered: set by `service.access.RequestIds` for each HTTP request."""

    request_id: str
    route: str  # the path of a known route, else "other" (a label of the metrics)


# copied into the threads a request runs on (anyio's to_thread copies the context)
CURRENT_REQUEST: ContextVar[RequestContext | None] = ContextVar("seqserve_request", default=None)


class RequestError(Exception):
    """A request the service refuses; `field` names the input at fault, when there is one."""

    def __init__(
        self,
        message: str,
        field: str | None = None,
        *,
        code: str = "invalid_argument",
        status: int = 400,
        headers: dict[str, str] | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.field, self.code, self.status = message, field, code, status
        self.headers = headers or {}
        self.details = details or []

    def response(self) -> JSONResponse:
        """This error as an HTTP response (also an ASGI app, which the guard sends as it is)."""
        return JSONResponse(error_body(self), status_code=self.status, headers=self.headers)


def error_body(error: RequestError) -> dict[str, Any]:
    """The JSON body of every error answer; `details` only when there is more than one problem.

    Every error answer passes here exactly once, so this is also where it is counted.
    """
    current = CURRENT_REQUEST.get()
    body: dict[str, Any] = {
        "code": error.code,
        "message": error.message,
        "field": error.field,
        "request_id": current.request_id if current else None,
    }
    if error.details:
        body["details"] = error.details
    if current is not None:
        metrics().errors.labels(current.route, str(error.status), error.code).inc()
    return {"error": body}


_DETAIL = {
    "type": "object",
    "required": ["field", "message"],
    "properties": {"field": {"type": "string", "nullable": True}, "message": {"type": "string"}},
}
ERROR_SCHEMA = {
    "type": "object",
    "description": "Every refused request: one error with a machine-readable code",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "field", "request_id"],
            "properties": {
                "code": {"type": "string", "example": "invalid_argument"},
                "message": {"type": "string"},
                "field": {"type": "string", "nullable": True, "example": "options.beam_size"},
                "request_id": {
                    "type": "string",
                    "nullable": True,
                    "description": "the X-Request-ID of the request (the client's, or one made up)",
                },
                "details": {"type": "array", "items": _DETAIL},
            },
        }
    },
}


def not_ready(reason: str) -> RequestError:
    return RequestError(reason, code="not_ready", status=503, headers={"Retry-After": "5"})


def overloaded(reason: str) -> RequestError:
    return RequestError(reason, code="overloaded", status=503, headers={"Retry-After": "1"})


def internal_error(status: int = 500) -> RequestError:
    """A bug: answered without details, which stay in the server log."""
    return RequestError(INTERNAL_MESSAGE, code="internal", status=status)


def is_out_of_memory(error: BaseException) -> bool:
    """Python's MemoryError, torch's (CUDA) OutOfMemoryError, or the CPU allocator's failure,
    which torch raises as a plain RuntimeError ("DefaultCPUAllocator: can't allocate memory")."""
    if isinstance(error, MemoryError):
        return True
    return isinstance(error, RuntimeError) and (
        type(error).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(error)
    )


def answers_errors(api: Callable[P, R]) -> Callable[P, R]:
    """Turn RequestError (and running out of memory) raised by an API body, plain or async, into
    its response.

    Anything else is a bug: it is logged with its traceback and answered as a bare 500 without
    details, so no stack trace or file path reaches the client.
    """
    if inspect.iscoroutinefunction(api):

        @functools.wraps(api)
        async def awaiting(*args: P.args, **kwargs: P.kwargs) -> Any:
            try:
                return await api(*args, **kwargs)
            except Exception as error:
                return _answer(api.__name__, error)

        return awaiting  # type: ignore[return-value]

    @functools.wraps(api)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return api(*args, **kwargs)
        except Exception as error:
            return _answer(api.__name__, error)

    return wrapper


def _answer(api: str, error: Exception) -> Any:
    """The response to an error an API body raised."""
    if isinstance(error, RequestError):
        return error.response()
    if is_out_of_memory(error):
        logger.warning("out of memory while answering %s: %s", api, error)
        return overloaded("out of memory; retry later").response()
    logger.exception("unexpected error while answering %s", api, exc_info=error)
    return internal_error().response()


class QuietValidationErrors(logging.Filter):
    """BentoML logs every request that fails validation as an ERROR with a traceback; that is a
    client mistake, answered 400, so keep one INFO line and drop the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if type(error).__name__ == "ValidationError" and type(error).__module__.startswith(
            "pydantic"
        ):
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg = f"{record.msg}: invalid input, answered 400"
        return True


# -- BentoML's error bodies -> ours ---------------------------------------------------------


def rewrite_error(status: int, raw: bytes, schema: dict[str, Any]) -> dict[str, Any]:
    """An error body BentoML wrote, in the one shape; bodies already in it pass unchanged."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body
    code = _CODES.get(status, "internal" if status >= 500 else "invalid_argument")
    if status >= 500 and code == "internal":
        return error_body(internal_error(status))
    if isinstance(body, dict) and isinstance(body.get("detail"), list) and body["detail"]:
        return error_body(validation_error(body["detail"], schema))
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]  # BentoMLException: [{"error": message}]
    message = body.get("error") if isinstance(body, dict) else None
    return error_body(
        RequestError(str(message or f"request failed with HTTP {status}"), code=code, status=status)
    )


def validation_error(details: list[dict[str, Any]], schema: dict[str, Any]) -> RequestError:
    """Pydantic error details -> one RequestError; each message names its field and allowed values."""
    found = []
    for detail in details:
        loc = [part for part in detail.get("loc", []) if part != "body"]
        field = field_name(loc)
        message = str(detail.get("msg", "invalid value")).removeprefix("Value error, ")
        if detail.get("type") == "extra_forbidden":  # pydantic: "Extra inputs are not permitted"
            message = unknown_field(allowed_fields(schema, loc[:-1]))
        elif allowed := allowed_values(schema, loc):
            message += f" (allowed: {allowed})"
        found.append({"field": field, "message": f"{field}: {message}" if field else message})
    first = found[0]
    return RequestError(first["message"], first["field"], details=found if len(found) > 1 else None)


def unknown_field(allowed: list[str]) -> str:
    """The words for a field the request may not have."""
    return f"unknown field (allowed: {', '.join(allowed)})" if allowed else "unknown field (none)"


def field_name(loc: list[str | int]) -> str | None:
    """("options", "beam_size") -> "options.beam_size"; ("sentences", 3) -> "sentences[3]"."""
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or None


def allowed_values(schema: dict[str, Any], loc: list[str | int]) -> str | None:
    """The bounds the input JSON schema gives the field at `loc`, in words."""
    node = _node_at(schema, loc)
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


def allowed_fields(schema: dict[str, Any], loc: list[str | int]) -> list[str]:
    """The field names that the object at `loc` of the input JSON schema allows."""
    node = _node_at(schema, loc)
    return list(node.get("properties", {})) if node else []


def _node_at(schema: dict[str, Any], loc: list[str | int]) -> dict[str, Any] | None:
    """The (resolved) schema of the value at `loc`, or None where the schema does not say."""
    node: dict[str, Any] | None = schema
    for part in loc:
        node = _resolve(schema, node)
        if node is None:
            return None
        node = node.get("items") if isinstance(part, int) else node.get("properties", {}).get(part)
    return _resolve(schema, node)


def _resolve(schema: dict[str, Any], node: dict[str, Any] | None) -> dict[str, Any] | None:
    """Follow $ref and pick the non-null branch of Optional fields (an object's own anyOf states
    rules between its fields, not alternative types)."""
    while isinstance(node, dict):
        if "$ref" in node:
            node = schema.get("$defs", {}).get(node["$ref"].rsplit("/", 1)[-1])
        elif "anyOf" in node and "properties" not in node:
            branches = [b for b in node["anyOf"] if b.get("type") != "null"]
            node = branches[0] if len(branches) == 1 else None
        else:
            return node
    return None
