"""Fast in-process tests of the service helpers: image decoding, schemas, errors, batching, loading."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import resource
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from service.batching import Batcher
from service.errors import RequestError, allowed_values, field_name, rewrite_error
from service.images import ImageLimits, decode_image, limit_aspect_ratio, sniff_format
from service.runtime import default_torch_threads, keep_freed_memory
from service.schemas import DecodingOptions
from service.settings import Settings
from service.tasks.decoding import search_options

LIMITS = ImageLimits(max_pixels=1_000_000, max_aspect_ratio=4.0)


def encoded(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def refusal(data: bytes) -> RequestError:
    with pytest.raises(RequestError) as caught:
        decode_image(data, LIMITS)
    return caught.value


# -- images ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "mode", "params"),
    [
        ("JPEG", "RGB", {}),
        ("JPEG", "CMYK", {}),
        ("PNG", "RGBA", {}),
        ("PNG", "LA", {}),
        ("PNG", "I;16", {}),
        ("PNG", "1", {}),
        ("PNG", "P", {"transparency": 0}),
        ("WEBP", "RGB", {}),
        ("GIF", "P", {}),
        ("BMP", "RGB", {}),
    ],
)
def test_allowed_formats_and_modes_decode(fmt: str, mode: str, params: dict) -> None:
    image = Image.new(mode, (40, 30))
    decoded = decode_image(encoded(image, fmt, **params), LIMITS)
    assert decoded.size == (40, 30)


def test_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), color) for color in ("red", "green", "blue")]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(data, LIMITS).convert("RGB").getpixel((5, 5)) == (255, 0, 0)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "invalid_image"),
        (b"this is a text file named photo.jpg\n", "invalid_image"),
        (b"II*\x00" + b"\x00" * 100, "invalid_image"),  # TIFF
        (b"8BPS" + b"\x00" * 100, "invalid_image"),  # PSD
        (b"SIMPLE  =                    T" + b" " * 50, "invalid_image"),  # FITS
        (b"\xff\xd8\xff\xe0" + b"\x00" * 20, "invalid_image"),  # a JPEG start, then nothing
    ],
)
def test_non_images_are_refused(data: bytes, code: str) -> None:
    assert refusal(data).code == code


def test_truncated_files_are_refused() -> None:
    photo = Image.effect_noise((64, 64), 40).convert("RGB")
    for fmt in ("JPEG", "PNG"):
        data = encoded(photo, fmt)
        error = refusal(data[: len(data) // 2])
        assert error.code == "invalid_image" and error.field == "image"


def test_pixel_bombs_are_refused_from_the_header(pixel_bomb: bytes) -> None:
    started = time.perf_counter()
    error = refusal(pixel_bomb)
    assert error.code == "image_too_large" and "at most 1,000,000 pixels" in error.message
    assert time.perf_counter() - started < 0.5  # nothing was decoded
    image = Image.new("L", (1001, 1000))
    assert "1001x1000 = 1,001,000 pixels" in refusal(encoded(image, "PNG")).message


def test_sniffing_ignores_the_declared_type_and_needs_riff_for_webp() -> None:
    assert sniff_format(b"RIFF\0\0\0\0WEBPVP8 ")[0] == "WebP"
    assert sniff_format(b"XXXX\0\0\0\0WEBPVP8 ") is None


@pytest.mark.parametrize("size", [(1, 10000), (10000, 1), (600, 100), (1, 1)])
def test_extreme_aspect_ratios_are_bounded(size: tuple[int, int]) -> None:
    image = limit_aspect_ratio(Image.new("L", size), 4.0)
    width, height = image.size
    assert max(width, height) <= 4 * min(width, height) + 1


def test_aspect_crop_keeps_what_the_encoder_sees() -> None:
    from models.images import image_to_tensor

    image = Image.effect_noise((600, 100), 60).convert("RGB")
    full, cropped = image_to_tensor(image, 56), image_to_tensor(limit_aspect_ratio(image, 4.0), 56)
    assert (full - cropped).abs().mean() < 0.02


# -- schemas, options and the error shape ----------------------------------------------------


def test_greedy_requests_share_options_whatever_their_unused_fields() -> None:
    a = search_options(DecodingOptions(beam_size=3, temperature=0.5))
    assert a == search_options(DecodingOptions())
    assert search_options(DecodingOptions(decoding="beam", beam_size=3)).beam_size == 3


def test_every_combination_of_valid_options_has_a_meaning() -> None:
    """No rule ties two fields (so the API document states every rule): n_best is capped at
    what the method gives, and min_length above max_length is kept (outputs run to max_length)."""
    assert search_options(DecodingOptions(decoding="greedy", n_best=3)).n_best == 1
    assert search_options(DecodingOptions(decoding="beam", beam_size=2, n_best=3)).n_best == 2
    assert search_options(DecodingOptions(decoding="sample", n_best=3)).n_best == 3
    options = search_options(DecodingOptions(min_length=10, max_length=5))
    assert (options.min_length, options.max_length) == (10, 5)


def test_out_of_range_options_fail_validation() -> None:
    for bad in ({"beam_size": 0}, {"temperature": float("nan")}, {"seed": -1}, {"beam_width": 3}):
        with pytest.raises(ValidationError):
            DecodingOptions(**bad)


def test_pydantic_errors_become_one_shape_with_allowed_range() -> None:
    schema = {
        "properties": {
            "options": {"$ref": "#/$defs/O"},
            "sentences": {
                "type": "array",
                "items": {"type": "string", "maxLength": 9, "minLength": 1},
            },
        },
        "$defs": {"O": {"properties": {"beam_size": {"minimum": 1, "maximum": 10}}}},
    }
    raw = json.dumps(
        {
            "error": "1 validation error",
            "detail": [{"loc": ["options", "beam_size"], "msg": "too big"}],
        }
    )
    body = rewrite_error(400, raw.encode(), schema)
    assert body["error"] == {
        "code": "invalid_argument",
        "message": "options.beam_size: too big (allowed: 1 to 10)",
        "field": "options.beam_size",
        "request_id": None,  # outside a request; the middleware sets it for each one
    }
    assert allowed_values(schema, ["sentences", 2]) == "1 to 9 characters"
    assert field_name(["sentences", 3]) == "sentences[3]"


def test_bentoml_arrays_and_plain_text_become_one_shape() -> None:
    assert (
        rewrite_error(415, b'[{"error": "pickle"}]', {})["error"]["code"]
        == "unsupported_media_type"
    )
    server_error = rewrite_error(500, b"Traceback (most recent call last): /work/x.py", {})
    assert (
        "Traceback" not in json.dumps(server_error) and server_error["error"]["code"] == "internal"
    )
    ours = {"error": {"code": "x", "message": "y", "field": None}}
    assert rewrite_error(400, json.dumps(ours).encode(), {}) == ours


def test_captioning_batches_are_small_on_the_cpu_and_large_on_a_gpu_unless_set() -> None:
    """On the CPU the encoder is slower per image in big batches (bench/README.md)."""
    auto = Settings()
    assert (auto.image_batch("cpu"), auto.image_batch("cuda")) == (4, 32)
    assert Settings(max_batch_images=16).image_batch("cpu") == 16
    assert auto.in_flight_limit() == Settings(max_batch_images=32).in_flight_limit()


def test_settings_come_from_the_environment() -> None:
    settings = Settings.from_env({"SEQSERVE_MAX_BATCH_IMAGES": "4", "SEQSERVE_TRANSLATORS": "a, b"})
    assert settings.max_batch_images == 4 and settings.translator_names == ["a", "b"]
    with pytest.raises(ValueError, match="SEQSERVE_GPUS"):
        Settings.from_env({"SEQSERVE_GPUS": "many"})
    assert Settings.from_env({"SEQSERVE_ACCESS_LOG": "off"}).access_log is False
    with pytest.raises(ValueError, match="SEQSERVE_ACCESS_LOG"):
        Settings.from_env({"SEQSERVE_ACCESS_LOG": "maybe"})  # bool("maybe") would be True


def test_workers_default_to_one_on_a_gpu_and_two_on_a_multi_core_cpu() -> None:
    cores = len(os.sched_getaffinity(0))
    assert Settings(device="cuda").worker_count() == 1
    assert Settings(device="cpu").worker_count() == min(2, cores)
    assert Settings(device="cpu", workers=3).worker_count() == 3
    assert default_torch_threads(1) == max(1, cores - 1)
    assert default_torch_threads(cores) == 1  # never zero


def test_a_thread_that_frees_and_allocates_the_same_memory_again_does_not_page_fault() -> None:
    """What a lone request's forward does in the batch worker: 20 MB of activations allocated,
    written and freed, again and again. glibc's defaults gave them back to the system after
    every round (about 3,700 page faults a round here); the service's settings keep them."""
    if not keep_freed_memory():
        pytest.skip("not glibc: no mallopt")

    def forward() -> None:
        activations = [bytearray(5_000_000) for _ in range(4)]  # zero-filled: every page written
        del activations

    def faults_per_forward() -> float:
        forward()
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        for _ in range(10):
            forward()
        return (resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before) / 10

    found: list[float] = []
    worker = threading.Thread(target=lambda: found.append(faults_per_forward()))
    worker.start()
    worker.join()
    assert found[0] < 50  # of the 4,900 pages each round writes


