"""Issue 19's training extras: tagged back-translated pairs, back-translation, tied embeddings,
subword sampling, snapshots and their average, the large preset."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.checkpoint import load_model, save_model, stored_tensors, write_checksums
from models.inference import source_ids, translate
from models.search import SearchOptions
from models.vocabulary import UNK
from tests.helpers import random_translator, toy_vocabulary
from training import average_checkpoints, back_translate, evaluate, train_translator
from training.average_checkpoints import SnapshotError, average_run, average_tensors
from training.distributed import Distributed
from training.errors import run_main
from training.export import directory_checksum
from training.settings import SettingsError, resolve_settings
from training.state import Progress, list_snapshots, remove_snapshots, save_snapshot
from training.translation import (
    BT_TAG,
    TranslationTask,
    TranslatorSettings,
    build_translator,
    encode_pairs,
)

FIXTURE = Path(__file__).parent / "fixtures" / "training" / "de-en"
OPTIONS = [SearchOptions("greedy", max_length=8), SearchOptions("beam", beam_size=3, max_length=8)]


def tiny_args(out: Path, *flags: str) -> argparse.Namespace:
    """The tiny preset's command line, writing under `out`, with `flags` on top."""
    return train_translator.get_args_parser().parse_args(
        ["--preset", "tiny", "--output-dir", str(out), "--no-progress", *flags]
    )


def tiny_settings(out: Path, *flags: str) -> TranslatorSettings:
    return resolve_settings(TranslatorSettings, "translator", tiny_args(out, *flags))


def run_tiny(out: Path, *flags: str) -> Path:
    """Train the tiny translator into `out` (quietly); its run folder."""
    args = tiny_args(out, *flags)
    with contextlib.redirect_stdout(io.StringIO()):
        train_translator.main(args)
    return out / args.name if args.name else out / "translator_tiny"


