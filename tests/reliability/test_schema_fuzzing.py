"""Schemathesis against the service's own OpenAPI document (/docs.json) on the real server."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.reliability, pytest.mark.service]
SEED = 20261128
MAX_EXAMPLES = 12  # per operation and phase; the coverage phase adds its boundary cases
# positive_data_acceptance is left out: the schema cannot say that an image must be a real
# image, that n_best <= beam_size or min_length <= max_length, or that a sentence must have at
# most 100 tokens, so some schema-valid requests are rightly refused (400).
EXCLUDED_CHECKS = "positive_data_acceptance"


def schemathesis_command(url: str, report: Path) -> list[str]:
    return [
        *(sys.executable, "-m", "schemathesis.cli", "run", f"{url}/docs.json"),
        *("--checks", "all", "--exclude-checks", EXCLUDED_CHECKS),
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
        "405",
        "413",
        "415",
        "429",
        "500",
        "503",
        "504",
    }
    error = document["components"]["schemas"]["ErrorResponse"]["properties"]["error"]
    assert error["required"] == ["code", "message", "field"]


def test_schemathesis_finds_no_server_error_and_no_schema_violation(server, tmp_path) -> None:
    command = schemathesis_command(server.url, tmp_path / "junit.xml")
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    generated = re.search(r"(\d+) generated", output)
    print(f"schemathesis: {generated.group(0) if generated else '?'} (seed {SEED})")
    assert done.returncode == 0, output[-6000:]
    assert generated and int(generated.group(1)) >= 100, output[-2000:]
    assert "status=500" not in server.log_text()
