"""Corpus scores: sacreBLEU BLEU and chrF for translations; BLEU-1..4, CIDEr and word-F1 for captions."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from models.tokenizers import WordTokenizer

_CAPTION_TOKENS = WordTokenizer(lowercase=True)


def translation_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, object]:
    """sacreBLEU corpus BLEU and chrF of detokenised outputs against one reference each."""
    from sacrebleu.metrics import BLEU, CHRF

    bleu, chrf = BLEU(), CHRF()
    refs = [list(references)]
    return {
        "bleu": round(bleu.corpus_score(list(hypotheses), refs).score, 2),
        "chrf": round(chrf.corpus_score(list(hypotheses), refs).score, 2),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
    }


def caption_text(text: str) -> str:
    """Lower-cased words and punctuation joined by spaces: our stand-in for the PTB tokenizer."""
    return " ".join(_CAPTION_TOKENS.tokenize(text))


def caption_scores(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]]
) -> dict[str, float]:
    """pycocoevalcap BLEU-1..4 and CIDEr-D of one caption per image against its references, the
    mean best word F1 and the % of captions equal to one of their references (after tokenising).

    References that tokenize to nothing are left out (pycocoevalcap fails on them); an image with
    no reference left, or no image at all, is a ValueError that says so."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} captions for {len(references)} reference sets")
    if not hypotheses:
        raise ValueError("no captions to score: the evaluated split is empty")
    gts = {i: [t for t in map(caption_text, refs) if t] for i, refs in enumerate(references)}
    bare = [i for i, refs in gts.items() if not refs]
    if bare:
        raise ValueError(
            f"{len(bare)} images (e.g. #{bare[0]}) have no non-empty reference caption"
        )
    res = {i: [caption_text(h)] for i, h in enumerate(hypotheses)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    scores = {f"bleu{n}": round(100 * float(b), 2) for n, b in enumerate(bleu, start=1)}
    scores["cider"] = round(100 * float(cider), 2)
    f1 = word_f1(hypotheses, references)
    scores["word_f1"] = round(100 * sum(f1) / max(len(f1), 1), 2)
    exact = [caption_text(h) in gts[i] for i, h in enumerate(hypotheses)]
    scores["exact"] = round(100 * sum(exact) / len(exact), 2)  # % equal to one of its references
    return scores


def word_f1(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
    """Per caption, the best bag-of-words F1 against any of its references (0 to 1): how many of
    the words a person used the caption names, without BLEU's n-gram order or CIDEr's weights."""
    scores = []
    for hypothesis, refs in zip(hypotheses, references, strict=True):
        words = Counter(caption_text(hypothesis).split())
        best = 0.0
        for reference in refs:
            expected = Counter(caption_text(reference).split())
            common = sum((words & expected).values())
            if common:
                precision, recall = common / sum(words.values()), common / sum(expected.values())
                best = max(best, 2 * precision * recall / (precision + recall))
        scores.append(best)
    return scores
