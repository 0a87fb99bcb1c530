"""README's request examples run as written against the shipped models: every `curl` line of its
bash blocks and its Python client block, against `bentoml serve` over a store filled the way
`make serve` fills it (`training.export import-shipped`), answering 200 with JSON.

Only the address changes (127.0.0.1:3000 -> the test server's port). The other blocks need what
a test cannot do here (`make serve` itself, Docker, hours of training) and are left out."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serving import Server, start_server

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
ADDRESS = "http://127.0.0.1:3000"
pytestmark = pytest.mark.service


def blocks(language: str) -> list[str]:
    """The README's fenced code blocks in `language`."""
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def curl_commands() -> list[str]:
    """Every curl command of the bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in blocks("bash"):
        joined = re.sub(r"\\\n\s*", " ", block)
        commands += [line for line in joined.splitlines() if line.startswith("curl ")]
    return commands


@pytest.fixture(scope="module")
def shipped_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`bentoml serve` over a private store holding what `make import-models` imports."""
    home = tmp_path_factory.mktemp("shipped-home")
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    command = [sys.executable, "-m", "training.export", "import-shipped"]
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
    with start_server(home, tmp_path_factory.mktemp("shipped-log") / "serve.log") as server:
        server.wait_ready()
        yield server


def test_the_readme_has_the_examples_this_test_runs() -> None:
    assert len(curl_commands()) >= 8 and len(blocks("python")) == 1
    assert all(ADDRESS in command for command in curl_commands())


@pytest.mark.parametrize("command", curl_commands())
def test_curl_example_answers_200_with_json(command: str, shipped_server: Server) -> None:
    runnable = command.replace(ADDRESS, shipped_server.url).replace(
        "curl -s", "curl -s -w '\\n%{http_code}'", 1
    )
    done = subprocess.run(["bash", "-c", runnable], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    body, status = done.stdout.rsplit("\n", 1)
    assert status == "200", body
    json.loads(body)


def test_python_client_example_runs(shipped_server: Server) -> None:
    code = blocks("python")[0].replace(ADDRESS, shipped_server.url)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(done.stdout.splitlines()) == 2  # a caption with its scores, a translation
