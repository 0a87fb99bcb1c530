"""What each endpoint does, between the validated request and the response model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from models.search import SearchOptions
from models.vocabulary import SPECIALS
from service import results
from service.artifacts import ServedModel
from service.errors import RequestError
from service.runtime import Runtime
from service.schemas import Caption, DecodingOptions, Translation


def search_options(options: DecodingOptions) -> SearchOptions:
    """API options -> SearchOptions. Fields the method does not use keep their defaults, so
    requests that differ only there share a batch."""
    options.check_consistent()
    base = SearchOptions(
        method=options.decoding,
        max_length=options.max_length,
        min_length=options.min_length,
        length_penalty=options.length_penalty,
        no_repeat_ngram_size=options.no_repeat_ngram_size,
    )
    if options.decoding == "beam":
        return replace(base, beam_size=options.beam_size, n_best=options.n_best)
    if options.decoding == "sample":
        return replace(
            base,
            n_best=options.n_best,
            temperature=options.temperature,
            top_k=options.top_k,
            seed=options.seed,
        )
    return base


class Endpoints:
    """The work behind each API, given validated inputs; raises RequestError for bad ones."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def caption_files(
        self, files: Sequence[Path], fields: Sequence[str], options: DecodingOptions
    ) -> tuple[list[Caption], str]:
        """Uploaded image files -> one caption each, and the tag of the captioner."""
        runtime = self.runtime
        search = search_options(options)
        served = runtime.captioner()
        _check_attention(served, options)
        with runtime.batcher.arriving():  # a batch forming now may wait for these images
            images = [
                runtime.image_tensor(file.read_bytes(), field)
                for file, field in zip(files, fields, strict=True)
            ]
            futures = runtime.submit_captions(images, search, served)
        found = runtime.results(futures)
        captions = [results.caption(h, served.target, options.return_attention) for h in found]
        return captions, served.tag

    def translate_sentences(
        self, sentences: Sequence[str], options: DecodingOptions, model: str | None
    ) -> tuple[list[Translation], str]:
        """Sentences -> one translation each, in order, and the tag of the translator."""
        search = search_options(options)
        served = self.runtime.translator(model)
        _check_attention(served, options)
        found = self.runtime.translate(served, sentences, search)
        limit = self.runtime.settings.max_source_tokens
        translations = [
            results.translation(
                sentence,
                [*served.source.tokenizer.tokenize(sentence)[:limit], SPECIALS[2]],
                hypotheses,
                served.target,
                options.return_attention,
            )
            for sentence, hypotheses in zip(sentences, found, strict=True)
        ]
        return translations, served.tag


def _check_attention(served: ServedModel, options: DecodingOptions) -> None:
    if options.return_attention and served.attention == "none":
        raise RequestError(
            f"{served.tag} has no attention to return; leave return_attention false",
            "options.return_attention",
        )
