"""Any language pair, from the user's file to a served model: prepare en-fr pairs, train the tiny
preset on them, export it into the test store and serve it beside the default translator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import translated, translators_runtime
from tests.synthetic import english_french_pairs
from training import export, train_translator
from training.data import pairs
from training.settings import CONFIG_DIR, resolve_settings
from training.translation import TranslatorSettings, data_files

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def en_fr_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/en-fr as `python -m training.data.pairs` writes it from a TSV."""
    folder = tmp_path_factory.mktemp("pairs")
    tsv = folder / "en-fr.tsv"
    tsv.write_text("".join(f"{s}\t{t}\n" for s, t in english_french_pairs()), encoding="utf-8")
    flags = ["--tsv", str(tsv), "--source", "en", "--target", "fr", "--licence", "CC0-1.0"]
    pairs.main(pairs.parse_args([*flags, "--output", str(folder / "en-fr")]))
    return folder / "en-fr"


def train(out: Path, *flags: str) -> Path:
    """The tiny preset with these flags; its best/ folder."""
    args = train_translator.get_args_parser().parse_args(
        ["--preset", "tiny", "--output-dir", str(out), "--no-progress", "--name", "t", *flags]
    )
    train_translator.main(args)
    return out / "t" / "best"


def test_direction_must_be_two_language_codes() -> None:
    assert TranslatorSettings(direction="en-pt_BR").direction == "en-pt_BR"
    for bad in ("english-german", "en-pt-BR", "en-en", "en"):
        with pytest.raises(ValueError, match="SOURCE-TARGET"):
            TranslatorSettings(direction=bad)
    with pytest.raises(ValueError, match="cell must be one of lstm, gru, rnn"):
        TranslatorSettings(cell="transformer")


def test_missing_language_files_name_what_the_folder_has(en_fr_data: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as caught:
        data_files(str(en_fr_data), "en-de", "train")
    assert str(caught.value) == (
        f"{en_fr_data / 'train.de'} does not exist; "
        f"{en_fr_data} has train.en/train.fr: use --direction en-fr"  # from its manifest
    )
    with pytest.raises(FileNotFoundError, match="no --direction given; .*use --direction en-fr"):
        data_files(str(en_fr_data), "", "train")
    bare = tmp_path / "bare"  # no manifest: both directions are offered
    bare.mkdir()
    for name in ("train.de", "train.en"):
        (bare / name).write_text("x\n")
    with pytest.raises(FileNotFoundError, match="use --direction de-en or en-de"):
        data_files(str(bare), "en-fr", "train")
    with pytest.raises(FileNotFoundError, match="no --data-dir given"):
        data_files("", "en-fr", "train")


def test_the_trainer_command_reports_missing_files_in_one_line(
    en_fr_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        train_translator.COMMAND.run(
            ["--preset", "tiny", "--output-dir", str(tmp_path), "--data-dir", str(en_fr_data)]
        )
    assert str(caught.value).startswith(f"error: {en_fr_data / 'train.de'} does not exist;")


def test_the_generic_preset_assumes_no_language_pair(en_fr_data: Path, tmp_path: Path) -> None:
    preset = str(CONFIG_DIR / "translator_generic.yaml")
    flags = ["--preset", preset, "--output-dir", str(tmp_path), "--data-dir", str(en_fr_data)]
    settings = resolve_settings(
        TranslatorSettings,
        "translator",
        train_translator.get_args_parser().parse_args([*flags, "--direction", "fr-en"]),
    )
    assert (settings.name, settings.direction, settings.schedule) == (
        "translator_generic",
        "fr-en",
        "plateau",  # the run's length is unknown: no cosine planned over it
    )
    with pytest.raises(SystemExit, match="no --direction given; .* use --direction en-fr"):
        train_translator.COMMAND.run(flags)
    with pytest.raises(SystemExit, match="no --data-dir given"):
        train_translator.COMMAND.run(["--preset", preset, "--direction", "en-fr"])


def test_an_en_fr_translator_is_trained_exported_listed_and_picked_by_model(
    en_fr_data: Path, tmp_path: Path, stored_models
) -> None:
    best = train(tmp_path, "--data-dir", str(en_fr_data), "--direction", "en-fr", "--epochs", "2")
    config = json.loads((best / "config.json").read_text())
    data = config["metadata"]["data"]
    assert config["metadata"]["settings"]["direction"] == "en-fr"
    assert data["manifest_sha256"] == pairs.sha256_file(en_fr_data / "manifest.json")
    save = ["save", "--model", str(best), "--name", "translator_en_fr"]
    tag = export.main(export.get_args_parser().parse_args(save))[0]

    runtime, task = translators_runtime("translator,translator_en_fr")
    try:
        assert runtime.state == "ready", runtime.problem
        listed = {m["name"]: m for m in runtime.info()["models"]}
        assert listed["translator_en_fr"]["tag"] == tag
        assert {k: listed["translator_en_fr"][k] for k in LANGUAGE_KEYS} == {
            "language": "fr",
            "source_language": "en",
            "target_language": "fr",
        }
        assert runtime.info()["default_translator"] == "translator"
        picked = translated(task, ["the red cat sleeps ."], options(), "translator_en_fr")
        assert picked.model == tag and picked.translations[0].translation
        assert translated(task, ["where is the station ?"], options(), None).model == (
            stored_models.translator
        )
    finally:
        runtime.batcher.stop()


LANGUAGE_KEYS = ("language", "source_language", "target_language")


def options():
    from service.schemas import DecodingOptions

    return DecodingOptions()


def test_models_lists_a_translators_languages_from_its_direction() -> None:
    from service.artifacts import languages

    shipped = json.loads((ROOT / "pretrained" / "translator" / "config.json").read_text())
    assert languages(shipped["metadata"]["settings"]) == ("en", "de")
    assert languages({"direction": "en-pt_BR"}) == ("en", "pt_BR")
    assert languages({"language": "de"}) == ("", "de")  # a captioner: only its output language
    assert languages({}) == ("", "")
