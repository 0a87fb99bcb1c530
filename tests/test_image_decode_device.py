"""JPEGs decoded in the batch worker on the model's device (IMAGE_DECODE=device), run here with
the device being the CPU: torchvision's `decode_jpeg` takes the same list there, so the whole
path (header check in the request thread, one batched decode, crop, EXIF orientation, resize and
normalisation on the device, a per-image 4xx) is exercised without a GPU. What only CUDA can
show (nvjpeg's pixels, the same captions) is in tests/test_cuda.py."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageOps
from torchvision.transforms.v2 import functional as F

from models.images import decode_jpegs, exif_transposed, image_to_tensor, pixels_to_tensor
from models.search import SearchOptions
from service.errors import RequestError
from service.images import EncodedJpeg, ImageLimits, decode_image, decode_or_defer
from service.schemas import DecodingOptions
from service.settings import Settings

IMAGES = Path(__file__).parent / "fixtures" / "images"
JPEGS = sorted(IMAGES.glob("*.jpg"))
LIMITS = ImageLimits(max_pixels=1_000_000, max_aspect_ratio=4.0)
CPU = torch.device("cpu")
# One uint8 level after the encoder's normalisation ((x - 127) / 128). Decoding is identical on
# the CPU (Pillow and torchvision both use libjpeg-turbo); torch's antialiased resize of a uint8
# tensor rounds differently from Pillow's: at most one level when shrinking the photos (bench/
# image_decode.py measures the same), up to two when enlarging a small image to 224 px.
LEVEL = 1 / 128
GREEDY = SearchOptions("greedy", max_length=12)

# torchvision 0.29 deprecates its image decoders in favour of TorchCodec (not installed here)
pytestmark = pytest.mark.filterwarnings(
    "ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning"
)


def encoded(image: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def corner_marked(width: int, height: int) -> Image.Image:
    """A grey gradient with a red top-left quarter: any rotation moves the red."""
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    image.paste((255, 0, 0), (0, 0, max(1, width // 4), max(1, height // 4)))
    return image


def with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encoded(image, "JPEG", exif=exif, quality=95)


def truncated_jpeg() -> bytes:
    """A JPEG whose header is whole and whose pixel data stops halfway."""
    data = encoded(Image.effect_noise((64, 64), 40).convert("RGB"))
    return data[: len(data) // 2]


def pixelless_jpeg() -> bytes:
    """A valid 64x48 JPEG frame header, then the end of the image: no tables, no pixel data."""
    from tests.reliability.media import jpeg_header_bomb

    return jpeg_header_bomb(64, 48)


BROKEN = {"truncated": truncated_jpeg, "pixelless": pixelless_jpeg}


@pytest.fixture(scope="module")
def task(stored_models) -> Iterator:
    """The caption task with JPEGs decoded in the batch worker (on the CPU here), its models
    loaded as the service loads them and its batch worker running."""
    from service.runtime import Runtime
    from service.tasks import load_models
    from service.tasks.caption import CaptionTask

    runtime = Runtime(Settings(torch_threads=1, image_decode="device", language_model=""))
    task = CaptionTask(runtime)
    runtime.batcher.start()
    load_models(runtime, [task])
    assert runtime.state == "ready", runtime.problem
    yield task
    runtime.batcher.stop()


def english(task):  # -> ServedModel
    return task.runtime.models[task.names["en"]]


def jobs_of(task, uploads: list[bytes]) -> list:
    """One CaptionJob per upload, its image as the request thread leaves it."""
    from service.tasks.caption import CaptionJob

    fields = [f"images[{i}]" for i in range(len(uploads))]
    return [
        CaptionJob(task.image_input(english(task), data, field), GREEDY, field)
        for data, field in zip(uploads, fields, strict=True)
    ]


def device_tensors(task, uploads: list[bytes]) -> list[torch.Tensor | RequestError]:
    """The batch worker's encoder inputs for `uploads` queued together, as the service makes them."""
    from service.tasks.caption import encoder_inputs

    jobs = jobs_of(task, uploads)
    assert all(isinstance(job.image, EncodedJpeg) for job in jobs)
    return encoder_inputs(english(task).model.encoder, jobs, CPU)


