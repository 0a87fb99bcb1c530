"""Caption metrics: word-F1 counts words a person used, whatever their order."""

from __future__ import annotations

import pytest

from training.metrics import caption_scores, word_f1


def test_word_f1_takes_the_best_reference_and_ignores_order_and_case() -> None:
    hypotheses = ["Face cat", "a red giraffe", "", "dog dog"]
    references = [["cat face", "dog"], ["giraffe"], ["anything"], ["dog"]]
    assert word_f1(hypotheses, references) == pytest.approx([1.0, 0.5, 0.0, 2 / 3])


def test_caption_scores_fail_in_words_not_inside_pycocoevalcap() -> None:
    with pytest.raises(ValueError, match="split is empty"):
        caption_scores([], [])
    with pytest.raises(ValueError, match="no non-empty reference"):
        caption_scores(["a cat"], [("",)])
    # an empty reference beside a real one is left out, not fatal
    scores = caption_scores(["a red cat", "a dog"], [("a red cat", ""), ("a dog",)])
    assert scores["bleu1"] == 100.0 and scores["word_f1"] == 100.0


def test_exact_counts_captions_equal_to_a_reference_after_tokenising() -> None:
    hypotheses = ["Cat face.", "a red giraffe", "dog", "dog face"]
    references = [["cat face ."], ["giraffe", "a  RED giraffe"], ["cat"], ["dog"]]
    assert caption_scores(hypotheses, references)["exact"] == 50.0
