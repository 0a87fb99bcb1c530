"""The one error shape every failed request gets: {"error": {"code", "message", "field"}}."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from starlette.responses import JSONResponse

logger = logging.getLogger("bentoml.seqserve")
P = ParamSpec("P")
R = TypeVar("R")


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
    ) -> None:
        super().__init__(message)
        self.message, self.field, self.code, self.status = message, field, code, status
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        """This error as an HTTP response."""
        return error_response(self.status, self.code, self.message, self.field, self.headers)


def not_ready(reason: str) -> RequestError:
    return RequestError(reason, code="not_ready", status=503, headers={"Retry-After": "5"})


def overloaded(reason: str) -> RequestError:
    return RequestError(reason, code="overloaded", status=503, headers={"Retry-After": "1"})


def is_out_of_memory(error: BaseException) -> bool:
    """Python's MemoryError, torch's (CUDA) OutOfMemoryError, or the CPU allocator's failure,
    which torch raises as a plain RuntimeError ("DefaultCPUAllocator: can't allocate memory")."""
    if isinstance(error, MemoryError):
        return True
    return isinstance(error, RuntimeError) and (
        type(error).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(error)
    )


def error_body(
    code: str, message: str, field: str | None = None, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The JSON body of every error answer."""
    error: dict[str, Any] = {"code": code, "message": message, "field": field}
    if details:
        error["details"] = details
    return {"error": error}


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(code, message, field), status_code=status, headers=headers)


def answers_errors(api: Callable[P, R]) -> Callable[P, R]:
    """Turn RequestError (and running out of memory) raised by an API body into the JSON error
    shape.

    Anything else is a bug: it is logged with its traceback and answered as a bare 500 without
    details, so no stack trace or file path reaches the client.
    """

    @functools.wraps(api)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return api(*args, **kwargs)
        except RequestError as error:
            return error.response()  # type: ignore[return-value]
        except Exception as error:
            if is_out_of_memory(error):
                logger.warning("out of memory while answering %s: %s", api.__name__, error)
                return overloaded("out of memory; retry later").response()  # type: ignore[return-value]
            logger.exception("unexpected error while answering %s", api.__name__)
            return error_response(500, "internal", "unexpected error; see the server log")  # type: ignore[return-value]

    return wrapper


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
