"""The demo page's files: served by the service at /demo/, complete, and loading nothing from elsewhere."""

from __future__ import annotations

import io
import re
from html.parser import HTMLParser

import httpx
import pytest
from PIL import Image

from service.demo_app import DEMO_DIR

# any scheme://host in the page's own files would be a request to somewhere else
EXTERNAL = re.compile(r"\b(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", re.IGNORECASE)
EXAMPLE_BYTES = 64 * 1024  # examples ship in the repository and the bento: keep them small


class _References(HTMLParser):
    """Every src/href in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found += [value for name, value in attrs if name in ("src", "href") and value]


def references(html: str) -> list[str]:
    """The files index.html loads, and the modules its scripts import."""
    parser = _References()
    parser.feed(html)
    found = [ref for ref in parser.found if not ref.startswith("#")]
    for script in DEMO_DIR.glob("*.js"):
        found += re.findall(r'^import .* from "\./([\w.]+)";$', script.read_text(), re.MULTILINE)
    return sorted(set(found))


def test_no_file_of_the_page_points_outside_the_service():
    for path in DEMO_DIR.glob("*.*"):
        if path.suffix in (".html", ".css", ".js"):
            assert not EXTERNAL.findall(path.read_text()), path.name
    assert "@import" not in (DEMO_DIR / "demo.css").read_text()
    assert "url(" not in (DEMO_DIR / "demo.css").read_text()  # no web fonts or remote images


def test_examples_are_small_real_images_and_all_offered_on_the_page():
    html = (DEMO_DIR / "index.html").read_text()
    examples = sorted((DEMO_DIR / "examples").iterdir())
    assert len([p for p in examples if p.name.startswith("photo_")]) >= 2
    assert len([p for p in examples if p.name.startswith("emoji_")]) >= 2
    for path in examples:
        assert path.stat().st_size <= EXAMPLE_BYTES, path.name
        with Image.open(path) as image:
            image.verify()
        assert f'data-example="{path.name}"' in html, path.name


@pytest.mark.service
def test_the_service_serves_the_page_and_every_file_it_references(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        redirected = client.get("/demo", follow_redirects=False)
        assert redirected.status_code in (301, 302, 307, 308)
        page = client.get("/demo/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "connect-src 'self'" in policy
        refs = references(page.text)
        assert {"demo.css", "demo.js", "common.js", "caption.js", "examples/photo_pier.jpg"} <= set(
            refs
        )
        assert {path.name for path in DEMO_DIR.glob("*.js")} <= set(refs)  # none left unused
        for ref in refs:
            answer = client.get(f"/demo/{ref}")
            assert answer.status_code == 200, ref
            if ref.startswith("examples/"):
                Image.open(io.BytesIO(answer.content)).verify()
        assert client.get("/demo/no-such-file.js").status_code == 404
        assert client.get("/demo/%2e%2e/service.py").status_code == 404  # no way out of the folder
        # the page lives beside the API, which it calls with relative URLs like ../models
        assert client.get("/models").json()["ready"] is True
        assert "/caption" in client.get("/docs.json").json()["paths"]


def test_the_page_calls_these_endpoints_and_no_others():
    scripts = "".join(path.read_text() for path in DEMO_DIR.glob("*.js"))
    called = set(re.findall(r'callApi\("\.\./([a-z_.]+)"', scripts))
    assert called == {
        "models",
        "docs.json",
        "caption",
        "caption_overlay",
        "translate",
        "generate",
        "inspect",
    }
    assert (DEMO_DIR / "index.html").read_text().count('type="module"') == 1