def pillow_tensor(model, data: bytes) -> torch.Tensor:
    """The CPU path's tensor: Pillow decodes, the encoder's preprocess resizes."""
    return model.encoder.preprocess(decode_image(data, LIMITS))


# -- the setting -------------------------------------------------------------------------------


def test_the_setting_is_validated_and_auto_means_cuda_only() -> None:
    with pytest.raises(ValueError, match="SEQSERVE_IMAGE_DECODE='gpu': expected one of auto"):
        Settings.from_env({"SEQSERVE_IMAGE_DECODE": "gpu"})
    with pytest.raises(ValueError, match="SEQSERVE_IMAGE_DECODE"):
        Settings(image_decode="")
    assert Settings.from_env({"SEQSERVE_IMAGE_DECODE": "device"}).image_decode == "device"
    assert Settings().jpegs_on_device("cuda") and not Settings().jpegs_on_device("cpu")
    assert not Settings(image_decode="cpu").jpegs_on_device("cuda")
    assert Settings(image_decode="device").jpegs_on_device("cpu")


def test_serving_on_the_cpu_keeps_pillow_by_default() -> None:
    from service.runtime import Runtime
    from service.tasks.caption import CaptionTask

    task = CaptionTask(Runtime(Settings(torch_threads=1, device="cpu")))
    assert not task.jpegs_on_device


# -- the request thread: the header checked, the pixels left encoded ---------------------------


def test_only_ycbcr_and_grey_jpegs_are_left_encoded() -> None:
    photo = Image.effect_noise((40, 30), 40).convert("RGB")
    for image in (photo, photo.convert("L")):
        assert isinstance(decode_or_defer(encoded(image), LIMITS), EncodedJpeg)
    for data in (encoded(photo.convert("CMYK")), encoded(photo, "PNG"), encoded(photo, "WEBP")):
        assert isinstance(decode_or_defer(data, LIMITS), Image.Image)


def test_a_jpeg_is_refused_from_its_header_as_before(pixel_bomb: bytes) -> None:
    from tests.reliability.media import jpeg_header_bomb

    for data in (jpeg_header_bomb(), b"\xff\xd8\xff\xe0" + b"\x00" * 20, b"", pixel_bomb):
        with pytest.raises(RequestError) as deferred:
            decode_or_defer(data, LIMITS)
        with pytest.raises(RequestError) as decoded:
            decode_image(data, LIMITS)
        assert (deferred.value.code, deferred.value.message) == (
            decoded.value.code,
            decoded.value.message,
        )
    for broken in BROKEN.values():  # checked from the header only: left to the batch worker
        assert isinstance(decode_or_defer(broken(), LIMITS), EncodedJpeg)


# -- the batch worker: decoded together, preprocessed on the device ----------------------------


def test_device_tensors_are_within_a_level_of_pillows_for_the_fixtures(task) -> None:
    model = english(task).model
    uploads = [path.read_bytes() for path in JPEGS]
    assert len(uploads) >= 2
    for path, data, tensor in zip(JPEGS, uploads, device_tensors(task, uploads), strict=True):
        assert isinstance(tensor, torch.Tensor)
        difference = (tensor - pillow_tensor(model, data)).abs()
        assert difference.max().item() <= LEVEL + 1e-6, path.name
        assert difference.mean().item() < 1e-3, path.name


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_on_the_tensor_is_pillows(orientation: int) -> None:
    pixels = Image.effect_noise((7, 5), 60).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = orientation
    shown = ImageOps.exif_transpose(Image.open(io.BytesIO(encoded(pixels, "PNG", exif=exif))))
    transposed = exif_transposed(F.pil_to_tensor(pixels), orientation)
    assert torch.equal(transposed, F.pil_to_tensor(shown))


