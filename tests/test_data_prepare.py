"""Tests for data preparation: stable splits, manifests, emoji concepts, Ding cleaning, fortunes."""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import pytest

from training.data import ding, emoji, fortunes
from training.data.common import (
    SplitFractions,
    data_root,
    safe_extract_tar,
    sha256_file,
    stable_split,
    write_manifest,
)

# --- common -------------------------------------------------------------------------------------


def test_stable_split_is_deterministic_and_order_independent() -> None:
    keys = [f"key-{i}" for i in range(2000)]
    first = {k: stable_split(k) for k in keys}
    shuffled = keys[:]
    random.Random(0).shuffle(shuffled)
    assert {k: stable_split(k) for k in shuffled} == first
    counts = {name: list(first.values()).count(name) for name in ("train", "valid", "test")}
    assert (
        1500 < counts["train"] < 1700 and 130 < counts["valid"] < 270 and 130 < counts["test"] < 270
    )


def test_split_fractions_validated() -> None:
    assert stable_split("anything", SplitFractions(train=1.0, valid=0.0, test=0.0)) == "train"
    with pytest.raises(ValueError, match="sum to 1"):
        SplitFractions(train=0.8, valid=0.1, test=0.2)


def test_data_root_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    assert data_root() == tmp_path
    monkeypatch.delenv("DATA_DIR")
    assert data_root().name == "data"


def test_manifest_lists_checksums_of_every_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "train.en").write_text("Hello.\n")
    (tmp_path / "sub" / "a.png").write_bytes(b"\x89PNG")
    source = {"name": "pkg", "version": "1", "licence": "MIT", "sha256": "0" * 64}
    path = write_manifest(tmp_path, [source], {"train": 1}, ["a note"])
    manifest = json.loads(path.read_text())
    assert manifest["files"] == {
        "sub/a.png": sha256_file(tmp_path / "sub" / "a.png"),
        "train.en": sha256_file(tmp_path / "train.en"),
    }
    assert manifest["sources"] == [source] and manifest["counts"] == {"train": 1}


def test_safe_extract_refuses_path_traversal(tmp_path: Path) -> None:
    archive = tmp_path / "evil.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../outside.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"boom"))
    with pytest.raises(tarfile.TarError):
        safe_extract_tar(archive, tmp_path / "dest")
    assert not (tmp_path / "outside.txt").exists()


# --- emoji --------------------------------------------------------------------------------------

WAVING_HAND = {
    "label": "waving hand",
    "hexcode": "1F44B",
    "skins": [
        {"label": "waving hand: light skin tone", "hexcode": "1F44B-1F3FB"},
        {"label": "waving hand: dark skin tone", "hexcode": "1F44B-1F3FF"},
    ],
}
WOMAN_TECHNOLOGIST = {
    "label": "woman technologist",
    "hexcode": "1F469-200D-1F4BB",
    "skins": [
        {"label": "woman technologist: medium skin tone", "hexcode": "1F469-1F3FD-200D-1F4BB"}
    ],
}
KEYCAP = {"label": "keycap: #", "hexcode": "0023-FE0F-20E3"}


def test_emoji_key_drops_variation_selector() -> None:
    assert emoji.emoji_key("0023-FE0F-20E3") == emoji.emoji_key("0023-fe0f-20e3") == "0023-20E3"
    assert emoji.emoji_key("2764-fe0f") == emoji.emoji_key("2764") == "2764"


def test_skin_variants_share_base_concept_and_split() -> None:
    concepts = emoji.load_concepts([WAVING_HAND, WOMAN_TECHNOLOGIST, KEYCAP])
    assert len(concepts) == 6
    variant = concepts["1F469-1F3FD-200D-1F4BB"]
    assert variant.caption == "woman technologist: medium skin tone"
    assert variant.base_key == "1F469-200D-1F4BB"
    for base in ("1F44B", "1F469-200D-1F4BB"):
        family = [c for c in concepts.values() if c.base_key == base]
        assert len({emoji.concept_split(c) for c in family}) == 1


def test_many_skin_families_never_straddle_splits() -> None:
    entries = [
        {
            "label": f"thing {i}",
            "hexcode": f"{0x1F000 + i:X}",
            "skins": [
                {"label": f"thing {i}: tone {t}", "hexcode": f"{0x1F000 + i:X}-1F3F{t}"}
                for t in "BCDEF"
            ],
        }
        for i in range(300)
    ]
    concepts = emoji.load_concepts(entries)
    splits_by_base: dict[str, set[str]] = {}
    for concept in concepts.values():
        splits_by_base.setdefault(concept.base_key, set()).add(emoji.concept_split(concept))
    assert all(len(s) == 1 for s in splits_by_base.values())
    assert {s for group in splits_by_base.values() for s in group} == {"train", "valid", "test"}


def test_index_images_matches_filenames_with_and_without_fe0f(tmp_path: Path) -> None:
    for name in ("0023-fe0f-20e3.png", "1f44b-1f3fb.png", "2764-FE0F.svg"):
        (tmp_path / name).write_bytes(b"")
    assert set(emoji.index_images(tmp_path, ".png")) == {"0023-20E3", "1F44B-1F3FB"}
    assert set(emoji.index_images(tmp_path, ".svg")) == {"2764"}


def test_karpathy_records_follow_concept_split() -> None:
    concepts = emoji.load_concepts([WAVING_HAND, KEYCAP])
    records = emoji.karpathy_images({"google": sorted(concepts)}, concepts)
    by_file = {r["filename"]: r for r in records}
    assert by_file["1f44b-1f3fb.png"]["split"] == by_file["1f44b.png"]["split"]
    assert by_file["0023-20e3.png"]["sentences"][0]["raw"] == "keycap: #"
    assert [r["imgid"] for r in records] == list(range(len(records)))


# --- ding ---------------------------------------------------------------------------------------

SUNBURN = (
    "Sonnenbrand {m} [med.] | Sonnenbrand bekommen | einen Sonnenbrand bekommen | "
    "Haben Sie etwas gegen Sonnenbrand? :: sunburn; solar dermatitis; heliosis | to get sunburn; "
    "to get sunburnt; to get sunburned | to get a sunburn | Have you anything for sunburn?"
)
BLONDE = (
    "Blonde {f}; Blondine {f} | Blonden {pl}; Blondinen {pl} | eine Wasserstoffblondine [ugs.] | "
    "Sie ist naturblond. [ugs.] :: blonde | blonds | a bottle/bleached/peroxide blonde | "
    "She’s a natural blonde."
)
CHILDREN = (
    "vorbei {adv} (örtlich) | Entschuldigen Sie, darf ich (bitte/mal) vorbei?; Dürfte ich vorbei?"
    " | Lassen Sie die Kinder bitte vorbei.; Lassen Sie die Kinder bitte durch. :: past | Excuse me,"
    " please, can I get past?; Could I squeeze past / through here? | Please let the children go "
    "past.; Please let the children past."
)


def test_ding_parse_aligns_parts_and_strips_markup() -> None:
    pairs = ding.parse_line(SUNBURN)
    assert ("Haben Sie etwas gegen Sonnenbrand?", "Have you anything for sunburn?") in pairs
    assert ("einen Sonnenbrand bekommen", "to get a sunburn") in pairs
    assert ("Sonnenbrand", "heliosis") in pairs  # 1 German vs 3 English synonyms: all pairs
    assert ("Sie ist naturblond.", "She's a natural blonde.") in ding.parse_line(BLONDE)


def test_ding_synonyms_pair_by_position_when_counts_match() -> None:
    pairs = ding.parse_line(
        "Wir haben es geschafft!; Wir haben es gepackt! :: We've done it!; We've made it!"
    )
    assert pairs == [
        ("Wir haben es geschafft!", "We've done it!"),
        ("Wir haben es gepackt!", "We've made it!"),
    ]
    assert (
        "Entschuldigen Sie, darf ich vorbei?",
        "Excuse me, please, can I get past?",
    ) in ding.parse_line(CHILDREN)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("etw. ausblenden {vt} (nicht mehr anzeigen) [comp.]", "etw. ausblenden"),
        ("to hide {hid; hidden} sth.", "to hide sth."),
        ("Das genügt völlig. <genügen>", "Das genügt völlig."),
        ("in forma pauperis /IFP/ ~legal aid", "in forma pauperis"),
        (
            "Vielen Dank für Ihre Anteilnahme (am Ableben (unseres) Vaters).",
            "Vielen Dank für Ihre Anteilnahme.",
        ),
        ("Aalen {n}; Aalenium {n} (erdgeschichtliche Stufe) [geol.]", "Aalen; Aalenium"),
    ],
)
def test_ding_markup_removed(raw: str, clean: str) -> None:
    assert "; ".join(ding.synonyms(raw)) == clean


@pytest.mark.parametrize(
    ("pair", "outcome"),
    [
        (("Sie ist naturblond.", "She's a natural blonde."), "sentence"),
        (("einen Sonnenbrand bekommen", "to get a sunburn"), "phrase"),
        (("Sonnenbrand bekommen", "to get sunburn"), "short_phrase"),
        (
            ("Die Pläne liegen öffentlich aus/auf.", "The plans are open/available to the public."),
            "other_characters",
        ),
        (("", "past"), "empty"),
        (("Wort " * 41, "word " * 41), "too_long"),
    ],
)
def test_ding_classify(pair: tuple[str, str], outcome: str) -> None:
    assert ding.classify(pair) == outcome


def test_ding_extract_deduplicates_and_keeps_order() -> None:
    line = "Wir haben es geschafft!; Wir haben es gepackt! :: We've done it!; We've made it!"
    pairs, reasons = ding.extract_pairs([line, "# comment :: line", line])
    assert pairs == ding.parse_line(line)
    assert reasons["duplicate"] == 2


def test_ding_splits_share_no_sentence_on_either_side() -> None:
    pairs = [(f"Satz Nummer {i}.", f"Sentence number {i}.") for i in range(2000)]
    pairs += [(f"Satz Nummer {i}.", f"Another sentence {i}.") for i in range(0, 2000, 10)]
    splits, removed = ding.split_pairs(pairs, target=100)
    assert sum(map(len, splits.values())) + sum(removed.values()) == len(pairs)
    for side in (0, 1):
        seen = [{ding.normalize(p[side]) for p in splits[name]} for name in ding.SPLITS]
        assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    assert 50 <= len(splits["valid"]) <= 200 and 50 <= len(splits["test"]) <= 200
    reordered = ding.split_pairs(list(reversed(pairs)), target=100)[0]
    assert reordered["test"] == list(reversed(splits["test"]))


# --- fortunes -----------------------------------------------------------------------------------


def test_fortunes_split_on_percent_lines_and_clean() -> None:
    text = "Cold hands, no gloves.\n%\n_\bH_\bi  there \n\tnext line\n%\nDon\u00e2\u0080\u0099t panic.\n%\n"
    assert fortunes.split_fortunes(text) == [
        "Cold hands, no gloves.",
        "Hi  there\n\tnext line",
        "Don’t panic.",
    ]


def test_fortunes_assign_deduplicates_and_is_stable() -> None:
    items = [f"Fortune {i}." for i in range(200)]
    splits = fortunes.assign(items + items[:10])
    assert sum(map(len, splits.values())) == 200
    assert fortunes.assign(list(reversed(items)))["test"] == list(reversed(splits["test"]))
    assert fortunes.render(["a", "b"]) == "a\n%\nb\n%\n"
