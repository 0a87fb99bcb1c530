"""Attack surface of the real server: pickles, URLs in place of files, listening sockets, leaks."""

from __future__ import annotations

import json
import os
import pickle
import stat
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest

from tests.reliability.checks import assert_error, assert_no_leak
from tests.reliability.media import encoded, photo_like

pytestmark = [pytest.mark.reliability, pytest.mark.service]
PICKLE = "application/vnd.bentoml+pickle"


class _MakeDirectory:
    """Unpickling this creates a directory: proof that a pickle payload ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (os.mkdir, (str(self.path),))


def test_pickle_bodies_are_refused_and_never_unpickled(client, tmp_path: Path) -> None:
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_MakeDirectory(control)))  # the payload works when unpickled
    assert control.is_dir()

    marker = tmp_path / "payload-ran"
    payload = pickle.dumps(_MakeDirectory(marker))
    for path in ("/translate", "/caption", "/caption_batch"):
        for content_type in (PICKLE, f"{PICKLE}; charset=binary", PICKLE.upper()):
            response = client.post(path, content=payload, headers={"content-type": content_type})
            assert_error(response, 415, "unsupported_media_type")
    for path in ("/translate/", "/caption?x=1", "/%63aption", "/models", "/", "/docs.json"):
        response = client.post(path, content=payload, headers={"content-type": PICKLE})
        assert response.status_code in (307, 404, 405, 415), (path, response.status_code)
    # a pickle as the image part, and as the options part, of a proper form
    response = client.post("/caption", files={"image": ("x.pkl", payload, PICKLE)})
    assert_error(response, 400, "invalid_image")
    response = client.post(
        "/caption",
        files={"image": ("a.png", encoded(photo_like())), "options": ("o", payload, PICKLE)},
    )
    assert_error(response, 400, "invalid_argument")
    assert not marker.exists(), "a pickle payload ran in the server"


class _Recorder(BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        _Recorder.seen.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(encoded(photo_like()))

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def listener() -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server that records every request it gets: (base URL, paths seen)."""
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder.seen
    finally:
        server.shutdown()
        server.server_close()


def test_urls_in_place_of_images_are_refused_and_never_fetched(client, server, listener) -> None:
    base, seen = listener
    metrics_before = server.log_text().count("path=/metrics")
    urls = [
        f"{server.url}/metrics",
        f"{base}/cat.jpg",
        f"{base.replace('127.0.0.1', 'localhost')}/cat.png",
        "file:///etc/passwd",
        f"{base}/redirect?to=file:///etc/passwd",
        "data:image/png;base64,iVBORw0KGgo=",
    ]
    for url in urls:
        # as a form text field, the way BentoML would fetch it
        response = client.post("/caption", files={"image": (None, url)})
        assert_error(response, 400, "invalid_image")
        response = client.post("/caption_batch", files=[("images", (None, url))])
        assert_error(response, 400, "invalid_image")
        assert_error(client.post("/caption", json={"image": url}), 415)
        assert_error(client.post("/caption", data={"image": url}), 415)
        # a file whose content is a URL is just a bad image
        response = client.post("/caption", files={"image": ("u.jpg", url.encode())})
        assert_error(response, 400, "invalid_image")
        response = client.post(
            "/caption",
            files={"image": ("a.png", encoded(photo_like()))},
            data={"options": json.dumps({"image": url})},
        )
        assert_error(response, 400, "invalid_argument")
        body = {"sentences": [url], "options": {"max_length": 2}}
        assert client.post("/translate", json=body).status_code == 200  # text, never fetched
    assert seen == [], f"the server fetched {seen}"
    assert server.log_text().count("path=/metrics") == metrics_before


def _process_tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def test_only_the_api_port_listens(server) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    listening, datagram, unix_paths = set(), [], []
    for process in _process_tree(server.process.pid):
        for connection in process.net_connections(kind="inet"):
            if connection.status == psutil.CONN_LISTEN:
                listening.add((connection.laddr.ip, connection.laddr.port))
            elif connection.status == psutil.CONN_NONE:  # UDP
                datagram.append(connection.laddr)
        unix_paths += [c.laddr for c in process.net_connections(kind="unix") if c.laddr]
    assert listening == {("127.0.0.1", port)}, listening
    assert datagram == [], datagram
    # BentoML's supervisor (circus) talks over Unix sockets in a directory only we can enter
    # (service/supervisor.py); by default it listened on two TCP ports that ran any command
    assert unix_paths, "expected the supervisor's Unix sockets"
    for path in unix_paths:
        directory = Path(path).parent
        mode = directory.stat()
        assert stat.S_IMODE(mode.st_mode) == 0o700 and mode.st_uid == os.getuid(), path


ERROR_REQUESTS = [
    ("GET", "/caption", {}),
    ("PUT", "/translate", {"json": {"sentences": ["a"]}}),
    ("POST", "/translate", {"content": b"{", "headers": {"content-type": "application/json"}}),
    ("POST", "/translate", {"json": {"sentences": ["a"], "options": {"beam_size": 99}}}),
    ("POST", "/translate", {"json": {"sentences": ["a"], "model": "../../etc/passwd"}}),
    ("POST", "/translate", {"json": {"sentences": ["a"], "model": "translator:../../x"}}),
    ("POST", "/caption", {"files": {"image": ("../../etc/passwd", b"\x89PNG\r\n\x1a\nxx")}}),
    ("POST", "/caption", {"files": {"image": ("a.jpg", b"\xff\xd8\xff\xe0" + bytes(64))}}),
    (
        "POST",
        "/caption",
        {"content": b"--b\r\n", "headers": {"content-type": "multipart/form-data; boundary=b"}},
    ),
    ("POST", "/caption_batch", {"files": [("images", ("a", b"x"))] * 9}),
    ("GET", "/does-not-exist", {}),
    ("GET", "/static_content/../../../../etc/passwd", {}),
    ("GET", "/models/../../etc/passwd", {}),
]


@pytest.mark.parametrize(("method", "path", "kwargs"), ERROR_REQUESTS)
def test_error_bodies_carry_no_stack_traces_or_paths(client, method, path, kwargs) -> None:
    response = client.request(method, path, **kwargs)
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert_no_leak(response)
    assert "root:" not in response.text  # /etc/passwd
