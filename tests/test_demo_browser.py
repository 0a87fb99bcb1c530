"""The demo page in headless Chromium against the real service (conftest's `bentoml serve`).

Needs Debian's `chromium` (`make browser` installs it) and the `playwright` package (dev extra);
skips, saying which is missing, without them. Screenshots go to test-artifacts/demo/.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright package is missing: `make install` installs it"
)
CHROMIUM = Path(os.environ.get("SEQSERVE_CHROMIUM", "/usr/bin/chromium"))
if not CHROMIUM.exists():
    pytest.skip(
        f"no Chromium at {CHROMIUM}: `make browser` installs Debian's chromium (apt-get), "
        "or set SEQSERVE_CHROMIUM",
        allow_module_level=True,
    )
expect = sync_api.expect

pytestmark = [pytest.mark.service, pytest.mark.browser]
ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "service" / "demo" / "examples"
ARTIFACTS = ROOT / "test-artifacts" / "demo"
# the closed network refuses Chromium's own background connections; these flags stop it trying
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """One headless Chromium for the module (the machine has two shared cores)."""
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def tab(browser, server) -> Iterator[object]:
    """A fresh browser tab, not yet on the demo page; no request may leave the service."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)
    requests: list[str] = []
    problems: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.on("pageerror", lambda error: problems.append(str(error)))
    yield page
    context.close()
    elsewhere = [url for url in requests if not url.startswith((server.url, "blob:", "data:"))]
    assert not elsewhere, f"the page asked outside the service: {elsewhere}"
    assert not problems, f"uncaught errors in the page: {problems}"


@pytest.fixture
def page(tab, server) -> object:
    """The demo page, loaded, with the models list in."""
    tab.goto(f"{server.url}/demo/")
    tab.wait_for_selector("body[data-ready=true]")
    return tab


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


def api_caption(server, path: Path, options: dict, language: str = "en") -> dict:
    files = {"image": (path.name, path.read_bytes())}
    form = {"options": json.dumps(options), "language": language}
    return httpx.post(f"{server.url}/caption", files=files, data=form, timeout=60).json()


def canvas_pixels(page) -> np.ndarray:
    url = page.eval_on_selector("#caption-canvas", "canvas => canvas.toDataURL('image/png')")
    data = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def test_an_example_gets_its_caption_and_each_word_its_attention(page, server):
    expect(page.locator("#tab-generate")).to_be_visible()  # the test service has a char LM
    page.click("[data-example='photo_pier.jpg']")
    expect(page.locator("#caption-result")).to_be_visible()
    wanted = {"decoding": "greedy", "max_length": 20, "return_attention": True}
    found = api_caption(server, EXAMPLES / "photo_pier.jpg", wanted)
    expect(page.locator("#caption-text")).to_have_text(found["caption"])
    chips = page.locator("#caption-tokens button")
    expect(chips).to_have_count(len(found["alternatives"][0]["tokens"]))

    plain = canvas_pixels(page)
    chips.nth(1).hover()
    expect(page.locator("#caption-canvas")).to_have_attribute("data-shown-token", "1")
    expect(page.locator("#attention-note")).to_contain_text("7 x 7 grid")
    assert np.abs(canvas_pixels(page) - plain).mean() > 5  # the heatmap is drawn over the image
    screenshot(page, "caption_attention")

    chips.nth(1).click()  # pinned, so the mouse can travel to the download link
    with page.expect_download() as download:
        page.click("#overlay-link")  # the same picture, rendered by POST /caption_overlay
    assert download.value.suggested_filename.startswith("caption_overlay_1_")
    with Image.open(download.value.path()) as png:
        assert (png.format, png.size) == ("PNG", (384, 384))


