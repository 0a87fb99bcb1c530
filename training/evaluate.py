"""Score a trained model on a split with greedy and beam search, next to a baseline; write JSON.

python -m training.evaluate --model runs/captioner_default/best --split test
python -m training.evaluate --model runs/translator_default/best --baseline runs/translator_noattn/best
python -m training.evaluate --model runs/translator_seed1/best --ensemble runs/translator_seed2/best
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from models.atomic import write_text
from models.checkpoint import LoadedModel, load_model
from models.ensemble import TranslatorEnsemble, check_members_agree
from models.inference import precision
from models.search import SearchOptions
from training.captioning import load_caption_splits
from training.data.loaders import load_aligned
from training.errors import run_main
from training.eval_groups import grouped_scores, image_groups
from training.features import FeatureCache
from training.metrics import caption_scores, translation_scores
from training.predict import caption_texts, translate_texts
from training.settings import SettingsError

METHODS = {"greedy": 1, "beam3": 3, "beam5": 5}
SPLITS = ("train", "valid", "test", "test_style", "test_composite")


@dataclass
class EvalData:
    """Inputs and references of one split; captions also carry cached features."""

    inputs: list[str]  # source sentences, or image paths
    references: list[tuple[str, ...]]
    pooled: Tensor | None = None  # (N, D)
    grid: Tensor | None = None  # (N, S, D)
    extra: dict[str, Any] = field(default_factory=dict)


def search_options(method: str, max_length: int) -> SearchOptions:
    """greedy, beam3 or beam5 as search options."""
    k = METHODS[method]
    return SearchOptions("greedy" if k == 1 else "beam", beam_size=k, max_length=max_length)


def max_length_of(loaded: LoadedModel) -> int:
    """The longest output decoded: the captioner's setting, or 200 (the translator scales by source)."""
    return int(loaded.metadata.get("settings", {}).get("decode_max_length", 200))


def load_ensemble(paths: list[Path]) -> LoadedModel:
    """Translators over the same vocabularies and direction as one model, decoding with the mean
    of their probabilities; its metadata is the first member's, plus "members" (their paths)."""
    members = [(str(path), load_model(path)) for path in paths]  # a path twice: two members
    not_translators = [f"{n} is a {m.kind}" for n, m in members if m.kind != "translator"]
    if not_translators:
        raise SettingsError(f"only translators can be ensembled: {', '.join(not_translators)}")
    try:
        for role in ("source", "target"):
            check_members_agree(
                f"{role} vocabulary", {n: m.vocabularies.get(role) for n, m in members}
            )
        check_members_agree(
            "direction",
            {n: m.metadata.get("settings", {}).get("direction", "") for n, m in members},
        )
    except ValueError as error:
        raise SettingsError(str(error)) from None
    first = members[0][1]
    return LoadedModel(
        "translator",
        TranslatorEnsemble([m.model for _, m in members]),
        first.vocabularies,
        {**first.metadata, "members": [n for n, _ in members]},
    )


def load_eval_data(
    loaded: LoadedModel,
    split: str,
    limit: int = 0,
    feature_cache: str = "runs/cache",
    data: dict[str, str] | None = None,
) -> EvalData:
    """The split the model was trained for (data paths come from its saved settings, or from
    `data` where it names dataset/images/styles instead)."""
    settings = {**loaded.metadata.get("settings", {}), **(data or {})}
    if loaded.kind == "translator":
        source, target = settings.get("direction", "en-de").split("-")
        root = Path(settings.get("data_dir", "data/de-en"))
        pairs = load_aligned(root / f"{split}.{source}", root / f"{split}.{target}")
        pairs = pairs[:limit] if limit else pairs
        return EvalData([s for s, _ in pairs], [(t,) for _, t in pairs])
    splits = load_caption_splits(
        settings["dataset"],
        settings["images"],
        settings.get("styles", ""),
        settings.get("language", "en"),
    )
    examples = splits[split][:limit] if limit else splits[split]
    cache = FeatureCache(feature_cache, loaded.model.encoder)
    train = splits["train"]
    cache.ensure([e.image_path for e in [*examples, *train]])
    rows, train_rows = (
        cache.rows([e.image_path for e in examples]),
        cache.rows([e.image_path for e in train]),
    )
    data = EvalData([str(e.image_path) for e in examples], [e.captions for e in examples])
    data.pooled, data.grid = cache.features(rows)
    data.extra = {
        "train_pooled": cache.pooled(train_rows),
        "train_captions": [e.captions[0] for e in train],
    }
    return data


def decode(loaded: LoadedModel, data: EvalData, options: SearchOptions) -> list[str]:
    """Best output of every input of `data`."""
    v = loaded.vocabularies
    if loaded.kind == "translator":
        return translate_texts(loaded.model, v["source"], v["target"], data.inputs, options)
    return caption_texts(loaded.model, v["caption"], data.pooled, data.grid, options)


def score(kind: str, hypotheses: list[str], data: EvalData) -> dict[str, Any]:
    """Translation: BLEU and chrF with signatures; captions: BLEU-1..4 and CIDEr."""
    if kind == "translator":
        return translation_scores(hypotheses, [r[0] for r in data.references])
    return caption_scores(hypotheses, data.references)


def nearest_neighbour_captions(data: EvalData) -> list[str]:
    """Caption of the nearest training image by cosine similarity of pooled features."""
    queries = torch.nn.functional.normalize(data.pooled.float(), dim=1)  # (N, D)
    keys = torch.nn.functional.normalize(data.extra["train_pooled"].float(), dim=1)  # (M, D)
    nearest = (queries @ keys.T).argmax(dim=1)  # (N,)
    return [data.extra["train_captions"][i] for i in nearest.tolist()]


