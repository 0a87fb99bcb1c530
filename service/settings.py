"""Service limits and tuning, read once from SEQSERVE_* environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

MiB = 1024 * 1024
MIN_API_KEY = 16  # characters; a short key is guessable
IMAGE_DECODE = ("auto", "cpu", "device")  # where JPEG uploads are decoded
# images per captioning batch when MAX_BATCH_IMAGES is 0 (see Settings.image_batch)
GPU_IMAGE_BATCH = 32
CPU_IMAGE_BATCH = 4


@dataclass(frozen=True)
class Settings:
    """Every knob the service has; each field can be overridden by SEQSERVE_<FIELD_NAME>."""

    # store models, each "name" (its latest version) or "name:version" (pinned)
    captioner: str = "captioner"
    captioner_de: str = "captioner_de"  # optional: answers language "de" when in the store
    translators: str = "translator"  # comma-separated; the first is the default; a+b: an ensemble
    language_model: str = "charlm"  # optional: served when in the store; "" turns it off
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # JPEGs: cpu = Pillow in the request thread; device = torchvision in the batch worker, a
    # batch at once on the model's device (nvjpeg on CUDA); auto = device when that is CUDA
    image_decode: str = "auto"
    access_log: bool = True  # BentoML's log line per request; costs CPU under load
    workers: int = 0  # serving processes, each with its own models and batch queue; 0: auto
    torch_threads: int = 0  # per worker; 0: its share of the CPUs, less one for requests
    api_threads: int = 64  # BentoML threads: requests being decoded or waiting on a batch
    request_timeout_s: float = 60.0
    gpus: float = 1.0  # what `resources` asks for; a CPU-only host still starts (see docs)
    max_batch_images: int = 0  # images per batched forward; 0: 4 on the CPU, 32 on a GPU
    max_batch_sentences: int = 64
    batch_wait_ms: float = 5.0  # longest wait for requests that are still being decoded
    max_queue_rows: int = 1024  # queued rows beyond this answer 503
    max_image_pixels: int = 25_000_000  # width x height, checked before decoding
    max_aspect_ratio: float = 4.0  # longer images are centre-cropped to this before resizing
    max_source_tokens: int = 100  # per sentence, after tokenisation
    caption_body_bytes: int = 10 * MiB
    caption_batch_body_bytes: int = 40 * MiB
    translate_body_bytes: int = 1 * MiB
    cors_origins: str = ""  # comma-separated origins that browsers may call from; "" = no CORS
    api_keys: str = ""  # comma-separated; with API_KEYS_FILE empty too, no key is needed
    api_keys_file: str = ""  # a file of keys, one a line ('#' starts a comment)
    open_health: bool = True  # with keys: /livez, /readyz, /healthz answer without one
    open_metrics: bool = False  # with keys: /metrics answers without one
    # -- overload: the door in front of the API routes (service/admission.py) --
    max_in_flight: int = 0  # API calls at once per worker, more answer 429 unread; 0: auto
    # with 2+ workers, an API call on a connection older than this (+-20%) closes it with its
    # answer, so that keep-alive clients spread over the workers again (service/connections.py)
    max_connection_age_s: float = 5.0  # 0: never

    def __post_init__(self) -> None:
        if self.image_decode not in IMAGE_DECODE:
            raise ValueError(
                f"SEQSERVE_IMAGE_DECODE={self.image_decode!r}: expected one of "
                f"{', '.join(IMAGE_DECODE)}"
            )

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Defaults overridden by SEQSERVE_* variables; a malformed value raises ValueError."""
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = environ.get(f"SEQSERVE_{f.name.upper()}")
            if raw is not None:
                kind = type(getattr(cls, f.name))
                try:
                    values[f.name] = _parse_bool(raw) if kind is bool else kind(raw)
                except ValueError as error:
                    raise ValueError(f"SEQSERVE_{f.name.upper()}={raw!r}: {error}") from None
        return cls(**values)

    def worker_count(self) -> int:
        """WORKERS, or when 0: one process on a GPU (one batch queue feeds it best), else two
        on a host with two or more CPUs. One Python process spends most of a core holding the
        GIL (HTTP, batching, the search loop), so one worker leaves a second core mostly idle
        (measurements in docs/service.md)."""
        if self.workers > 0:
            return self.workers
        if self.device.startswith("cuda") or (
            self.device == "auto" and Path("/dev/nvidiactl").exists()
        ):
            return 1
        return min(2, len(os.sched_getaffinity(0)))

    def jpegs_on_device(self, device_type: str) -> bool:
        """Whether JPEG uploads are left encoded for the batch worker to decode on the model's
        device (`device_type`, e.g. "cuda"): IMAGE_DECODE=device, or auto on CUDA."""
        return self.image_decode == "device" or (
            self.image_decode == "auto" and device_type == "cuda"
        )

    def image_batch(self, device_type: str) -> int:
        """MAX_BATCH_IMAGES, or when 0: GPU_IMAGE_BATCH on CUDA, CPU_IMAGE_BATCH elsewhere. On
        the CPU the encoder runs slower per image as the batch grows, so big batches cost
        throughput there (bench/README.md, "Captions in small batches on the CPU")."""
        if self.max_batch_images > 0:
            return self.max_batch_images
        return GPU_IMAGE_BATCH if device_type == "cuda" else CPU_IMAGE_BATCH

    def connection_age_s(self) -> float:
        """MAX_CONNECTION_AGE_S with two or more workers; 0 (never) with one, which has nobody
        to hand a connection to."""
        return self.max_connection_age_s if self.worker_count() >= 2 else 0.0

    def in_flight_limit(self) -> int:
        """MAX_IN_FLIGHT, or when 0: enough one-input calls to fill the batch that runs and the
        next (twice the larger of MAX_BATCH_IMAGES and MAX_BATCH_SENTENCES), but no more than
        API_THREADS: a call without a thread waits outside the batch queue, holding its body."""
        if self.max_in_flight > 0:
            return self.max_in_flight
        images = self.image_batch("cuda")  # the door does not know the device: the larger
        return min(self.api_threads, 2 * max(images, self.max_batch_sentences))

    @property
    def translator_names(self) -> list[str]:
        return _items(self.translators)

    @property
    def translator_store_models(self) -> list[str]:
        """The store models the translators need: each ensemble's members, once each, in order."""
        members = [m for name in self.translator_names for m in ensemble_members(name)]
        return list(dict.fromkeys(members))

    @property
    def cors_origin_list(self) -> list[str]:
        return _items(self.cors_origins)

    def api_key_list(self) -> list[str]:
        """API_KEYS and the keys in API_KEYS_FILE; [] means no key is needed. ValueError for a
        missing file or a key shorter than MIN_API_KEY characters."""
        keys = _items(self.api_keys)
        if self.api_keys_file:
            path = Path(self.api_keys_file)
            if not path.is_file():
                raise ValueError(f"SEQSERVE_API_KEYS_FILE={self.api_keys_file!r}: no such file")
            lines = path.read_text(encoding="utf-8").splitlines()
            keys += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        short = [key for key in keys if len(key) < MIN_API_KEY]
        if short:
            raise ValueError(f"API keys must have at least {MIN_API_KEY} characters")
        return keys


def store_tag(model: str) -> str:
    """A model setting as a store tag: "name" -> "name:latest"; "name:version" stays."""
    return model if ":" in model else f"{model}:latest"


# -- ensembles: a TRANSLATORS entry "a+b" decodes with store models a and b averaged --------

ENSEMBLE_JOIN = "+"  # never part of a store tag, so "a+b" cannot name one model


def ensemble_members(model: str) -> list[str]:
    """A TRANSLATORS entry's store models: "a+b:v2" -> ["a", "b:v2"]; one model -> [model].
    ValueError for an empty member ("a+", "a++b")."""
    members = [member.strip() for member in model.split(ENSEMBLE_JOIN)]
    if "" in members:
        raise ValueError(
            f"{model!r}: an ensemble is store models joined by {ENSEMBLE_JOIN!r}, each a name or "
            "name:version, e.g. translator+translator_seed2"
        )
    return members


def _items(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")