def test_the_canvas_overlay_is_the_apis_png(page, server):
    page.click("[data-example='emoji_pizza.png']")
    chips = page.locator("#caption-tokens button")
    chips.nth(2).click()  # pinned: stays drawn when the mouse leaves
    page.mouse.move(0, 0)
    expect(page.locator("#caption-canvas")).to_have_attribute("data-shown-token", "2")
    form = {"options": json.dumps({"max_length": 20}), "token": "2", "size": "384"}
    files = {"image": ("emoji_pizza.png", (EXAMPLES / "emoji_pizza.png").read_bytes())}
    png = httpx.post(f"{server.url}/caption_overlay", files=files, data=form, timeout=60)
    assert png.status_code == 200, png.text
    from_api = np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB"), dtype=np.int16)
    # the browser and Pillow resize the image differently; the attention drawing is the same
    assert np.abs(canvas_pixels(page) - from_api).mean() < 1.5  # measured: 0.2


def test_uploading_a_photo_then_switching_to_beam_shows_alternatives(page, server):
    photo = EXAMPLES / "photo_grace_hopper.jpg"
    page.set_input_files("#image-input", str(photo))
    expect(page.locator("#caption-result")).to_be_visible()
    expect(page.locator("#caption-alternatives tbody tr")).to_have_count(1)

    page.select_option("#caption-decoding", "beam")
    rows = page.locator("#caption-alternatives tbody tr")
    expect(rows).to_have_count(3)  # n_best 3 of beam 5, the page's defaults
    options = {"decoding": "beam", "beam_size": 5, "n_best": 3, "max_length": 20}
    found = api_caption(server, photo, {**options, "return_attention": True})
    for row, alternative in zip(rows.all(), found["alternatives"], strict=True):
        expect(row.locator("td").nth(1)).to_have_text(alternative["text"])
        expect(row.locator("td").nth(2)).to_have_text(f"{round(100 * alternative['confidence'])}%")
        expect(row.locator("td").nth(3)).to_have_text(f"{alternative['score']:.3f}")
    rows.nth(1).click()
    expect(page.locator("#caption-text")).to_have_text(found["alternatives"][1]["text"])
    confidence = round(100 * found["alternatives"][1]["confidence"])
    expect(page.locator("#caption-confidence")).to_have_text(f"Confidence {confidence}%")
    expect(page.locator("#caption-unsure")).to_be_hidden()  # the tiny English model has no flag
    screenshot(page, "caption_beam")


def test_german_captions_and_the_unsure_warning(page, server):
    """The test store's German captioner was fitted on noise, so an emoji is out of its domain."""
    expect(page.locator("#caption-language-de")).to_be_enabled()
    page.select_option("#caption-language", "de")
    emoji = EXAMPLES / "emoji_pizza.png"
    page.set_input_files("#image-input", str(emoji))
    found = api_caption(server, emoji, {"max_length": 20}, language="de")
    assert found["language"] == "de" and found["out_of_domain"]
    expect(page.locator("#caption-text")).to_have_text(found["caption"])
    expect(page.locator("#caption-unsure")).to_be_visible()
    screenshot(page, "caption_german_unsure")


def test_a_dropped_image_is_captioned(page):
    page.evaluate(
        """async () => {
            const blob = await (await fetch("examples/emoji_house.png")).blob();
            const transfer = new DataTransfer();
            transfer.items.add(new File([blob], "dropped.png", { type: "image/png" }));
            const zone = document.querySelector("#drop-zone");
            zone.dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true }));
        }"""
    )
    expect(page.locator("#caption-text")).not_to_be_empty()