def evaluate_methods(
    loaded: LoadedModel, data: EvalData, methods: list[str]
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Scores (and seconds taken) of each search method, and the outputs."""
    results, outputs = {}, {}
    for method in methods:
        start = time.monotonic()
        outputs[method] = decode(loaded, data, search_options(method, max_length_of(loaded)))
        results[method] = {
            **score(loaded.kind, outputs[method], data),
            "seconds": round(time.monotonic() - start, 1),
        }
    return results, outputs


def samples(data: EvalData, outputs: dict[str, list[str]], count: int = 8) -> list[dict[str, Any]]:
    """A few inputs with their references and outputs, for reading."""
    return [
        {"input": data.inputs[i], "references": list(data.references[i])}
        | {m: o[i] for m, o in outputs.items()}
        for i in range(min(count, len(data.inputs)))
    ]


def get_args_parser() -> argparse.ArgumentParser:
    """Flags of `python -m training.evaluate`."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, required=True, help="a saved model directory (required)"
    )
    parser.add_argument(
        "--ensemble",
        type=Path,
        action="append",
        default=[],
        metavar="MODEL",
        help="a translator to average with --model (same vocabularies and direction); repeat "
        "for more members (default: none, --model alone)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="translator to compare with, e.g. attention-free (default: none; captions always get the nearest-neighbour baseline)",
    )
    parser.add_argument(
        "--split",
        default="test",
        help=f"split to score: captioners {', '.join(SPLITS)}; translators any <split>.<language> "
        "pair of files, e.g. test_everyday (default: test)",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="translators: score on this folder's <split>.<language> files instead of the "
        "folder trained on (default: none)",
    )
    parser.add_argument(
        "--methods",
        default="greedy,beam3,beam5",
        help="comma-separated search methods (default: greedy,beam3,beam5)",
    )
    parser.add_argument(
        "--limit", type=int, default=0, help="score only the first N examples (default: 0, all)"
    )
    parser.add_argument(
        "--dataset",
        default=None,
        help="captioners: score on this Karpathy file instead of the one trained on (default: none)",
    )
    parser.add_argument(
        "--images", default=None, help="with --dataset: its image folder (default: none)"
    )
    parser.add_argument(
        "--styles",
        default=None,
        help="with --dataset: style folders to keep, '' for all (default: the model's own)",
    )
    parser.add_argument(
        "--group-by",
        default=None,
        metavar="FIELD",
        help="captioners with a Karpathy-format data file: also score each group of images "
        "sharing this field of their entries, e.g. concept_split (default: none)",
    )
    parser.add_argument(
        "--feature-cache", default="runs/cache", help="cached image features (default: runs/cache)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="JSON report (default: <model>/../eval_<split>.json, or eval_<split>_ensemble.json "
        "with --ensemble)",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (default: 0, torch's choice)"
    )
    parser.add_argument(
        "--autocast",
        default="none",
        choices=("none", "bf16", "fp16"),
        help="decode under torch.autocast with this dtype, to check what lower precision costs "
        "in score (default: none)",
    )
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate, print a summary and write the JSON report; return the report."""
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = args.methods.split(",")
    loaded = (
        load_ensemble([args.model, *args.ensemble]) if args.ensemble else load_model(args.model)
    )
    if loaded.kind != "translator" and args.split not in SPLITS:
        raise SettingsError(f"--split {args.split!r}: captioners have {', '.join(SPLITS)}")
    flags = ("dataset", "images", "styles", "data_dir")
    override = {k: v for k in flags if (v := getattr(args, k)) is not None}
    data = load_eval_data(loaded, args.split, args.limit, args.feature_cache, override)
    with precision(next(loaded.model.parameters()).device, args.autocast):
        results, outputs = evaluate_methods(loaded, data, methods)
    report: dict[str, Any] = {
        "kind": loaded.kind,
        "model": str(args.model),
        **({"members": loaded.metadata["members"]} if args.ensemble else {}),
        "split": args.split,
        "autocast": args.autocast,
        "examples": len(data.inputs),
        "results": results,
    }
    if loaded.kind == "captioner":
        nn_outputs = nearest_neighbour_captions(data)
        report["baseline"] = {
            "method": "nearest-neighbour caption (cosine on pooled encoder features)"
        }
        report["baseline"]["results"] = {"greedy": score(loaded.kind, nn_outputs, data)}
        outputs["nearest_neighbour"] = nn_outputs
    elif args.baseline is not None:
        base = load_model(args.baseline)
        base_results, base_outputs = evaluate_methods(base, data, methods)
        report["baseline"] = {"model": str(args.baseline), "results": base_results}
        outputs |= {f"baseline_{m}": o for m, o in base_outputs.items()}
    if args.group_by and loaded.kind == "captioner":
        settings = {**loaded.metadata.get("settings", {}), **override}
        groups = image_groups(settings["dataset"], settings["images"], args.group_by)
        by_group = grouped_scores(data.inputs, data.references, outputs, groups, caption_scores)
        report["groups"] = {"field": args.group_by, "scores": by_group}
    report["samples"] = samples(data, outputs)
    suffix = "_ensemble" if args.ensemble else ""
    output = args.output or args.model.parent / f"eval_{args.split}{suffix}.json"
    write_text(output, json.dumps(report, indent=2, ensure_ascii=False))
    shown = ("results", "baseline", "groups")
    print(json.dumps({k: report[k] for k in shown if k in report}, indent=1))
    return report


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())