# -- the batch queue -------------------------------------------------------------------------


def test_batcher_merges_queued_jobs_per_family_and_survives_errors() -> None:
    seen: list[tuple[str, list[int]]] = []
    gate = threading.Event()

    def run(family, payloads):
        gate.wait(5)
        seen.append((family, list(payloads)))
        if family == "bad":
            raise ValueError("broken batch")
        return [p * 10 for p in payloads]

    batcher = Batcher(run, lambda family: 3, max_wait_s=0.0, max_queue_rows=100)
    batcher.start()
    try:
        first = batcher.submit("a", 0)
        time.sleep(0.05)  # the worker now holds job 0 and waits at the gate
        futures = [
            batcher.submit(f, p)
            for f, p in [("a", 1), ("b", 2), ("a", 3), ("a", 4), ("a", 5), ("bad", 6)]
        ]
        gate.set()
        assert [f.result(5) for f in [first, *futures[:5]]] == [0, 10, 20, 30, 40, 50]
        with pytest.raises(ValueError, match="broken"):
            futures[5].result(5)
        assert batcher.submit("a", 7).result(5) == 70  # the worker lives on
    finally:
        batcher.stop()
    assert seen[:4] == [("a", [0]), ("a", [1, 3, 4]), ("b", [2]), ("a", [5])]


