"""What the benchmarks share: their flags and tables, machine facts, the models, inputs, servers."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from harness.server import Server, free_port
from models.checkpoint import LoadedModel
from models.vocabulary import Vocabulary

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PRETRAINED = ROOT / "pretrained"
IMAGE = ROOT / "tests" / "fixtures" / "images" / "photo_house.jpg"  # 640x480 JPEG
GOLDEN_IMAGE = ROOT / "tests" / "fixtures" / "images" / "emoji_cat_face.png"
EMOJI = ROOT / "data" / "emoji" / "images" / "google"
SENTENCES = ROOT / "data" / "de-en" / "test.en"
MODEL_CHOICES = ("pretrained", "random", "tiny")


def argument_parser(doc: str) -> argparse.ArgumentParser:
    """A benchmark's parser: its module docstring as the description, kept as written."""
    return argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_out_argument(parser: argparse.ArgumentParser, name: str, note: str = "") -> None:
    """The `--out` flag: the JSON report, bench/results/`name` by default."""
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS / name,
        help=f"JSON output{note} (default: bench/results/{name})",
    )


def add_models_argument(parser: argparse.ArgumentParser) -> None:
    """The `--models` flag every benchmark takes."""
    parser.add_argument(
        "--models",
        choices=MODEL_CHOICES,
        default="pretrained",
        help="pretrained/ (random weights of the same sizes when missing), random or tiny (default: pretrained)",
    )


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages: above about 1.5 on 2 cores, timings are not trustworthy."""
    return [round(x, 2) for x in os.getloadavg()]


def environment(**extra: Any) -> dict[str, Any]:
    """Date, machine, software and load: written beside every figure."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_start": load_average(),
        "command": " ".join([Path(sys.executable).name, "-m", *sys.argv]),
        **extra,
    }


def medians(runs: list[dict[str, Any]], keys: Sequence[str]) -> dict[str, float]:
    """The median of each of `keys` over repeated runs."""
    return {key: statistics.median(run[key] for run in runs) for key in keys}


def print_table(header: Sequence[str], rows: list[Sequence[object]]) -> None:
    """A markdown table: the header, its rule, one line per row."""
    print(f"| {' | '.join(header)} |")
    print("|" + "---|" * len(header))
    for row in rows:
        print(f"| {' | '.join(str(cell) for cell in row)} |")


def write_report(report: dict[str, Any], out: Path) -> None:
    """Record the load at the end too, and write the JSON report."""
    report["load_average_end"] = load_average()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


# -- the models -----------------------------------------------------------------------------


def model_dirs(which: str, workdir: Path) -> dict[str, Path]:
    """Model directories `captioner` and `translator` (with golden files) for `which`:
    the shipped ones in pretrained/, random weights at the default preset sizes, or tiny ones.
    `pretrained` falls back to random weights when pretrained/ does not hold both yet."""
    if which == "pretrained":
        shipped = {kind: PRETRAINED / kind for kind in ("captioner", "translator")}
        if all((d / "config.json").is_file() for d in shipped.values()):
            return shipped
        print("pretrained/ lacks a model: using random weights of the default preset sizes")
        which = "random"
    target = workdir / f"models-{which}"
    if not (target / "translator" / "checksums.json").is_file():
        write_random_models(target, tiny=which == "tiny")
    return {kind: target / kind for kind in ("captioner", "translator")}


