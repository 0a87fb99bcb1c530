"""Schemathesis against the service's own OpenAPI document (/docs.json) on the real server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.reliability, pytest.mark.service]
ROOT = Path(__file__).resolve().parents[2]
SEED = 424242
MAX_EXAMPLES = 40  # per operation and phase; the coverage phase adds its boundary cases
# Every check, positive_data_acceptance included: a schema-valid request must be answered. The
# config names the one exception (an overlay's word and alternative index into its own caption);
# the hooks give image parts real images, as the document asks.
CONFIG = Path(__file__).with_name("schemathesis.toml")
HOOKS = "tests.reliability.schemathesis_hooks"


def schemathesis_command(url: str, report: Path) -> list[str]:
    return [
        *(sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG)),
        *("run", f"{url}/docs.json"),
        *("--seed", str(SEED), "--generation-deterministic"),
        *("--max-examples", str(MAX_EXAMPLES), "--phases", "examples,coverage,fuzzing"),
        *("--workers", "1", "--request-timeout", "30"),
        *("--report", "junit", "--report-junit-path", str(report)),
        "--no-color",
    ]


def test_the_published_document_describes_the_real_errors(server) -> None:
    document = httpx.get(f"{server.url}/docs.json").json()
    operation = document["paths"]["/translate"]["post"]
    assert operation["requestBody"]["required"] is True
    assert set(operation["responses"]) == {
        "200",
        "400",
        "401",
        "405",
        "413",
        "415",
        "429",
        "500",
        "503",
        "504",
    }
    error = document["components"]["schemas"]["ErrorResponse"]["properties"]["error"]
    assert error["required"] == ["code", "message", "field", "request_id"]


def test_schemathesis_with_every_check_finds_nothing(server, tmp_path) -> None:
    """No server error, no answer its schema does not describe, no schema-valid request
    refused and no schema-violating one accepted."""
    command = schemathesis_command(server.url, tmp_path / "junit.xml")
    env = {**os.environ, "SCHEMATHESIS_HOOKS": HOOKS, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    output = done.stdout + done.stderr
    generated = re.search(r"(\d+) generated", output)
    print(f"schemathesis: {generated.group(0) if generated else '?'} (seed {SEED})")
    assert done.returncode == 0, output[-6000:]
    assert generated and int(generated.group(1)) >= 100, output[-2000:]
    assert "status=500" not in server.log_text()