def test_batcher_refuses_when_the_queue_is_full() -> None:
    batcher = Batcher(lambda f, p: p, lambda f: 1, 0.0, max_queue_rows=2)  # never started
    batcher.submit("a", 1, rows=2)
    with pytest.raises(RequestError) as caught:
        batcher.submit("a", 2)
    assert caught.value.status == 503


def test_a_lone_request_does_not_wait_for_the_batch_window() -> None:
    batcher = Batcher(lambda f, p: p, lambda f: 64, max_wait_s=2.0, max_queue_rows=10)
    batcher.start()
    try:
        started = time.perf_counter()
        assert batcher.submit("a", 1).result(5) == 1
        assert time.perf_counter() - started < 0.5
    finally:
        batcher.stop()


# -- loading: checksums and golden outputs keep a broken artifact from serving ----------------


def copy_into_store(name: str, source_tag: str, edit) -> None:
    """Copy a stored model under a new name, letting `edit(directory)` break it."""
    import shutil

    import bentoml

    source = Path(bentoml.models.get(source_tag).path)
    with bentoml.models.create(name) as stored:
        for path in source.iterdir():
            if path.is_file() and not path.name.startswith(("model.yaml", "custom_objects")):
                shutil.copy(path, Path(stored.path) / path.name)
        edit(Path(stored.path))


def loaded_runtime(**settings: str):
    """A Runtime with the three tasks' models loaded as the service loads them (synchronously)."""
    from service.runtime import Runtime
    from service.tasks import load_models
    from service.tasks.caption import CaptionTask
    from service.tasks.language_model import LanguageModelTask
    from service.tasks.translate import TranslateTask

    runtime = Runtime(Settings(torch_threads=1, **settings))  # keep the tests' one thread
    runtime.batcher.start()
    tasks = [CaptionTask(runtime), TranslateTask(runtime), LanguageModelTask(runtime)]
    load_models(runtime, tasks)
    runtime.batcher.stop()
    return runtime


def test_tiny_models_load_and_pass_their_golden_check(stored_models) -> None:
    runtime = loaded_runtime()
    assert runtime.state == "ready", runtime.problem
    assert [m["tag"] for m in runtime.info()["models"]] == [
        stored_models.captioner,
        stored_models.captioner_de,
        stored_models.translator,
        stored_models.language_model,
    ]


def test_the_batch_worker_lets_others_run_once_a_decoding_step(stored_models, monkeypatch) -> None:
    """Between two decoding steps the batch worker gives up the GIL and its core (os.sched_yield),
    so that the event loop gets a turn within a running batch: what keeps health probes and the
    door's refusals answered under overload (docs/service.md, Overload)."""
    from models.search import SearchOptions, decode
    from models.vocabulary import END

    runtime = loaded_runtime(language_model="")
    served = runtime.models["translator"]
    yields = []
    monkeypatch.setattr(os, "sched_yield", lambda: yields.append(1))
    ids = torch.tensor([[5, 6, 7, END]])
    state = served.model.init_state(ids, torch.tensor([4]))
    options = SearchOptions(max_length=6, min_length=6)  # END forbidden: exactly 6 steps
    (found,) = decode(served.model.decoder, state, options)
    assert len(found[0].token_log_probs) == 6
    assert len(yields) == 6


