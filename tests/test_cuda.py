"""What must hold on a CUDA device (`make gpu-check` runs these, then bench/gpu.py): the shipped
models run there, reproduce their golden outputs in fp32 and under bf16 autocast (or the service
would fall back to fp32 for them), decode a row the same alone and inside a batch, and sample the
same text from the same seed; JPEGs decoded by nvjpeg in the batch worker (IMAGE_DECODE=auto)
get the captions Pillow's pixels get, turned by their EXIF orientation, and a broken one gets its
own 4xx. Skipped, saying so, where torch sees no CUDA device."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from models.checkpoint import LoadedModel, load_model
from models.inference import caption_images, precision, translate
from models.search import SearchOptions

ROOT = Path(__file__).resolve().parents[1]
PRETRAINED = ROOT / "pretrained"
IMAGES = ROOT / "tests" / "fixtures" / "images"
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: run on a GPU host"),
]
DEVICE = torch.device("cuda")
SENTENCES = ["Where is the station?", "I like coffee with milk.", "the red house", "Good night."]


def _loaded(name: str) -> LoadedModel:
    return load_model(PRETRAINED / name, DEVICE)


def _golden(name: str) -> dict:
    return json.loads((PRETRAINED / name / "golden.json").read_text(encoding="utf-8"))


def _image_batch(model: torch.nn.Module, names: list[str]) -> torch.Tensor:
    tensors = []
    for name in names:
        with Image.open(IMAGES / name) as image:
            tensors.append(model.encoder.preprocess(image))
    return torch.stack(tensors).to(DEVICE)  # (B, 3, S, S)


def test_models_load_onto_the_gpu() -> None:
    for name in ("captioner", "translator", "charlm"):
        parameters = list(_loaded(name).model.parameters())
        assert parameters and all(p.device.type == "cuda" for p in parameters), name


@pytest.mark.parametrize("autocast", ["none", "bf16"])
def test_golden_outputs_on_the_gpu(autocast: str) -> None:
    """fp32 must reproduce the goldens. Under bf16 a model whose golden changes is served in fp32
    by the service's own check (service/runtime.py), so a change there is an expected failure
    that names the model, not a silent pass."""
    changed = []
    for name, output in (("captioner", _caption_golden), ("translator", _translation_golden)):
        with precision(DEVICE, autocast):
            if output(_loaded(name)) != _golden(name)["output"]:
                changed.append(name)
    if autocast == "bf16" and changed:
        pytest.xfail(f"bf16 changes the golden output of {changed}: served in fp32")
    assert not changed


def _caption_golden(loaded: LoadedModel) -> str:
    golden = _golden("captioner")
    with Image.open(PRETRAINED / "captioner" / golden["input"]) as image:
        pixels = loaded.model.encoder.preprocess(image).unsqueeze(0).to(DEVICE)
    best = caption_images(loaded.model, pixels, SearchOptions(**golden["options"]))[0][0]
    return loaded.vocabularies["caption"].decode(best.tokens)


def _translation_golden(loaded: LoadedModel) -> str:
    golden, v = _golden("translator"), loaded.vocabularies
    found = translate(
        loaded.model, v["source"], [golden["input"]], SearchOptions(**golden["options"])
    )
    return v["target"].decode(found[0][0].tokens)


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_a_row_decodes_the_same_alone_and_in_a_batch(method: str) -> None:
    captioner = _loaded("captioner")
    options = SearchOptions(method, beam_size=4, max_length=20)
    names = ["photo_house.jpg", "emoji_cat_face.png", "emoji_pizza.png", "photo_aqua.jpg"]
    batch = caption_images(captioner.model, _image_batch(captioner.model, names), options)
    for i, name in enumerate(names):
        alone = caption_images(captioner.model, _image_batch(captioner.model, [name]), options)
        assert alone[0][0].tokens == batch[i][0].tokens, name
    translator = _loaded("translator")
    v = translator.vocabularies
    together = translate(translator.model, v["source"], SENTENCES, options)
    for i, sentence in enumerate(SENTENCES):
        single = translate(translator.model, v["source"], [sentence], options)
        assert single[0][0].tokens == together[i][0].tokens, sentence


def _decoded_on_the_gpu(model: torch.nn.Module, uploads: list[bytes]) -> list:
    """The batch worker's encoder inputs for `uploads` queued together, as the service makes
    them on CUDA: each checked from its header, then all JPEGs decoded by nvjpeg in one call."""
    from service.images import ImageLimits, decode_or_defer
    from service.tasks.caption import CaptionJob, encoder_inputs

    limits = ImageLimits(25_000_000, 4.0)
    options = SearchOptions("greedy")
    jobs = [
        CaptionJob(decode_or_defer(data, limits, f"images[{i}]"), options, f"images[{i}]")
        for i, data in enumerate(uploads)
    ]
    return encoder_inputs(model.encoder, jobs, DEVICE)


def test_jpegs_decoded_on_the_gpu_get_the_captions_of_pillows_pixels() -> None:
    """nvjpeg's IDCT and chroma upsampling differ from libjpeg-turbo's by a few levels here and
    there; the captions must not change."""
    captioner = _loaded("captioner")
    names = sorted(path.name for path in IMAGES.glob("*.jpg"))
    options = SearchOptions("beam", beam_size=4, max_length=20)
    inputs = _decoded_on_the_gpu(captioner.model, [(IMAGES / name).read_bytes() for name in names])
    assert all(isinstance(t, torch.Tensor) and t.device.type == DEVICE.type for t in inputs)
    on_gpu = caption_images(captioner.model, torch.stack(inputs), options)
    pillow = caption_images(captioner.model, _image_batch(captioner.model, names), options)
    for name, gpu, cpu in zip(names, on_gpu, pillow, strict=True):
        assert gpu[0].tokens == cpu[0].tokens, name


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied_to_jpegs_decoded_on_the_gpu(orientation: int) -> None:
    """The CUDA decoder ignores `apply_exif_orientation`; the service turns the pixels itself."""
    captioner = _loaded("captioner")
    exif = Image.Exif()
    exif[0x0112] = orientation
    tagged, plain = io.BytesIO(), io.BytesIO()
    with Image.open(IMAGES / "photo_house.jpg") as photo:
        photo.save(tagged, "JPEG", exif=exif, quality=95)
        photo.save(plain, "JPEG", quality=95)  # the same pixels, shown as stored
    (on_gpu,) = _decoded_on_the_gpu(captioner.model, [tagged.getvalue()])
    upright, as_stored = (
        captioner.model.encoder.preprocess(Image.open(buffer)).to(DEVICE)
        for buffer in (tagged, plain)
    )
    assert (on_gpu - upright).abs().mean() < (on_gpu - as_stored).abs().mean() / 10


def test_a_broken_jpeg_decoded_on_the_gpu_gets_its_own_4xx() -> None:
    from service.errors import RequestError
    from tests.reliability.media import jpeg_header_bomb

    captioner = _loaded("captioner")
    good = (IMAGES / "photo_house.jpg").read_bytes()
    pixelless = jpeg_header_bomb(64, 48)  # a valid frame header, then the end: no pixel data
    inputs = _decoded_on_the_gpu(captioner.model, [good, pixelless, good])
    assert isinstance(inputs[0], torch.Tensor) and torch.equal(inputs[0], inputs[2])
    refused = inputs[1]
    assert isinstance(refused, RequestError)
    assert (refused.status, refused.code, refused.field) == (400, "invalid_image", "images[1]")


def test_sampling_is_reproducible_from_its_seed() -> None:
    translator = _loaded("translator")
    v = translator.vocabularies
    options = SearchOptions("sample", max_length=30, temperature=1.0, seed=7)
    first = translate(translator.model, v["source"], SENTENCES, options)
    again = translate(translator.model, v["source"], SENTENCES, options)
    assert [h[0].tokens for h in first] == [h[0].tokens for h in again]
