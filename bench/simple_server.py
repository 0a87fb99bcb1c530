"""The server people write by hand: FastAPI + uvicorn, the same models, each request run on its own.

Usage: python -m bench.simple_server --captioner DIR --translator DIR [--port 8000]
The comparison point of bench/serving.py: no batching, no queue, sync endpoints in FastAPI's
thread pool, the same preprocessing and decoding code (models.inference) and the same defaults
(greedy, max_length 50) as the BentoML service.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI, File, UploadFile
from PIL import Image
from pydantic import BaseModel, Field

from bench import common
from models.checkpoint import load_model
from models.inference import caption_images, precision, translate
from models.search import SearchOptions

OPTIONS = SearchOptions()  # the service's default request options: greedy, max_length 50


class TranslateRequest(BaseModel):
    sentences: list[str] = Field(min_length=1, max_length=32)


def get_args_parser() -> argparse.ArgumentParser:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--captioner", type=Path, required=True, help="model directory (required)")
    parser.add_argument("--translator", type=Path, required=True, help="model directory (required)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads; 0 leaves torch's default (default: 0)",
    )
    parser.add_argument(
        "--autocast", default="none", choices=("none", "bf16", "fp16"), help="(default: none)"
    )
    parser.add_argument(
        "--noop",
        action="store_true",
        help="the same endpoints without models or model work: its framework ceiling (default: off)",
    )
    return parser


def build_app(args: argparse.Namespace) -> FastAPI:
    """The FastAPI app: /caption (multipart `image`), /translate (JSON), /healthz."""
    if args.noop:
        return noop_app()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    captioner = load_model(args.captioner, device)
    translator = load_model(args.translator, device)
    words = common.target_vocabulary(captioner)
    source, target = translator.vocabularies["source"], translator.vocabularies["target"]
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/caption")
    def caption(image: UploadFile = File(...)) -> dict[str, str]:  # noqa: B008 - FastAPI idiom
        pixels = captioner.model.encoder.preprocess(Image.open(io.BytesIO(image.file.read())))
        with precision(device, args.autocast):
            found = caption_images(captioner.model, pixels.unsqueeze(0).to(device), OPTIONS)
        return {"caption": words.decode(found[0][0].tokens)}

    @app.post("/translate")
    def translate_sentences(request: TranslateRequest) -> dict[str, list[str]]:
        with torch.inference_mode(), precision(device, args.autocast):
            found = translate(translator.model, source, request.sentences, OPTIONS)
        return {"translations": [target.decode(h[0].tokens) for h in found]}

    return app


def noop_app() -> FastAPI:
    """The endpoints of `build_app` answering at once: the upload is parsed but not read."""
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/caption")
    def caption(image: UploadFile = File(...)) -> dict[str, str]:  # noqa: B008 - FastAPI idiom
        return {"caption": "a house with a red roof"}

    @app.post("/translate")
    def translate_sentences(request: TranslateRequest) -> dict[str, list[str]]:
        return {"translations": request.sentences}

    return app


def main(args: argparse.Namespace) -> None:
    uvicorn.run(build_app(args), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