def test_tampered_weights_keep_the_service_not_ready(stored_models, caplog) -> None:
    def flip_a_byte(directory: Path) -> None:
        weights = bytearray((directory / "model.safetensors").read_bytes())
        weights[-1] ^= 0xFF
        (directory / "model.safetensors").write_bytes(bytes(weights))

    copy_into_store("tampered-captioner", stored_models.captioner, flip_a_byte)
    with caplog.at_level(logging.ERROR, logger="bentoml.seqserve"):
        runtime = loaded_runtime(captioner="tampered-captioner")
    assert runtime.state == "failed" and not runtime.ready
    assert "ChecksumError" in runtime.problem and "/" not in runtime.problem  # no paths leak
    assert "NOT READY" in caplog.text and "sha256" in caplog.text


def test_a_wrong_golden_output_keeps_the_service_not_ready(stored_models, caplog) -> None:
    from models.checkpoint import write_checksums

    def change_golden(directory: Path) -> None:
        golden = json.loads((directory / "golden.json").read_text())
        golden["output"] = "not what the model says"
        (directory / "golden.json").write_text(json.dumps(golden))
        write_checksums(directory)  # checksums pass: only the golden check can catch it

    copy_into_store("wrong-golden", stored_models.translator, change_golden)
    with caplog.at_level(logging.ERROR, logger="bentoml.seqserve"):
        runtime = loaded_runtime(translators="wrong-golden")
    assert runtime.state == "failed" and "golden check failed" in caplog.text


def test_a_missing_model_names_what_to_do(stored_models, caplog) -> None:
    with caplog.at_level(logging.ERROR, logger="bentoml.seqserve"):
        runtime = loaded_runtime(translators="no-such-model")
    assert runtime.state == "failed" and "make import-models" in caplog.text


def test_without_a_language_model_the_service_is_ready_and_the_lm_answers_404(
    stored_models,
) -> None:
    from service.tasks.language_model import served_language_model

    for name in ("no-such-lm", ""):  # not in the store; switched off
        runtime = loaded_runtime(language_model=name)
        assert runtime.state == "ready", runtime.problem
        assert stored_models.language_model not in [m["tag"] for m in runtime.info()["models"]]
        with pytest.raises(RequestError) as caught:  # the batcher is stopped: ask directly
            served_language_model(runtime.models, runtime.settings.language_model)
        assert (caught.value.status, caught.value.code) == (404, "model_not_installed")
        assert "make import-models" in caught.value.message


def test_a_language_model_with_a_wrong_golden_keeps_the_service_not_ready(
    stored_models, caplog
) -> None:
    from models.checkpoint import write_checksums

    def change_golden(directory: Path) -> None:
        golden = json.loads((directory / "golden.json").read_text())
        golden["output"] = "not what the model says"
        (directory / "golden.json").write_text(json.dumps(golden))
        write_checksums(directory)

    copy_into_store("wrong-golden-lm", stored_models.language_model, change_golden)
    with caplog.at_level(logging.ERROR, logger="bentoml.seqserve"):
        runtime = loaded_runtime(language_model="wrong-golden-lm")
    assert runtime.state == "failed" and "golden check failed" in caplog.text


def test_attention_grids_follow_the_feature_map() -> None:
    from service.tasks.caption import grid_rows

    grid = grid_rows(torch.full((2, 49), 1 / 49))
    assert len(grid) == 2 and len(grid[0]) == 7 and len(grid[0][0]) == 7
    assert [len(row) for row in grid_rows(torch.ones(3, 16))[0]] == [4] * 4  # 128 px: 4x4
    assert [len(row) for row in grid_rows(torch.ones(1, 10))[0]] == [10]


def test_requests_before_ready_answer_503_not_ready() -> None:
    from service.runtime import Runtime

    runtime = Runtime(Settings(torch_threads=1))  # never started: still loading
    with pytest.raises(RequestError) as caught:
        runtime.ready_models()
    assert (caught.value.status, caught.value.code) == (503, "not_ready")


