"""The checks every answer of the reliability suite must pass."""

from __future__ import annotations

import json
import re

import httpx

# what a leaked stack trace or server path looks like in a response body
LEAKS = re.compile(r'Traceback|File "|\.py[":]|site-packages|/work/|/tmp/|/home/|/usr/|\\n\s+at ')


def assert_error(
    response: httpx.Response, statuses: int | tuple[int, ...], code: str | None = None
) -> dict:
    """A refused request: expected status, one JSON error shape, nothing leaked; the error."""
    statuses = (statuses,) if isinstance(statuses, int) else statuses
    assert response.status_code in statuses, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = json.loads(response.content.decode("utf-8"))  # strict UTF-8
    error = body["error"]
    assert set(body) == {"error"} and isinstance(error, dict), body
    assert isinstance(error["code"], str) and isinstance(error["message"], str), error
    assert error["field"] is None or isinstance(error["field"], str), error
    if code is not None:
        assert error["code"] == code, error
    assert_no_leak(response)
    return error


def assert_no_leak(response: httpx.Response) -> None:
    """No stack trace or server file path in the body."""
    assert not LEAKS.search(response.text), response.text[:500]


def assert_ok_or_refused(response: httpx.Response) -> None:
    """What any input may get: 200 with a JSON body in valid UTF-8, or a 4xx in the error shape."""
    if response.status_code == 200:
        json.loads(response.content.decode("utf-8"))
        return
    assert_error(response, tuple(range(400, 500)))
