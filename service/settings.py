"""Service limits and tuning, read once from SEQSERVE_* environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

MiB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Every knob the service has; each field can be overridden by SEQSERVE_<FIELD_NAME>."""

    captioner: str = "captioner"  # store model names
    translators: str = "translator"  # comma-separated; the first is the default
    language_model: str = "charlm"  # optional: served when in the store; "" turns it off
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    torch_threads: int = 0  # 0: one per CPU this process may use, less one for requests
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
                    values[f.name] = kind(raw)
                except ValueError as error:
                    raise ValueError(f"SEQSERVE_{f.name.upper()}={raw!r}: {error}") from None
        return cls(**values)

    @property
    def translator_names(self) -> list[str]:
        return [name.strip() for name in self.translators.split(",") if name.strip()]