def test_an_awaited_request_gets_its_results_or_gives_its_jobs_up() -> None:
    """Runtime.results_async (async APIs): results as they come; after the time limit 504, and
    when the request is cancelled CancelledError; either way its queued jobs
    are dropped from the batcher."""
    from service.runtime import BatchFamily, Runtime

    runtime = Runtime(Settings(torch_threads=1, request_timeout_s=0.2))  # batcher never started
    family = BatchFamily("translate", "translator", 8, lambda served, jobs: [])

    async def scenario() -> None:
        answered = Future()
        asyncio.get_running_loop().call_later(0.01, answered.set_result, "done")
        assert await runtime.results_async([answered]) == ["done"]
        late = runtime.batcher.submit(family, 1)
        with pytest.raises(RequestError) as caught:
            await runtime.results_async([late])
        assert caught.value.status == 504 and late.cancelled()
        left = runtime.batcher.submit(family, 2)
        waiting = asyncio.create_task(runtime.results_async([left]))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert left.cancelled()

    asyncio.run(scenario())


def test_async_api_bodies_answer_errors_as_plain_ones_do(caplog) -> None:
    from service.errors import answers_errors

    @answers_errors
    async def refusing() -> str:
        raise RequestError("no such model", "model", code="unknown_model")

    @answers_errors
    async def broken() -> str:
        raise KeyError("a bug")

    refused = asyncio.run(refusing())
    assert refused.status_code == 400 and json.loads(refused.body)["error"]["code"] == (
        "unknown_model"
    )
    failed = asyncio.run(broken())
    assert failed.status_code == 500 and "a bug" not in failed.body.decode()
    assert "unexpected error while answering broken" in caplog.text


def test_autocast_that_changes_the_golden_output_falls_back_to_fp32(
    stored_models, monkeypatch, caplog
) -> None:
    """On CUDA the models start in bf16 autocast; CPU bf16 autocast exercises the same guard."""
    from service import runtime as runtime_module

    load = runtime_module.load_served_model

    def load_with_autocast(*args, **kwargs):
        served = load(*args, **kwargs)
        served.autocast = True
        return served

    monkeypatch.setattr(runtime_module, "load_served_model", load_with_autocast)
    with caplog.at_level(logging.WARNING, logger="bentoml.seqserve"):
        runtime = loaded_runtime()
    assert runtime.state == "ready"
    for served in runtime.models.values():  # kept only where bf16 reproduced the golden output
        assert served.autocast or "serving it in fp32" in caplog.text


# -- issue 17: settings, the queue's report, request IDs in log lines ------------------------


def test_api_keys_come_from_the_environment_and_a_file(tmp_path) -> None:
    from service.settings import store_tag

    keys = tmp_path / "keys"
    keys.write_text("# comment\nfile-key-0123456789abcdef\n\n")
    settings = Settings(api_keys="env-key-0123456789abcdef, ", api_keys_file=str(keys))
    assert settings.api_key_list() == ["env-key-0123456789abcdef", "file-key-0123456789abcdef"]
    assert Settings().api_key_list() == []
    with pytest.raises(ValueError, match="at least 16"):
        Settings(api_keys="short").api_key_list()
    with pytest.raises(ValueError, match="SEQSERVE_API_KEYS_FILE"):
        Settings(api_keys_file=str(tmp_path / "missing")).api_key_list()
    assert store_tag("translator") == "translator:latest"
    assert store_tag("translator:abc123") == "translator:abc123"


def test_the_batcher_reports_queued_rows_and_requests_per_family() -> None:
    reports: list[tuple[str, int, int]] = []
    batcher = Batcher(
        lambda f, p: p, lambda f: 8, 0.0, 100, observe=lambda *seen: reports.append(seen)
    )  # never started: everything stays queued
    first = batcher.submit("a", 1, rows=3, request="r1")
    batcher.submit("a", 2, rows=1, request="r1")
    batcher.submit("a", 3, rows=2, request="r2")
    batcher.submit("b", 4)
    assert reports[-2:] == [("a", 6, 2), ("b", 1, 1)]
    batcher.give_up([first])  # r1's first job is dropped
    assert ("a", 3, 2) in reports[-2:]


def test_log_lines_written_for_a_request_end_with_its_id() -> None:
    from service.access import RequestIdLog
    from service.errors import CURRENT_REQUEST, RequestContext

    def line(message: str, *args: object) -> str:
        record = logging.LogRecord("x", logging.INFO, __file__, 1, message, args, None)
        RequestIdLog().filter(record)
        return record.getMessage()

    assert line("done %s", "ok") == "done ok"  # outside a request: unchanged
    token = CURRENT_REQUEST.set(RequestContext("abc-1", "/translate"))
    try:
        assert line("done %s", "ok") == "done ok request_id=abc-1"
        assert line("100% sure") == "100% sure request_id=abc-1"
    finally:
        CURRENT_REQUEST.reset(token)