@pytest.mark.parametrize("orientation", [3, 6, 8])
@pytest.mark.parametrize("size", [(96, 64), (400, 64)])  # 400x64: cropped to 4:1, then turned
def test_an_exif_rotated_jpeg_ends_up_as_pillow_shows_it(task, orientation, size) -> None:
    model = english(task).model
    data = with_orientation(corner_marked(*size), orientation)
    (tensor,) = device_tensors(task, [data])
    assert isinstance(tensor, torch.Tensor)
    upright = pillow_tensor(model, data)
    assert (tensor - upright).abs().max().item() <= 2 * LEVEL + 1e-6
    as_stored = pillow_tensor(model, encoded(corner_marked(*size)))  # what ignoring EXIF gives
    assert (tensor - as_stored).abs().mean().item() > 20 * LEVEL


def test_a_batch_with_a_broken_jpeg_decodes_the_others_alone() -> None:
    good = [path.read_bytes() for path in JPEGS]
    decoded = decode_jpegs([good[0], truncated_jpeg(), good[1]], CPU)
    assert decoded[1] is None
    for data, pixels in zip((good[0], good[1]), (decoded[0], decoded[2]), strict=True):
        assert pixels is not None
        assert torch.equal(pixels, F.pil_to_tensor(decode_image(data, ImageLimits(10**7, 4.0))))


@pytest.mark.parametrize("broken", BROKEN)
def test_a_corrupt_jpeg_gets_its_own_4xx_and_the_rest_of_the_batch_its_captions(
    task, broken: str
) -> None:
    """Three requests' images in one batch: the broken one's request alone is refused."""
    from service.tasks.caption import CaptionResult, run_batch

    good = JPEGS[0].read_bytes()
    with torch.inference_mode():  # as the batch worker runs it
        results = run_batch(english(task), jobs_of(task, [good, BROKEN[broken](), good]))
    assert isinstance(results[0], CaptionResult) and isinstance(results[2], CaptionResult)
    assert results[0].hypotheses[0].tokens == results[2].hypotheses[0].tokens
    refused = results[1]
    assert isinstance(refused, RequestError)
    assert (refused.status, refused.code, refused.field) == (400, "invalid_image", "images[1]")
    assert refused.message == "the JPEG image is truncated or corrupt"


def test_a_corrupt_jpeg_answers_the_request_with_its_4xx(task) -> None:
    good = JPEGS[0].read_bytes()
    with pytest.raises(RequestError) as caught:
        task.captions([good, truncated_jpeg()], ["images[0]", "images[1]"], DecodingOptions())
    assert (caught.value.status, caught.value.code) == (400, "invalid_image")
    assert caught.value.field == "images[1]"
    (found,), _ = task.captions([good], ["image"], DecodingOptions())  # the service goes on
    assert found.caption == found.alternatives[0].text


def test_a_jpeg_the_device_cannot_decode_goes_through_pillow(task, monkeypatch) -> None:
    import service.tasks.caption as caption

    monkeypatch.setattr(caption, "decode_jpegs", lambda files, device: [None] * len(files))
    data = JPEGS[0].read_bytes()
    (tensor,) = device_tensors(task, [data])
    assert isinstance(tensor, torch.Tensor)
    assert torch.equal(tensor, pillow_tensor(english(task).model, data))  # the CPU path's own


def test_a_jpeg_gets_the_same_caption_alone_and_inside_a_batch(task) -> None:
    uploads = [path.read_bytes() for path in JPEGS] + [(IMAGES / "emoji_pizza.png").read_bytes()]
    fields = [f"images[{i}]" for i in range(len(uploads))]
    together, _ = task.captions(uploads, fields, DecodingOptions())
    for data, found in zip(uploads, together, strict=True):
        (alone,), _ = task.captions([data], ["image"], DecodingOptions())
        assert alone.alternatives[0].log_prob == pytest.approx(found.alternatives[0].log_prob)
        assert alone.caption == found.caption


def test_the_device_path_resizes_like_the_pillow_path_at_other_sizes() -> None:
    data = JPEGS[0].read_bytes()
    (pixels,) = decode_jpegs([data], CPU)
    assert pixels is not None
    for size in (56, 128):
        pillow = image_to_tensor(decode_image(data, ImageLimits(10**7, 4.0)), size)
        assert (pixels_to_tensor(pixels, size) - pillow).abs().max().item() <= LEVEL + 1e-6
