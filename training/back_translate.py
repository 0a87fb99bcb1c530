r"""Back-translation (Sennrich et al. 2016): monolingual text through a saved translator into
line-aligned synthetic pairs, for `train_translator --synthetic-dir` in the other direction.

    python -m training.back_translate --model runs/translator_de_en/best --input mono.de \
        --output-dir data/bt-en-de --source-lang de --target-lang en

writes OUT/train.de (the real German, one sentence a line), OUT/train.en (its machine English)
and OUT/manifest.json; an en->de run then reads them with `--synthetic-dir OUT`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from models.atomic import replacing_directory, write_text
from models.checkpoint import LoadedModel, load_model
from models.search import SearchOptions
from training.distributed import pick_device
from training.errors import run_main
from training.evaluate import max_length_of
from training.export import directory_checksum
from training.predict import translate_texts
from training.settings import SettingsError

CHUNK_BATCHES = 16  # batches per progress update: translate_texts sorts each chunk by length


def get_args_parser() -> argparse.ArgumentParser:
    """Flags of `python -m training.back_translate`."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, required=True, help="saved translator directory, e.g. runs/x/best"
    )
    parser.add_argument(
        "--input", type=Path, required=True, help="monolingual text, one sentence a line"
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        required=True,
        help="folder written as a whole (replacing what was there): train.<source-lang>, "
        "train.<target-lang>, manifest.json",
    )
    parser.add_argument(
        "--source-lang", required=True, help="the input's language, the model's source (e.g. de)"
    )
    parser.add_argument(
        "--target-lang", required=True, help="the language the model writes (e.g. en)"
    )
    parser.add_argument(
        "--beam", type=int, default=1, help="beam size; 1 decodes greedily (default: 1)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, help="sentences per decoding batch (default: 64)"
    )
    parser.add_argument(
        "--max-sentences",
        type=int,
        default=0,
        help="translate only the first N non-empty lines (default: 0, all)",
    )
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA when present), cpu or cuda (default: auto)"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (default: 0, torch's choice)"
    )
    return parser


def read_sentences(path: Path, limit: int = 0) -> list[str]:
    """The non-empty lines of `path`, stripped; the first `limit` of them when `limit` > 0."""
    if not path.is_file():
        raise FileNotFoundError(
            f"--input {path} does not exist: give a text file, one sentence a line"
        )
    lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    sentences = [line for line in lines if line]
    return sentences[:limit] if limit > 0 else sentences


def load_translator(directory: Path, source: str, target: str, device: torch.device) -> LoadedModel:
    """The saved translator of `directory`, checked to translate `source` into `target`."""
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(
            f"--model {directory} holds no saved model (no config.json): give a directory such "
            "as runs/<name>/best, written by python -m training.train_translator"
        )
    loaded = load_model(directory, device)
    if loaded.kind != "translator":
        raise SettingsError(f"--model {directory} is a {loaded.kind}, not a translator")
    direction = loaded.metadata.get("settings", {}).get("direction")
    if direction and direction != f"{source}-{target}":
        raise SettingsError(
            f"--model {directory} translates {direction}, not {source}-{target}: give "
            f"--source-lang and --target-lang in its direction, or a {source}-{target} model"
        )
    return loaded


def back_translate(
    loaded: LoadedModel, sentences: list[str], options: SearchOptions, batch_size: int
) -> list[str]:
    """The translation of each sentence, batched by `translate_texts`, with a progress bar."""
    vocabularies = loaded.vocabularies
    chunk = batch_size * CHUNK_BATCHES
    outputs: list[str] = []
    with tqdm(total=len(sentences), desc="back-translating", unit="sentence") as bar:
        for start in range(0, len(sentences), chunk):
            part = sentences[start : start + chunk]
            outputs += translate_texts(
                loaded.model,
                vocabularies["source"],
                vocabularies["target"],
                part,
                options,
                batch_size,
            )
            bar.update(len(part))
    return outputs


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Translate `--input`, write the aligned pairs (empty outputs left out) and the manifest."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.beam < 1 or args.batch_size < 1:
        raise SettingsError("--beam and --batch-size must be at least 1")
    source, target = args.source_lang, args.target_lang
    loaded = load_translator(args.model, source, target, pick_device(args.device))
    sentences = read_sentences(args.input, args.max_sentences)
    started = time.monotonic()
    method = "greedy" if args.beam == 1 else "beam"
    options = SearchOptions(method, beam_size=args.beam, max_length=max_length_of(loaded))
    outputs = [
        " ".join(o.split()) for o in back_translate(loaded, sentences, options, args.batch_size)
    ]
    pairs = [(s, o) for s, o in zip(sentences, outputs, strict=True) if o]  # one line each
    manifest = {
        "model": str(args.model),
        "model_sha256": directory_checksum(args.model),
        "model_direction": f"{source}-{target}",
        "input": str(args.input),
        "search": {"beam": args.beam, "batch_size": args.batch_size},
        "sentences": len(sentences),
        "pairs": len(pairs),
        "empty_outputs": len(sentences) - len(pairs),
        "seconds": round(time.monotonic() - started, 1),
        "files": {"real": f"train.{source}", "synthetic": f"train.{target}"},
    }
    with replacing_directory(args.output_dir) as staged:
        write_text(staged / f"train.{source}", "".join(f"{s}\n" for s, _ in pairs))
        write_text(staged / f"train.{target}", "".join(f"{o}\n" for _, o in pairs))
        write_text(staged / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False))
    print(json.dumps(manifest, ensure_ascii=False))
    return manifest


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())
