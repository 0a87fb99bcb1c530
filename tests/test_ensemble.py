"""Ensembles of translators through the one search core: equal to a lone model when they hold one
member (or one model twice), batched like a single model, evaluated and served when configured."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch

from models.checkpoint import save_model
from models.ensemble import TranslatorEnsemble, check_members_agree, mean_probability
from models.inference import translate
from models.search import Hypothesis, SearchOptions
from models.vocabulary import START, Vocabulary
from tests.helpers import (
    assert_alone_as_in_a_batch,
    random_translator,
    toy_vocabulary,
    translated,
    translators_runtime,
)

SENTENCES = ["a b c", "d e f g h i j", "k", "l a b c d e", "b b b"]
GREEDY = SearchOptions("greedy", max_length=12)
BEAM = SearchOptions("beam", beam_size=4, n_best=4, max_length=12)


def run(model, options: SearchOptions, sentences: list[str] = SENTENCES) -> list[list[Hypothesis]]:
    return translate(model, toy_vocabulary(), sentences, options)


def outputs(found: list[list[Hypothesis]]) -> list[list[list[int]]]:
    return [[h.tokens for h in hypotheses] for hypotheses in found]


@pytest.mark.parametrize("options", [GREEDY, BEAM], ids=["greedy", "beam"])
def test_an_ensemble_of_one_is_the_model_itself(options: SearchOptions) -> None:
    model = random_translator(3)
    alone, ensembled = run(model, options), run(TranslatorEnsemble([model]), options)
    assert outputs(ensembled) == outputs(alone)
    for a, e in zip(sum(alone, []), sum(ensembled, []), strict=True):
        assert (e.score, e.log_prob, e.token_log_probs) == (a.score, a.log_prob, a.token_log_probs)
        assert torch.equal(e.attention, a.attention)


@pytest.mark.parametrize("options", [GREEDY, BEAM], ids=["greedy", "beam"])
def test_an_ensemble_of_one_model_twice_is_that_model(options: SearchOptions) -> None:
    model = random_translator(4, "gru", 2, "multiplicative")
    alone, twice = run(model, options), run(TranslatorEnsemble([model, model]), options)
    assert outputs(twice) == outputs(alone)
    for a, t in zip(sum(alone, []), sum(twice, []), strict=True):
        assert t.score == pytest.approx(a.score, abs=1e-5)
        assert torch.allclose(t.attention, a.attention)


def test_two_models_decode_as_neither_alone() -> None:
    first, second = random_translator(5), random_translator(6)
    both = outputs(run(TranslatorEnsemble([first, second]), BEAM))
    assert both != outputs(run(first, BEAM)) and both != outputs(run(second, BEAM))


def test_each_step_is_the_log_of_the_members_mean_probability() -> None:
    members = [random_translator(7), random_translator(8, "rnn", 1, "none")]
    ensemble = TranslatorEnsemble(members)
    ids = torch.tensor([[4, 5, 6, 2], [7, 2, 0, 0]])
    lengths = torch.tensor([4, 2])
    start = torch.full((2,), START)
    log_probs, state = ensemble.decoder.step(start, ensemble.init_state(ids, lengths))
    probabilities = [m.decoder.step(start, m.init_state(ids, lengths))[0].exp() for m in members]
    assert torch.allclose(log_probs, torch.log((probabilities[0] + probabilities[1]) / 2))
    assert torch.allclose(log_probs.exp().sum(dim=-1), torch.ones(2))  # a distribution as it is
    # the one attending member's weights: the member without attention has none to average
    assert state.attention is not None and torch.allclose(state.attention.sum(-1), torch.ones(2))


def test_the_mean_of_one_member_is_bit_exact() -> None:
    log_probs = torch.log_softmax(torch.randn(3, 11) * 9, dim=-1)
    assert torch.equal(mean_probability([log_probs]), log_probs)
    assert mean_probability([log_probs, log_probs]).sub(log_probs).abs().max() < 1e-6
    uniform = torch.full((1, 4), -math.log(4))
    peaked = torch.log(torch.tensor([[0.97, 0.01, 0.01, 0.01]]))
    assert torch.allclose(
        mean_probability([uniform, peaked]).exp(), (uniform.exp() + peaked.exp()) / 2
    )


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_an_ensemble_answers_alone_as_inside_a_batch(method: str) -> None:
    ensemble = TranslatorEnsemble([random_translator(9), random_translator(10, "gru")])
    options = SearchOptions(method, beam_size=4, n_best=3, max_length=12, seed=7)
    assert_alone_as_in_a_batch(ensemble, options, SENTENCES)


def test_beam_size_one_is_greedy_for_an_ensemble() -> None:
    ensemble = TranslatorEnsemble([random_translator(11), random_translator(12)])
    greedy = run(ensemble, GREEDY)
    beam = run(ensemble, SearchOptions("beam", beam_size=1, max_length=12))
    assert outputs(beam) == outputs(greedy)


def test_members_must_share_vocabulary_sizes() -> None:
    small = random_translator(13)
    other = random_translator(13)
    other.config = type(other.config)(
        other.config.encoder, type(other.config.decoder)(vocab_size=99)
    )
    with pytest.raises(ValueError, match="vocabulary size"):
        TranslatorEnsemble([small, other])
    with pytest.raises(ValueError, match="at least one member"):
        TranslatorEnsemble([])


def test_disagreeing_members_are_named_with_what_differs() -> None:
    toy = toy_vocabulary()
    renamed = Vocabulary([*toy.tokens[:5], "zz", *toy.tokens[6:]], toy.tokenizer)
    shorter = Vocabulary(toy.tokens[:-1], toy.tokenizer)
    check_members_agree("target vocabulary", {"a": toy, "b": toy})
    with pytest.raises(ValueError) as caught:
        check_members_agree("target vocabulary", {"a": toy, "b": renamed, "c": shorter, "d": toy})
    assert str(caught.value) == (
        "ensemble members differ in their target vocabulary: b has token 'zz' at id 5, vs "
        f"{toy.tokens[5]!r} in a; c has {len(toy) - 1} tokens, vs {len(toy)} in a"
    )
    with pytest.raises(ValueError, match="target language: b has 'fr', vs 'de' in a"):
        check_members_agree("target language", {"a": "de", "b": "fr"})


# -- evaluation: python -m training.evaluate --model A --ensemble B ---------------------------


def saved_translator(folder: Path, seed: int, data: Path, direction: str = "en-de") -> Path:
    """A random toy translator saved with the settings evaluation reads its data from."""
    toy = toy_vocabulary()
    settings = {"settings": {"direction": direction, "data_dir": str(data)}}
    return save_model(
        folder / f"seed{seed}", random_translator(seed), {"source": toy, "target": toy}, settings
    )


def test_evaluate_scores_an_ensemble_and_records_its_members(tmp_path: Path) -> None:
    from training import evaluate

    data = tmp_path / "data"
    data.mkdir()
    (data / "test.en").write_text("\n".join(SENTENCES) + "\n")
    (data / "test.de").write_text("\n".join(reversed(SENTENCES)) + "\n")
    first, second = saved_translator(tmp_path, 1, data), saved_translator(tmp_path, 2, data)

    def scores(*flags: str) -> dict:
        args = ["--methods", "greedy,beam3", "--output", str(tmp_path / "eval.json"), *flags]
        return evaluate.main(evaluate.get_args_parser().parse_args(args))

    report = scores("--model", str(first), "--ensemble", str(second))
    assert report["members"] == [str(first), str(second)]
    assert json.loads((tmp_path / "eval.json").read_text())["members"] == report["members"]
    assert {"bleu", "chrf", "bleu_signature"} <= set(report["results"]["beam3"])
    alone = scores("--model", str(first))["results"]
    twice = scores("--model", str(first), "--ensemble", str(first))
    assert twice["members"] == [str(first), str(first)]
    assert twice["results"]["beam3"]["chrf"] == alone["beam3"]["chrf"]
    french = saved_translator(tmp_path, 3, data, "en-fr")
    with pytest.raises(ValueError, match=f"direction: {french} has 'en-fr', vs 'en-de' in"):
        scores("--model", str(first), "--ensemble", str(french))


# -- serving: SEQSERVE_TRANSLATORS=translator+translator_seed2 --------------------------------


def store_translator(stored_models, name: str, seed: int, **changes: object) -> str:
    """The test store's translator architecture with new random weights (and `changes`: a
    `target` vocabulary, `settings`), stored as `name` with its own golden; its tag."""
    import bentoml

    from models.checkpoint import load_model
    from models.translator import Translator
    from tests.helpers import GOLDEN_OPTIONS, SOURCE_TEXT

    base = load_model(bentoml.models.get(stored_models.translator).path)
    torch.manual_seed(seed)
    model = Translator(base.model.config).eval()
    with torch.no_grad():
        model.decoder.output.weight.mul_(6.0)
    source = base.vocabularies["source"]
    target = changes.get("target", base.vocabularies["target"])
    ((best, *_),) = translate(model, source, [SOURCE_TEXT[0]], SearchOptions(**GOLDEN_OPTIONS))
    golden = {
        "input": SOURCE_TEXT[0],
        "options": GOLDEN_OPTIONS,
        "output": target.decode(best.tokens),
    }
    metadata = {"settings": changes.get("settings", {})}
    with bentoml.models.create(name) as stored:
        files = {"golden.json": json.dumps(golden).encode()}
        save_model(
            stored.path, model, {"source": source, "target": target}, metadata, extra_files=files
        )
    return str(stored.tag)


@pytest.fixture(scope="module")
def second_translator(stored_models) -> str:
    return store_translator(stored_models, "translator_seed2", 2)


def decoding(**fields: object):
    from service.schemas import DecodingOptions

    return DecodingOptions(**fields)


def test_a_configured_ensemble_is_listed_chosen_by_name_and_batched(
    stored_models, second_translator: str
) -> None:
    from service.responses import ModelsResponse

    runtime, task = translators_runtime("translator+translator_seed2,translator")
    try:
        assert runtime.state == "ready", runtime.problem
        ensemble_tag = f"{stored_models.translator}+{second_translator}"
        listed, single = runtime.info()["models"]
        assert (listed["tag"], listed["configured"]) == (
            ensemble_tag,
            "translator+translator_seed2",
        )
        assert [m["tag"] for m in listed["members"]] == [
            stored_models.translator,
            second_translator,
        ]
        assert runtime.info()["default_translator"] == "translator+translator_seed2"
        response = ModelsResponse(**runtime.info()).model_dump()  # what /models answers
        assert response["models"][0]["members"] == listed["members"]
        sentences = list(stored_models.sentences)
        options = decoding(decoding="beam", beam_size=4)
        answer = translated(task, sentences, options, None)
        assert answer.model == ensemble_tag
        for name in ("translator+translator_seed2", ensemble_tag):
            assert translated(task, sentences[:1], options, name).model == ensemble_tag
        # the batched serving path decodes as the ensemble does directly
        served = runtime.models["translator+translator_seed2"]
        direct = translate(
            served.model, served.source, sentences, SearchOptions("beam", beam_size=4)
        )
        texts = [served.target.decode(found[0].tokens) for found in direct]
        assert [t.translation for t in answer.translations] == texts
        assert translated(task, sentences, options, "translator").model == stored_models.translator
    finally:
        runtime.batcher.stop()


def test_a_served_ensemble_of_one_model_twice_answers_as_that_model(stored_models) -> None:
    runtime, task = translators_runtime("translator,translator+translator")
    try:
        assert runtime.state == "ready", runtime.problem
        sentences = list(stored_models.sentences)
        for options in (decoding(), decoding(decoding="beam", beam_size=4, n_best=2)):
            alone = translated(task, sentences, options, "translator").translations
            twice = translated(task, sentences, options, "translator+translator").translations
            for a, t in zip(alone, twice, strict=True):
                assert [x.text for x in t.alternatives] == [x.text for x in a.alternatives]
                assert t.alternatives[0].score == pytest.approx(a.alternatives[0].score, abs=1e-5)
    finally:
        runtime.batcher.stop()


def test_misconfigured_ensembles_keep_the_service_not_ready_naming_members(
    stored_models, second_translator: str, caplog
) -> None:
    from tests.helpers import TARGET_TEXT

    words = Vocabulary.build(TARGET_TEXT, toy_vocabulary().tokenizer)
    reordered = Vocabulary([*words.tokens[:4], *reversed(words.tokens[4:])], words.tokenizer)
    other_words = store_translator(stored_models, "translator_other_words", 3, target=reordered)
    french = store_translator(stored_models, "translator_fr", 4, settings={"direction": "en-fr"})
    cases = {
        "translator+translator_other_words": f"target vocabulary: {other_words} has token",
        "translator_seed2+translator_fr": f"target language: {french} has 'fr', vs '' in "
        f"{second_translator}",
        "translator+": "joined by '+'",
        "translator+no-such-model": "make import-models",
    }
    for names, expected in cases.items():
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="bentoml.seqserve"):
            runtime, _ = translators_runtime(names)
        runtime.batcher.stop()
        assert runtime.state == "failed" and names in runtime.problem
        assert expected in caplog.text


def test_the_store_models_behind_the_translators() -> None:
    from service.settings import Settings, ensemble_members

    settings = Settings(translators="a+b:v2, a,c")
    assert settings.translator_names == ["a+b:v2", "a", "c"]
    assert settings.translator_store_models == ["a", "b:v2", "c"]
    assert ensemble_members("a + b") == ["a", "b"] and ensemble_members("a") == ["a"]
