"""The request examples of README and docs run as written against the shipped models: every `curl`
line of README's bash blocks, every bash block of docs/*.md made only of curl commands, and
README's Python client block, against `bentoml serve` over a store filled the way `make serve`
fills it (`training.export import-shipped`), answering 200 (with JSON, unless saved to a file).

Only the address changes (127.0.0.1:3000 -> the test server's port) and a file a command saves
goes to a scratch folder. Blocks that mix requests with other commands need what a test cannot
do here (`make serve` itself, Docker, training first) and are left out; docs/training.md's
recipes run in tests/test_recipes.py."""

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


def blocks(language: str, document: Path = README) -> list[str]:
    """The fenced code blocks of `document` in `language`."""
    return re.findall(rf"```{language}\n(.*?)```", document.read_text(encoding="utf-8"), re.S)


def commands_of(block: str) -> list[str]:
    """A block's lines, continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def curl_commands() -> list[str]:
    """README's curl commands, and those of docs/*.md blocks made only of curl commands."""
    commands = [c for b in blocks("bash") for c in commands_of(b) if c.startswith("curl ")]
    for document in sorted((ROOT / "docs").glob("*.md")):
        for block in map(commands_of, blocks("bash", document)):
            if block and all(c.startswith("curl ") and ADDRESS in c for c in block):
                commands += block
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
    assert len(curl_commands()) >= 11 and len(blocks("python")) == 1
    assert all(ADDRESS in command for command in curl_commands())


@pytest.mark.parametrize("command", curl_commands())
def test_curl_example_answers_200(command: str, shipped_server: Server, tmp_path: Path) -> None:
    runnable = command.replace(ADDRESS, shipped_server.url).replace(
        "curl -s", "curl -s -w '\\n%{http_code}'", 1
    )
    saved = re.search(r" -o (\S+)", runnable)
    if saved:  # a file the example saves goes to the scratch folder
        runnable = runnable.replace(saved.group(0), f" -o {tmp_path / saved.group(1)}")
    done = subprocess.run(["bash", "-c", runnable], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    body, status = done.stdout.rsplit("\n", 1)
    assert status == "200", body
    if saved:
        assert (tmp_path / saved.group(1)).stat().st_size > 0
    else:
        json.loads(body)


def test_python_client_example_runs(shipped_server: Server) -> None:
    code = blocks("python")[0].replace(ADDRESS, shipped_server.url)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(done.stdout.splitlines()) == 2  # a caption with its scores, a translation
