"""Caption metrics: word-F1 counts words a person used, whatever their order."""

from __future__ import annotations

import pytest

from training.metrics import word_f1


def test_word_f1_takes_the_best_reference_and_ignores_order_and_case() -> None:
    hypotheses = ["Face cat", "a red giraffe", "", "dog dog"]
    references = [["cat face", "dog"], ["giraffe"], ["anything"], ["dog"]]
    assert word_f1(hypotheses, references) == pytest.approx([1.0, 0.5, 0.0, 2 / 3])
