"""GET /demo/: the demo page (plain HTML, CSS and JS in service/demo/), served by the service itself."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEMO_DIR = Path(__file__).parent / "demo"
# The page talks to this service only: no CDN, no web fonts, no third-party requests. Images the
# user picks are shown from blob: URLs.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-cache"),  # revalidate: a redeployed page never mixes old and new files
]


class _PageHeaders:
    """Adds HEADERS to every response of the wrapped app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *HEADERS]}
            await send(message)

        await self.app(scope, receive, with_headers)


def demo_app() -> Starlette:
    """The static demo files, to be mounted at /demo; index.html answers /demo/."""
    # check_dir=False: a bento built without the folder still starts; the page then answers 404
    files = StaticFiles(directory=DEMO_DIR, html=True, check_dir=False)
    return Starlette(routes=[Mount("/", _PageHeaders(files))])
