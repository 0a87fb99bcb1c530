"""Service limits and tuning, read once from SEQSERVE_* environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

MiB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Every knob the service has; each field can be overridden by SEQSERVE_<FIELD_NAME>."""

    captioner: str = "captioner"  # store model names
    captioner_de: str = "captioner_de"  # optional: answers language "de" when in the store
    translators: str = "translator"  # comma-separated; the first is the default
    language_model: str = "charlm"  # optional: served when in the store; "" turns it off
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    access_log: bool = True  # BentoML's log line per request; costs CPU under load
    workers: int = 0  # serving processes, each with its own models and batch queue; 0: auto
    torch_threads: int = 0  # per worker; 0: its share of the CPUs, less one for requests
    api_threads: int = 64  # BentoML threads: requests being decoded or waiting on a batch
    max_in_flight: int = 128  # API requests at once; more answer 429
    request_timeout_s: float = 60.0
    gpus: float = 1.0  # what `resources` asks for; a CPU-only host still starts (see docs)
    max_batch_images: int = 32  # rows per batched forward
    max_batch_sentences: int = 64
    batch_wait_ms: float = 5.0  # longest wait for requests that are still being decoded
    max_queue_rows: int = 1024  # queued rows beyond this answer 503
    max_image_pixels: int = 25_000_000  # width x height, checked before decoding
    max_aspect_ratio: float = 4.0  # longer images are centre-cropped to this before resizing
    max_source_tokens: int = 100  # per sentence, after tokenisation
    caption_body_bytes: int = 10 * MiB
    caption_batch_body_bytes: int = 40 * MiB
    translate_body_bytes: int = 1 * MiB

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

    @property
    def translator_names(self) -> list[str]:
        return [name.strip() for name in self.translators.split(",") if name.strip()]


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")
