"""A server set up as a deployment would be, over real HTTP: API keys (from the environment and
from a file), CORS for one web origin, and a pinned older translator served beside the latest."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.serving import Server, copy_store, start_server

pytestmark = pytest.mark.service
ENV_KEY = "env-key-0123456789abcdef"
FILE_KEY = "file-key-fedcba9876543210"
ORIGIN = "https://demo.example"
# a second version of a store model: the same files under a new tag, which becomes the latest
NEW_VERSION = """
import shutil, sys, bentoml
source = bentoml.models.get(sys.argv[1] + ":latest")
skip = shutil.ignore_patterns("model.yaml", "custom_objects*")
with bentoml.models.create(sys.argv[1], metadata=source.info.metadata) as target:
    shutil.copytree(source.path, target.path, dirs_exist_ok=True, ignore=skip)
print(target.tag)
"""


@dataclass(frozen=True)
class Deployment:
    server: Server
    older: str  # the translator's tag in the session store, pinned as the default
    newer: str  # the version added after it: translator:latest

    def client(self, key: str | None = ENV_KEY, **headers: str) -> httpx.Client:
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return httpx.Client(base_url=self.server.url, headers=headers, timeout=60)


@pytest.fixture(scope="module")
def deployment(stored_models, tmp_path_factory) -> Iterator[Deployment]:
    folder = tmp_path_factory.mktemp("deployment")
    home = copy_store(Path(os.environ["BENTOML_HOME"]), folder / "home")
    newer = subprocess.run(
        [sys.executable, "-c", NEW_VERSION, "translator"],
        env={**os.environ, "BENTOML_HOME": str(home)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[-1]
    keys = folder / "keys"
    keys.write_text(f"# one key a line\n{FILE_KEY}\n")
    env = {
        "SEQSERVE_API_KEYS": ENV_KEY,
        "SEQSERVE_API_KEYS_FILE": str(keys),
        "SEQSERVE_CORS_ORIGINS": ORIGIN,
        "SEQSERVE_TRANSLATORS": f"{stored_models.translator},translator",
    }
    with start_server(home, folder / "serve.log", env) as server:
        server.wait_ready()  # /readyz needs no key (SEQSERVE_OPEN_HEALTH defaults to true)
        yield Deployment(server, stored_models.translator, newer)


# -- pinned model versions ---------------------------------------------------------------------


def test_a_pinned_older_translator_is_served_beside_the_latest(deployment) -> None:
    assert deployment.newer.startswith("translator:") and deployment.newer != deployment.older
    with deployment.client() as client:
        info = client.get("/models").json()
        translators = {
            m["configured"]: m["tag"] for m in info["models"] if m["kind"] == "translator"
        }
        assert translators == {deployment.older: deployment.older, "translator": deployment.newer}
        assert info["default_translator"] == deployment.older
        for model, answered in (
            (None, deployment.older),
            (deployment.older, deployment.older),
            ("translator", deployment.newer),
            (deployment.newer, deployment.newer),
        ):
            body = {"sentences": ["the cat sits on the mat ."], "model": model}
            response = client.post("/translate", json=body)
            assert response.status_code == 200 and response.json()["model"] == answered
        enum = client.get("/docs.json").json()["paths"]["/translate"]["post"]["requestBody"]
        enum = enum["content"]["application/json"]["schema"]["properties"]["model"]["enum"]
        assert set(enum) == {deployment.older, "translator", deployment.newer, None}


# -- API keys --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer not-a-key-at-all-000000"},
        {"Authorization": f"Bearer {ENV_KEY[:-1]}"},  # all but one character
        {"Authorization": ENV_KEY},  # no scheme
        {"X-API-Key": ENV_KEY},
    ],
)
def test_without_a_valid_key_the_api_answers_401(deployment, headers) -> None:
    with deployment.client(None, **headers) as client:
        for method, path in (("POST", "/translate"), ("GET", "/models"), ("GET", "/metrics")):
            response = client.request(method, path, json={"sentences": ["hi"]})
            assert response.status_code == 401, (path, response.text)
            error = response.json()["error"]
            assert error["code"] == "unauthorized" and error["request_id"]
            assert response.headers["www-authenticate"].startswith("Bearer")


def test_keys_from_the_environment_and_from_the_file_both_work(deployment) -> None:
    for key in (ENV_KEY, FILE_KEY):
        with deployment.client(key) as client:
            assert client.post("/translate", json={"sentences": ["hi"]}).status_code == 200
            assert "seqserve_error_responses_total" in client.get("/metrics").text


def test_health_and_documentation_stay_open(deployment) -> None:
    with deployment.client(None) as client:
        for path in ("/livez", "/readyz", "/docs.json", "/demo/"):
            assert client.get(path).status_code == 200, path
        document = client.get("/docs.json").json()
        assert document["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"
        assert document["paths"]["/translate"]["post"]["security"] == [{"ApiKey": []}]


def test_the_bentoml_client_sends_its_token(deployment) -> None:
    import bentoml

    with bentoml.SyncHTTPClient(deployment.server.url, token=FILE_KEY) as client:
        assert client.translate(sentences=["hi"])["model"] == deployment.older


def test_refusals_of_made_up_paths_do_not_grow_the_route_label(deployment) -> None:
    with deployment.client(None) as client:
        assert client.get("/made-up-path-123").status_code == 401
    with deployment.client() as client:
        ours = [line for line in client.get("/metrics").text.splitlines() if "seqserve_" in line]
    assert any('code="unauthorized",route="other",status="401"' in line for line in ours)
    assert not any("made-up-path" in line for line in ours)  # (BentoML's own metrics do grow)


# -- CORS ------------------------------------------------------------------------------------


def test_a_preflight_from_the_allowed_origin_needs_no_key(deployment) -> None:
    headers = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-request-id",
    }
    with deployment.client(None) as client:
        allowed = client.options("/translate", headers=headers)
        refused = client.options("/translate", headers={**headers, "Origin": "https://evil.test"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers


def test_answers_to_the_allowed_origin_expose_what_a_page_reads(deployment) -> None:
    with deployment.client(Origin=ORIGIN) as client:
        answer = client.post("/translate", json={"sentences": ["hi"]})
    with deployment.client(None, Origin=ORIGIN) as client:
        refused = client.post("/translate", json={"sentences": ["hi"]})
    for response in (answer, refused):  # a page can read a 401 too
        assert response.headers["access-control-allow-origin"] == ORIGIN
        exposed = response.headers["access-control-expose-headers"].lower()
        assert "x-request-id" in exposed and "x-caption" in exposed
    assert (answer.status_code, refused.status_code) == (200, 401)


def test_cors_is_off_by_default(server) -> None:
    headers = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    response = httpx.options(f"{server.url}/translate", headers=headers)
    assert "access-control-allow-origin" not in response.headers
    answer = httpx.post(f"{server.url}/translate", json={"sentences": ["hi"]}, headers=headers)
    assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers
