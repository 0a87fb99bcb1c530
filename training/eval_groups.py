"""Scores of a caption evaluation split into groups of images by a field of the data file, e.g.
`concept_split` in data/photo: which held-out images show a concept training has in other styles.

Each group is scored on its own (CIDEr's document frequencies come from that group's references,
as they would if the group were the whole split).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from training.settings import SettingsError


def image_groups(dataset: str | Path, images: str | Path, field: str) -> dict[str, str]:
    """Image path (as the caption loader builds it) -> the value of `field` in its entry of a
    Karpathy-format data file; SettingsError when the file is not one or no entry has `field`."""
    try:
        entries = json.loads(Path(dataset).read_text(encoding="utf-8"))["images"]
    except (OSError, ValueError, KeyError, TypeError):
        raise SettingsError(
            f"--group-by {field}: {dataset} is not a readable Karpathy-format data file (a JSON "
            "object with an 'images' list); groups come from its image entries"
        ) from None
    groups = {
        str(Path(images) / e.get("filepath", "") / e["filename"]): str(e[field])
        for e in entries
        if isinstance(e, dict) and field in e and "filename" in e
    }
    if not groups:
        raise SettingsError(f"--group-by {field}: no image entry of {dataset} has that field")
    return groups


def grouped_scores(
    inputs: Sequence[str],
    references: Sequence[Sequence[str]],
    outputs: dict[str, list[str]],
    groups: dict[str, str],
    score: Callable[[list[str], list[Sequence[str]]], dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    """{group: {"examples": n, output name: its scores on the group}} for every group the
    evaluated `inputs` fall in (an input missing from `groups` goes to "(none)")."""
    members: dict[str, list[int]] = {}
    for index, path in enumerate(inputs):
        members.setdefault(groups.get(path, "(none)"), []).append(index)
    return {
        group: {"examples": len(rows)}
        | {
            name: score([hyps[i] for i in rows], [references[i] for i in rows])
            for name, hyps in outputs.items()
        }
        for group, rows in sorted(members.items())
    }