def write_random_models(directory: Path, tiny: bool) -> None:
    """Random-weight models with golden files, in the layout `training.export` ships.

    Default sizes follow training/configs/*_default.yaml: captioner = EfficientNet-Lite0 at 128 px
    + additive attention + LSTM 512 over 2000 words; translator = bi-LSTM 192 + additive attention,
    4000/4000 words. Random weights never emit END: every output runs to its length limit.
    """
    from models.captioner import Captioner, CaptionerConfig
    from models.checkpoint import save_model
    from models.encoders import ImageEncoderConfig, TextEncoderConfig
    from models.inference import caption_images, translate
    from models.search import SearchOptions
    from models.tokenizers import WordTokenizer
    from models.translator import Translator, TranslatorConfig
    from models.vocabulary import Vocabulary

    torch.manual_seed(0)
    golden_options = {"method": "greedy", "max_length": 12}
    options = SearchOptions(**golden_options)
    english = sentences(4000)
    german_path = SENTENCES.with_suffix(".de")
    german = german_path.read_text().splitlines() if german_path.is_file() else english
    words = Vocabulary.build(english, WordTokenizer(lowercase=True), max_size=2000)
    if tiny:
        encoder = ImageEncoderConfig(backbone="small-cnn")
        decoder = {"embed_size": 16, "hidden_size": 32, "attention_size": 16}
    else:
        encoder = ImageEncoderConfig(image_size=128)
        decoder = {"embed_size": 256, "hidden_size": 512, "attention_size": 256}
    captioner = Captioner(
        CaptionerConfig.create(encoder, len(words), attention="additive", **decoder),
        pretrained=not tiny,
    ).eval()
    golden_png = GOLDEN_IMAGE.read_bytes()
    image = captioner.encoder.preprocess(_open_image(golden_png)).unsqueeze(0)
    found = caption_images(captioner, image, options)[0][0]
    golden = {
        "input": "golden.png",
        "options": golden_options,
        "output": words.decode(found.tokens),
    }
    save_model(
        directory / "captioner",
        captioner,
        {"target": words},
        extra_files={"golden.json": json.dumps(golden).encode(), "golden.png": golden_png},
    )

    source = Vocabulary.build(english, WordTokenizer(), max_size=4000)
    target = Vocabulary.build(german, WordTokenizer(), max_size=4000)
    sizes = (16, 16, 32, 16) if tiny else (128, 192, 192, 128)  # embed, encoder, decoder, attention
    translator = Translator(
        TranslatorConfig.create(
            TextEncoderConfig(len(source), embed_size=sizes[0], hidden_size=sizes[1]),
            len(target),
            embed_size=sizes[0],
            hidden_size=sizes[2],
            attention="additive",
            attention_size=sizes[3],
        )
    ).eval()
    found = translate(translator, source, [english[0]], options)[0][0]
    golden = {"input": english[0], "options": golden_options, "output": target.decode(found.tokens)}
    save_model(
        directory / "translator",
        translator,
        {"source": source, "target": target},
        extra_files={"golden.json": json.dumps(golden).encode()},
    )


def _open_image(data: bytes):  # noqa: ANN202 - PIL.Image.Image
    import io

    from PIL import Image

    return Image.open(io.BytesIO(data))


def make_store(dirs: dict[str, Path], home: Path) -> None:
    """Import the model directories into a BentoML store at `home` (in a subprocess, because
    BENTOML_HOME is read once per process)."""
    shipped = home.parent / f"{home.name}-shipped"
    shipped.mkdir(parents=True, exist_ok=True)
    for kind, directory in dirs.items():
        link = shipped / kind
        if not link.exists():
            link.symlink_to(directory.resolve(), target_is_directory=True)
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    command = [sys.executable, "-m", "training.export", "import-shipped"]
    subprocess.run([*command, "--shipped-dir", str(shipped)], cwd=ROOT, env=env, check=True)


def target_vocabulary(loaded: LoadedModel) -> Vocabulary:
    """The output vocabulary: `target`, or the only one (the captioner's is named `caption`)."""
    vocabularies = loaded.vocabularies
    return vocabularies.get("target") or next(iter(vocabularies.values()))


def directory_bytes(directory: Path) -> dict[str, int]:
    """Size of every file in a model directory."""
    return {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file()}


# -- inputs ---------------------------------------------------------------------------------


def sentences(count: int) -> list[str]:
    """Real English sentences (the held-out test split), cycled to `count`."""
    if SENTENCES.is_file():
        lines = [line for line in SENTENCES.read_text().splitlines() if line.strip()]
    else:
        lines = ["the cat sits on the mat .", "where is the station ?", "I like green tea ."]
    return [lines[i % len(lines)] for i in range(count)]


def image_batch(count: int, encoder: torch.nn.Module) -> torch.Tensor:
    """`count` different emoji (the captioner's domain; the test fixtures when data/ is absent),
    preprocessed by the encoder: (count, 3, S, S)."""
    from PIL import Image

    paths = sorted(EMOJI.glob("*.png")) or sorted(IMAGE.parent.glob("*.*[gp]"))
    step = max(1, len(paths) // count)
    chosen = [paths[(i * step) % len(paths)] for i in range(count)]
    return torch.stack([encoder.preprocess(Image.open(p)) for p in chosen])


def image_bytes() -> bytes:
    """The request image: a 640x480 photo-like JPEG."""
    return IMAGE.read_bytes()


# -- servers --------------------------------------------------------------------------------


def simple_server(
    dirs: dict[str, Path], log: Path, device: str, autocast: str, threads: int = 0
) -> Server:
    """The plain FastAPI server (bench/simple_server.py) on the same models, started."""
    port = free_port()
    command = [
        sys.executable, "-m", "bench.simple_server",
        "--captioner", str(dirs["captioner"]), "--translator", str(dirs["translator"]),
        "--port", str(port), "--device", device, "--autocast", autocast, "--threads", str(threads),
    ]  # fmt: skip
    return Server.start("simple", command, port, log, ready_path="/healthz")


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer sees it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