def test_a_text_file_as_image_shows_the_services_message(page):
    page.set_input_files(
        "#image-input", files=[{"name": "notes.txt", "mimeType": "image/png", "buffer": b"hello"}]
    )
    error = page.locator("#caption-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("invalid_image")
    expect(error).to_contain_text("not a supported image: expected JPEG, PNG, WebP")
    expect(page.locator("#caption-result")).to_be_hidden()
    screenshot(page, "caption_error")


def test_translating_shows_the_translation_alternatives_and_attention_grid(page, server):
    page.click("#tab-translate")
    sentence = "where is the station ?"
    page.fill("#sentences", sentence)
    page.select_option("#translate-decoding", "beam")
    page.fill("#translate-beam-size", "4")
    page.fill("#translate-n-best", "2")
    page.click("#translate-button")
    card = page.locator(".translation")
    expect(card).to_have_count(1)

    body = {"sentences": [sentence], "options": {"decoding": "beam", "beam_size": 4, "n_best": 2}}
    found = httpx.post(f"{server.url}/translate", json=body, timeout=60).json()["translations"][0]
    expect(card.locator(".target")).to_have_text(found["translation"])
    expect(card.locator("ol li")).to_have_count(2)
    grid = card.locator("table.attention")
    expect(grid.locator("thead th")).to_have_count(len(found["source_tokens"]) + 1)
    expect(grid.locator("tbody tr")).to_have_count(len(found["alternatives"][0]["tokens"]))
    weights = [
        float(w)
        for w in grid.locator("tbody tr")
        .first.locator("td")
        .evaluate_all("cells => cells.map(cell => cell.dataset.weight)")
    ]
    assert sum(weights) == pytest.approx(1.0, abs=1e-3)
    screenshot(page, "translate")


def test_an_empty_sentence_shows_the_services_message(page):
    page.click("#tab-translate")
    page.fill("#sentences", "")
    page.click("#translate-button")
    error = page.locator("#translate-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("sentences[0]: String should have at least 1 character")
    screenshot(page, "translate_error")


def test_the_language_model_tab_appears_with_generate_and_sends_its_fields(tab, server):
    """With another /generate schema (the browser answers in the service's place), the tab
    still maps its fields onto it."""
    schema = {"properties": {"seed_text": {}, "length": {}, "options": {}}}
    spec = {
        "paths": {
            "/generate": {
                "post": {
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/Generate"}
                            }
                        }
                    }
                }
            }
        },
        "components": {"schemas": {"Generate": schema}},
    }
    sent: list[dict] = []

    def generate(route) -> None:
        sent.append(json.loads(route.request.post_data))
        if len(sent) == 1:
            route.fulfill(json={"text": "The cat sat on the mat."})
        else:
            error = {"code": "invalid_argument", "field": "length", "message": "length: too long"}
            route.fulfill(status=400, json={"error": error})

    tab.route(f"{server.url}/docs.json", lambda route: route.fulfill(json=spec))
    tab.route(f"{server.url}/generate", generate)
    tab.goto(f"{server.url}/demo/#generate")
    tab.wait_for_selector("body[data-ready=true]")
    expect(tab.locator("#panel-generate")).to_be_visible()
    tab.locator("#lm-temperature").fill("1.3")
    expect(tab.locator("#lm-temperature-value")).to_have_text("1.3")
    tab.click("#generate-button")
    expect(tab.locator("#generated")).to_have_text("The cat sat on the mat.")
    assert sent[0] == {
        "seed_text": "The ",
        "length": 200,
        "options": {"temperature": 1.3, "top_k": 0},
    }
    tab.click("#generate-button")
    expect(tab.locator("#generate-error")).to_contain_text("length: too long")


def test_the_language_model_tab_samples_then_colours_the_text_by_a_unit(page, server):
    page.click("#tab-generate")
    page.fill("#lm-length", "40")
    page.fill("#lm-seed", "3")
    page.click("#generate-button")
    expect(page.locator("#generated")).not_to_be_empty()
    request = {"text": "The ", "length": 40, "decoding": "sample", "temperature": 0.8}
    request |= {"top_k": 0, "seed": 3}
    sampled = httpx.post(f"{server.url}/generate", json=request, timeout=60).json()["text"]
    assert page.text_content("#generated") == sampled  # the tab samples, with the form's fields

    page.click("#inspect-button")
    expect(page.locator("#inspect-unit")).to_contain_text("with line_position")
    expect(page.locator("#inspected span")).to_have_count(len("The " + sampled))
    colours = page.eval_on_selector_all(
        "#inspected span", "s => s.map(e => e.style.backgroundColor)"
    )
    assert any("255, 0, 0" in c for c in colours) or any("0, 64, 255" in c for c in colours)
    screenshot(page, "language_model_inspect")
    page.fill("#lm-unit", "q9.9")
    page.click("#inspect-button")
    expect(page.locator("#inspect-error")).to_contain_text("unknown unit 'q9.9'")