def synthetic_folder(folder: Path) -> Path:
    """40 'back-translated' en-de pairs: the fixture's test split, as back_translate lays it out."""
    folder.mkdir(parents=True, exist_ok=True)
    for language in ("en", "de"):
        shutil.copy(FIXTURE / f"test.{language}", folder / f"train.{language}")
    return folder


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def de_en_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny de->en word-level translator (words decode to non-empty text from the first step)."""
    flags = ["--direction", "de-en", "--tokenizer", "word", "--name", "de_en"]
    return run_tiny(tmp_path_factory.mktemp("runs"), *flags) / "best"


# --- tagged synthetic pairs ---------------------------------------------------------------------


@pytest.mark.parametrize("tokenizer", ["sentencepiece", "word"])
def test_synthetic_pairs_train_with_the_tag_first_and_valid_has_none(
    tmp_path: Path, tokenizer: str
) -> None:
    synthetic = synthetic_folder(tmp_path / "bt")
    settings = tiny_settings(tmp_path, "--tokenizer", tokenizer, "--synthetic-dir", str(synthetic))
    task = TranslationTask(settings, Distributed(), torch.device("cpu"))
    tag = task.source.id_of(BT_TAG)
    assert tag not in (UNK, BT_TAG) and task.source.tokens[tag] == BT_TAG  # one id of its own
    assert tag not in source_ids(task.source, f"{BT_TAG} the nuts and bolts")  # text never is it
    train = task.examples["train"]
    tagged = [s for s, _ in train if s[0] == tag]
    assert len(tagged) == len(task.synthetic) == len(lines(synthetic / "train.en"))
    assert all(tag not in s[1:] and tag not in t for s, t in train)  # only ever the first token
    assert all(tag not in s for s, _ in task.examples["valid"])
    every = list(range(len(train)))
    batch = task.batch("train", every, torch.device("cpu"))
    assert int((batch.inputs[0][:, 0] == tag).sum()) == len(tagged)  # they reach the model
    task.save(tmp_path / "saved", {})
    data = load_model(tmp_path / "saved").metadata["data"]
    assert data["train_pairs"] == len(task.pairs["train"]) and data["synthetic_pairs"] == 40
    assert data["synthetic_tag"] == BT_TAG


def test_without_synthetic_pairs_there_is_no_tag(tmp_path: Path) -> None:
    task = TranslationTask(tiny_settings(tmp_path), Distributed(), torch.device("cpu"))
    assert BT_TAG not in task.source.tokens


def test_a_missing_synthetic_folder_says_what_to_give(tmp_path: Path) -> None:
    settings = tiny_settings(tmp_path, "--synthetic-dir", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="training.back_translate"):
        TranslationTask(settings, Distributed(), torch.device("cpu"))


# --- back-translation ---------------------------------------------------------------------------


def back_translate_args(model: Path, text: Path, out: Path, *flags: str) -> argparse.Namespace:
    languages = ["--source-lang", "de", "--target-lang", "en"]
    return back_translate.get_args_parser().parse_args(
        ["--model", str(model), "--input", str(text), "--output-dir", str(out), *languages, *flags]
    )


def test_back_translation_writes_aligned_pairs(de_en_model: Path, tmp_path: Path) -> None:
    german = lines(FIXTURE / "valid.de")[:25]
    mono = tmp_path / "mono.de"
    mono.write_text("\n".join([german[0], "", *german[1:], "   "]) + "\n", encoding="utf-8")
    out = tmp_path / "bt"
    manifest = back_translate.main(
        back_translate_args(de_en_model, mono, out, "--max-sentences", "20", "--batch-size", "8")
    )
    real, synthetic = lines(out / "train.de"), lines(out / "train.en")
    assert len(real) == len(synthetic) == manifest["pairs"] > 0
    assert manifest["sentences"] == 20 == manifest["pairs"] + manifest["empty_outputs"]
    assert real == [s for s in german[:20] if s in real]  # the real side, in input order
    assert all(s.strip() for s in synthetic)
    assert manifest["model_sha256"] == directory_checksum(de_en_model)
    assert json.loads((out / "manifest.json").read_text()) == manifest
    beam = back_translate.main(
        back_translate_args(
            de_en_model, mono, tmp_path / "beam", "--beam", "2", "--max-sentences", "3"
        )
    )
    assert beam["sentences"] == 3


def test_back_translation_trains_the_reverse_direction(de_en_model: Path, tmp_path: Path) -> None:
    mono = tmp_path / "mono.de"
    shutil.copy(FIXTURE / "valid.de", mono)
    back_translate.main(back_translate_args(de_en_model, mono, tmp_path / "bt"))
    settings = tiny_settings(tmp_path, "--synthetic-dir", str(tmp_path / "bt"))  # en-de
    task = TranslationTask(settings, Distributed(), torch.device("cpu"))
    assert len(task.synthetic) == len(lines(tmp_path / "bt" / "train.en")) > 0


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (("--model", "nowhere"), "holds no saved model"),
        (("--input", "nothing.txt"), "does not exist"),
        (("--source-lang", "en", "--target-lang", "de"), "translates de-en"),
    ],
)
def test_back_translation_fails_in_words(
    de_en_model: Path, tmp_path: Path, flags: tuple[str, ...], words: str
) -> None:
    mono = tmp_path / "mono.de"
    mono.write_text("Hallo\n", encoding="utf-8")
    args = back_translate_args(de_en_model, mono, tmp_path / "bt")
    for flag, value in zip(flags[::2], flags[1::2], strict=True):
        name = flag[2:].replace("-", "_")
        setattr(args, name, tmp_path / value if name in ("model", "input") else value)
    with pytest.raises(SystemExit, match=words):
        run_main(back_translate.main, args)
    assert not (tmp_path / "bt").exists()


# --- tied embeddings ----------------------------------------------------------------------------


def tied_translator(hidden: int = 16) -> torch.nn.Module:
    settings = TranslatorSettings(
        name="t", embed_size=8, hidden_size=hidden, attention_size=8, dropout=0.0,
        tie_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(3)
    size = len(toy_vocabulary())
    return build_translator(settings, size, size).eval()


@pytest.mark.parametrize("hidden", [16, 8])  # with and without the bridge
def test_tied_embeddings_share_storage_and_reload_identically(tmp_path: Path, hidden: int) -> None:
    model = tied_translator(hidden)
    decoder = model.decoder
    assert decoder.output.weight.data_ptr() == decoder.embedding.weight.data_ptr()
    assert isinstance(decoder.bridge, torch.nn.Linear) == (hidden != 8)
    vocabulary = toy_vocabulary()
    save_model(tmp_path, model, {"source": vocabulary, "target": vocabulary})
    loaded = load_model(tmp_path).model
    tied = loaded.decoder
    assert tied.output.weight.data_ptr() == tied.embedding.weight.data_ptr()
    for options in OPTIONS:
        before = translate(model, vocabulary, ["a b c", "d e f g"], options)
        after = translate(loaded, vocabulary, ["a b c", "d e f g"], options)
        assert [[(h.tokens, h.log_prob) for h in r] for r in before] == [
            [(h.tokens, h.log_prob) for h in r] for r in after
        ]


def test_tied_output_layer_learns_through_the_embedding() -> None:
    model = tied_translator().train()
    source = torch.tensor([[4, 5, 2]])
    tokens = torch.tensor([[1, 6, 7]])
    logits = model(source, torch.tensor([3]), tokens)  # (1, 3, V)
    logits[0, -1, 9].backward()  # only the output layer reads row 9: the decoder never sees it
    assert model.decoder.embedding.weight.grad[9].abs().sum() > 0


def test_a_config_saved_before_tie_embeddings_still_loads(tmp_path: Path) -> None:
    model, vocabulary = random_translator(5), toy_vocabulary()
    save_model(tmp_path, model, {"source": vocabulary, "target": vocabulary})
    config = json.loads((tmp_path / "config.json").read_text())
    del config["config"]["decoder"]["tie_embeddings"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    write_checksums(tmp_path)
    loaded = load_model(tmp_path).model
    assert loaded.config.decoder.tie_embeddings is False
    assert list(loaded.state_dict()) == list(model.state_dict())
    same = translate(loaded, vocabulary, ["a b"], OPTIONS[1])[0][0].tokens
    assert same == translate(model, vocabulary, ["a b"], OPTIONS[1])[0][0].tokens


# --- subword sampling ---------------------------------------------------------------------------


def test_sampling_draws_per_epoch_repeats_per_seed_and_leaves_valid_alone(tmp_path: Path) -> None:
    settings = tiny_settings(tmp_path, "--sp-sampling-alpha", "0.3")
    task = TranslationTask(settings, Distributed(), torch.device("cpu"))
    valid = task.examples["valid"]
    assert valid == encode_pairs(task.source, task.target, task.pairs["valid"])  # deterministic
    epoch0 = list(task.examples["train"])
    task.batches("train", 1)
    epoch1 = list(task.examples["train"])
    assert epoch1 != epoch0
    again = TranslationTask(settings, Distributed(), torch.device("cpu"))
    assert again.examples["train"] == epoch0
    again.batches("train", 1)
    assert again.examples["train"] == epoch1
    task.batches("train", 0)  # a resume into epoch 0 draws epoch 0 again
    assert task.examples["train"] == epoch0
    assert task.examples["valid"] == valid
    # a sampled segmentation still spells the sentence
    plain = encode_pairs(task.source, task.target, task.pairs["train"])
    assert [task.target.decode(t) for _, t in epoch1] == [task.target.decode(t) for _, t in plain]


def test_a_resumed_sampling_run_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    flags = ["--sp-sampling-alpha", "0.3", "--keep-snapshots", "2", "--snapshot-every", "5"]
    whole = run_tiny(tmp_path / "whole", *flags)
    run_tiny(tmp_path / "parts", *flags, "--epochs", "1")
    parts = run_tiny(tmp_path / "parts", *flags, "--resume")

    def losses(run: Path) -> list[tuple[int, float]]:
        records = [json.loads(line) for line in lines(run / "metrics.jsonl")]
        return [(r["step"], round(r["loss"], 5)) for r in records if "loss" in r]

    assert losses(parts) == losses(whole)
    names = [p.name for p in list_snapshots(whole / "snapshots")]
    assert names == [p.name for p in list_snapshots(parts / "snapshots")]
    for name in names:
        a, b = (load_file(str(run / "snapshots" / name)) for run in (whole, parts))
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_sampling_needs_sentencepiece(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="sentencepiece"):
        tiny_settings(tmp_path, "--tokenizer", "word", "--sp-sampling-alpha", "0.1")


# --- snapshots and their average ----------------------------------------------------------------


def test_snapshots_keep_the_newest_and_resume_drops_later_ones(tmp_path: Path) -> None:
    model = random_translator(1)
    for step in (5, 10, 15, 20):
        save_snapshot(tmp_path, model, Progress(step=step), keep=3)
    assert [p.name for p in list_snapshots(tmp_path)] == [
        "step_00000010.safetensors", "step_00000015.safetensors", "step_00000020.safetensors"
    ]  # fmt: skip
    remove_snapshots(tmp_path, after=15)
    assert len(list_snapshots(tmp_path)) == 2


def test_average_of_identical_snapshots_is_the_snapshot(tmp_path: Path) -> None:
    model = tied_translator()
    for step in (1, 2, 3):
        save_snapshot(tmp_path, model, Progress(step=step), keep=5)
    reference = stored_tensors(model)
    averaged = average_tensors(list_snapshots(tmp_path), reference)
    assert averaged.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(averaged[name], tensor)


def test_average_of_two_snapshots_is_their_mean(tmp_path: Path) -> None:
    first, second = tmp_path / "step_00000001.safetensors", tmp_path / "step_00000002.safetensors"
    save_file({"w": torch.tensor([1.0, 2.0]), "h": torch.tensor([1.0, 2.0]).half(),
               "count": torch.tensor(3)}, str(first))  # fmt: skip
    save_file({"w": torch.tensor([3.0, 6.0]), "h": torch.tensor([2.0, 3.0]).half(),
               "count": torch.tensor(5)}, str(second))  # fmt: skip
    reference = {"w": torch.zeros(2), "h": torch.zeros(2).half(), "count": torch.tensor(0)}
    averaged = average_tensors([first, second], reference)
    assert averaged["w"].tolist() == [2.0, 4.0]
    assert averaged["h"].dtype == torch.float16 and averaged["h"].tolist() == [1.5, 2.5]
    assert averaged["count"].item() == 5  # integers are the last snapshot's


@pytest.mark.parametrize(
    "other",
    [{"w": torch.zeros(3)}, {"v": torch.zeros(2)}, {"w": torch.zeros(2), "x": torch.ones(1)}],
)
def test_a_mismatched_snapshot_is_named(tmp_path: Path, other: dict) -> None:
    good, bad = tmp_path / "step_00000001.safetensors", tmp_path / "step_00000002.safetensors"
    save_file({"w": torch.ones(2)}, str(good))
    save_file(other, str(bad))
    with pytest.raises(SnapshotError, match="step_00000002"):
        average_tensors([good, bad], {"w": torch.zeros(2)})


def test_a_damaged_snapshot_is_named(tmp_path: Path) -> None:
    damaged = tmp_path / "step_00000007.safetensors"
    damaged.write_bytes(b"not safetensors")
    with pytest.raises(SnapshotError, match="step_00000007"):
        average_tensors([damaged], {"w": torch.zeros(2)})


def test_training_keeps_snapshots_and_their_average_evaluates(tmp_path: Path) -> None:
    flags = ["--tie-embeddings", "--keep-snapshots", "3", "--snapshot-every", "4", "--epochs", "2"]
    run = run_tiny(tmp_path, *flags)
    snapshots = list_snapshots(run / "snapshots")
    steps = [int(p.stem[len("step_") :]) for p in snapshots]
    assert len(steps) == 3 and all(s % 4 == 0 for s in steps) and steps == sorted(steps)
    with contextlib.redirect_stdout(io.StringIO()):
        average_checkpoints.main(
            average_checkpoints.get_args_parser().parse_args(["--run", str(run), "--last", "3"])
        )
    averaged = load_model(run / "averaged")
    assert averaged.metadata["averaged"]["snapshots"] == [p.name for p in snapshots]
    decoder = averaged.model.decoder
    assert decoder.output.weight.data_ptr() == decoder.embedding.weight.data_ptr()
    args = evaluate.get_args_parser().parse_args(
        ["--model", str(run / "averaged"), "--methods", "greedy", "--limit", "5",
         "--output", str(tmp_path / "eval.json")]
    )  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        report = evaluate.main(args)
    assert report["examples"] == 5 and "bleu" in report["results"]["greedy"]


def test_averaging_needs_snapshots(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="--keep-snapshots"):
        average_run(tmp_path, 5, tmp_path / "averaged")


# --- the large preset ---------------------------------------------------------------------------


def test_large_preset_resolves_and_its_help_shows_it() -> None:
    settings = resolve_settings(
        TranslatorSettings, "translator", argparse.Namespace(preset="large")
    )
    assert settings.tie_embeddings and settings.sp_sampling_alpha > 0
    assert settings.keep_snapshots == 5 and settings.num_layers == 2
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stopped:
        train_translator.get_args_parser().parse_args(["--preset", "large", "--help"])
    assert stopped.value.code == 0 and "preset large" in out.getvalue()
