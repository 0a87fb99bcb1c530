"""The unit report CLI: best units per property, HTML and PNG renderings."""

from __future__ import annotations

import json

import numpy as np
import torch

from models.checkpoint import save_model
from models.language_model import CharLanguageModel, CharLMConfig
from models.tokenizers import CharTokenizer
from models.vocabulary import Vocabulary
from training import units_report

TEXT = 'A "quoted (nested) phrase" and more.\n\tSecond <line> here.\n%\n' * 6


def test_colours_run_from_blue_to_red() -> None:
    colours = units_report.colour_of(np.array([-2.0, 0.5, 3.0]))
    assert colours[0, 2] > colours[0, 0]  # lowest: blue
    assert colours[2, 0] > colours[2, 2]  # highest: red


def test_html_escapes_text_and_colours_every_character() -> None:
    page = units_report.render_html(list("<a&b>"), np.arange(5.0), "t")
    assert page.count("<span") == 5 and "&lt;" in page and "&amp;" in page


def test_report_cli_writes_json_html_and_pngs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    vocab = Vocabulary.build([TEXT], CharTokenizer())
    torch.manual_seed(0)
    save_model(
        tmp_path / "model", CharLanguageModel(CharLMConfig(len(vocab), 8, 8)), {"text": vocab}
    )
    (tmp_path / "text.txt").write_text(TEXT)
    args = units_report.get_args_parser().parse_args(
        ["--model", str(tmp_path / "model"), "--text", str(tmp_path / "text.txt"),
         "--output-dir", str(tmp_path / "out"), "--render-chars", "120", "--top", "2"]
    )  # fmt: skip
    found = units_report.main(args)
    assert set(found) == {"in_quotes", "line_position", "bracket_depth", "in_word"}
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert len(report["in_quotes"]) == 2 and -1 <= report["in_quotes"][0]["correlation"] <= 1
    assert (tmp_path / "out" / "report.html").read_text().count("<h3>") == 4
    png = (tmp_path / "out" / "unit_in_quotes.png").read_bytes()
    assert png.startswith(b"\x89PNG")
