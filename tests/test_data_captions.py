"""Tests for caption data users bring (COCO, Karpathy, TSV/CSV), its command, and char LM text."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from tests.synthetic import CocoShaped, write_coco_shaped
from training.data import captions
from training.data.loaders import (
    CaptionExample,
    DataFormatError,
    held_out_fractions,
    load_caption_dataset,
    load_karpathy,
)
from training.data.text import load_text, load_text_splits
from training.language_modeling import load_splits
from training.model_card import data_licences

N_IMAGES = 40
Splits = dict[str, list[CaptionExample]]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> CocoShaped:
    return write_coco_shaped(tmp_path_factory.mktemp("shapes"), n_images=N_IMAGES, seed=3)


def by_image(splits: Splits) -> dict[Path, tuple[str, ...]]:
    return {e.image_path: e.captions for examples in splits.values() for e in examples}


def split_of(splits: Splits) -> dict[str, str]:
    return {e.image_id: name for name, examples in splits.items() for e in examples}


def file_hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def write(path: Path, content: str | bytes | dict[str, Any]) -> Path:
    if isinstance(content, dict):
        content = json.dumps(content)
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


# ---- formats ----


def test_every_format_reads_the_same_images_and_captions(shapes: CocoShaped) -> None:
    karpathy = load_caption_dataset(shapes.karpathy, shapes.images)
    coco = load_caption_dataset(shapes.coco, shapes.images)
    lines = load_caption_dataset(shapes.tsv, shapes.images)
    assert len(by_image(karpathy)) == N_IMAGES
    assert by_image(karpathy) == by_image(coco) == by_image(lines)
    assert all(2 <= len(c) <= 5 for c in by_image(coco).values())
    records = json.loads(shapes.karpathy.read_text())["images"]
    assert sorted(split_of(coco)) == sorted(str(r["cocoid"]) for r in records)  # COCO image ids


def test_karpathy_keeps_its_splits(shapes: CocoShaped) -> None:
    splits = load_caption_dataset(shapes.karpathy, shapes.images)
    assert splits == load_karpathy(shapes.karpathy, shapes.images)
    expected = {"train": "train", "restval": "train", "val": "valid", "test": "test"}
    records = json.loads(shapes.karpathy.read_text())["images"]
    assert split_of(splits) == {str(r["cocoid"]): expected[r["split"]] for r in records}


def test_synthetic_set_is_deterministic(tmp_path: Path) -> None:
    first = write_coco_shaped(tmp_path / "a", n_images=12, seed=1)
    write_coco_shaped(tmp_path / "b", n_images=12, seed=1)
    write_coco_shaped(tmp_path / "c", n_images=12, seed=2)
    assert file_hashes(tmp_path / "a") == file_hashes(tmp_path / "b")
    assert file_hashes(tmp_path / "a") != file_hashes(tmp_path / "c")
    folders = {p.parent.name for p in first.images.rglob("*.jpg")}
    assert folders == {"train2014", "val2014"}


def test_coco_image_folder_from_url_or_file_name(shapes: CocoShaped, tmp_path: Path) -> None:
    expected = by_image(load_caption_dataset(shapes.coco[0], shapes.images))
    inside = load_caption_dataset(shapes.coco[0], shapes.images / "train2014")  # the folder itself
    assert by_image(inside) == expected
    data = json.loads(shapes.coco[0].read_text())
    for image in data["images"]:
        del image["coco_url"]
    no_url = write(tmp_path / "captions_train2014.json", data)
    assert by_image(load_caption_dataset(no_url, shapes.images)) == expected


def test_csv_with_header_quoted_commas_and_flickr_token_lines(tmp_path: Path) -> None:
    csv = write(tmp_path / "c.csv", 'image,caption\n1.jpg,"A dog, running."\n1.jpg,A cat.\n')
    splits = load_caption_dataset(csv, tmp_path, check_images=False)
    assert by_image(splits) == {tmp_path / "1.jpg": ("A dog, running.", "A cat.")}
    token = write(tmp_path / "Flickr8k.token.txt", '1.jpg#0\tA "big" dog.\n1.jpg#1\tA dog.\n')
    splits = load_caption_dataset(token, tmp_path, check_images=False)
    assert by_image(splits) == {tmp_path / "1.jpg": ('A "big" dog.', "A dog.")}


def test_a_split_column_is_kept(tmp_path: Path) -> None:
    lines = write(
        tmp_path / "c.tsv", "1.jpg\tOne.\ttrain\n2.jpg\tTwo.\tval\n3.jpg\tThree.\trestval\n"
    )
    splits = load_caption_dataset(lines, tmp_path, check_images=False)
    assert split_of(splits) == {"1.jpg": "train", "2.jpg": "valid", "3.jpg": "train"}


# ---- splits ----


def test_assigned_splits_are_stable(tmp_path: Path) -> None:
    rows = [f"img/{i}.jpg\tPicture number {i}.\n" for i in range(400)]
    everything = split_of(
        load_caption_dataset(write(tmp_path / "a.tsv", "".join(rows)), tmp_path, check_images=False)
    )
    fewer = write(tmp_path / "b.tsv", "".join(reversed(rows[::2])))  # other order, half of it
    some = split_of(load_caption_dataset(fewer, tmp_path, check_images=False))
    assert some == {image: everything[image] for image in some}
    counts = {name: list(everything.values()).count(name) for name in ("train", "valid", "test")}
    assert 5 <= counts["valid"] <= 40 and 5 <= counts["test"] <= 40


def test_assigned_splits_of_two_coco_files_do_not_depend_on_their_order(shapes: CocoShaped) -> None:
    forward = load_caption_dataset(shapes.coco, shapes.images)
    backward = load_caption_dataset(list(reversed(shapes.coco)), shapes.images)
    assert split_of(forward) == split_of(backward)


def test_held_out_fraction_is_capped_at_coco_scale() -> None:
    assert held_out_fractions(1_000).valid == 0.05
    assert held_out_fractions(123_287).valid * 123_287 == pytest.approx(5_000)
    assert held_out_fractions(123_287).test == held_out_fractions(123_287).valid


@pytest.mark.parametrize(("images", "sizes"), [(1, (1, 0, 0)), (2, (1, 1, 0)), (3, (1, 1, 1))])
def test_a_tiny_set_still_gets_valid_and_test(
    tmp_path: Path, images: int, sizes: tuple[int, int, int]
) -> None:
    rows = "".join(f"{i}.jpg\tCaption {i}.\n" for i in range(images))
    splits = load_caption_dataset(write(tmp_path / "c.tsv", rows), tmp_path, check_images=False)
    assert (len(splits["train"]), len(splits["valid"]), len(splits["test"])) == sizes


# ---- errors ----

KARPATHY_RECORD = {"filename": "x.jpg", "split": "train", "sentences": [{"raw": "A cat."}]}
COCO = {
    "images": [{"id": 1, "file_name": "x.jpg"}],
    "annotations": [{"id": 5, "image_id": 1, "caption": "A cat."}],
}


def coco_with(**annotation: Any) -> dict[str, Any]:
    return {**COCO, "annotations": [{"id": 5, "image_id": 1, "caption": "A cat.", **annotation}]}


ERRORS = [
    ("c.tsv", "a.jpg\n", r"c.tsv:1: one column; expected image and caption separated by a tab"),
    ("c.tsv", "image\tcaption\na.jpg\t  \n", r"c.tsv:2: empty caption"),
    ("c.tsv", "\tA cat.\n", r"c.tsv:1: no image path"),
    ("c.tsv", "a.jpg\tA cat.\tholdout\n", r"c.tsv:1: unknown split 'holdout'"),
    ("c.tsv", "a.jpg\tA cat.\n\na.jpg\tA cat.\n", r"c.tsv:3: same image and caption as line 1"),
    ("c.csv", "a.jpg,A cat, sitting, down.\n", r"c.csv:1: 4 columns.*in double quotes"),
    ("c.tsv", "a.jpg\tA.\ttrain\nb.jpg\tB.\n", r"c.tsv:2: some lines give a split \(line 1\)"),
    ("c.tsv", "a.jpg\tA.\ttrain\na.jpg\tB.\ttest\n", r"c.tsv:2: a.jpg is put in test"),
    ("c.txt", b"a.jpg\tcaf\xe9\n", r"c.txt: not UTF-8 text: byte 0xe9 at byte offset 9 \(line 1\)"),
    ("c.tsv", "", r"c.tsv: no captions in it"),
    ("k.json", {"images": [{**KARPATHY_RECORD, "split": "holdout"}]}, r"k.json: images\[0\] "),
    ("k.json", {"images": [{"split": "train", "sentences": []}]}, r"k.json: images\[0\] lacks"),
    ("k.json", {"images": [{**KARPATHY_RECORD, "split": ["val"]}]}, r"unknown split \['val'\]"),
    ("c.json", {**COCO, "images": [{"id": [1], "file_name": "x.jpg"}]}, r"c.json: images\[0\] is"),
    ("k.json", {"images": ["x.jpg"]}, r"k.json: images\[0\] is not a record"),
    (
        "k.json",
        {"images": [{**KARPATHY_RECORD, "sentences": [{"raw": " "}]}]},
        r"k.json: images\[0\] \(x.jpg\) has an empty caption",
    ),
    (
        "k.json",
        {"images": [{"filename": "x.jpg", "split": "train", "sentences_de": []}]},
        r"k.json: images\[0\] lacks 'sentences'.*it has sentences_de: pick that language",
    ),
    ("k.json", {"images": [KARPATHY_RECORD] * 2}, r"k.json: image .*x.jpg is listed twice in this"),
    ("c.json", coco_with(image_id=9), r"c.json: 1 captions .*annotation 5 -> unknown image 9"),
    ("c.json", {**COCO, "images": COCO["images"] * 2}, r"c.json: image id 1 is listed twice"),
    ("c.json", coco_with(caption=None), r"c.json: annotations\[0\] is not a record"),
    ("c.json", coco_with(caption=""), r"c.json: annotation 5 \(image 1\) is empty"),
    ("c.json", {**COCO, "annotations": [{"id": 5}]}, r"c.json: annotations\[0\] lacks 'image_id'"),
    ("c.json", {**COCO, "images": [{"id": 1}]}, r"c.json: images\[0\] lacks 'file_name'"),
    ("x.json", {"data": []}, r"x.json: no 'images' list"),
    ("x.json", "[1, 2", r"x.json is not valid JSON"),
    ("x.data", "a.jpg\tA cat.\n", r"x.data is not valid JSON.*need a .tsv, .csv or .txt name"),
]


@pytest.mark.parametrize(("name", "content", "message"), ERRORS)
def test_format_errors_name_file_and_place(
    tmp_path: Path, name: str, content: str | bytes | dict[str, Any], message: str
) -> None:
    path = write(tmp_path / name, content)
    with pytest.raises(DataFormatError, match=message):
        load_caption_dataset(path, tmp_path, check_images=False)


def test_missing_images_counted_with_the_first_few_and_the_root(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"")
    rows = "".join(f"{name}.jpg\tA picture.\n" for name in "abcdefgh")
    path = write(tmp_path / "c.tsv", rows)
    message = (
        rf"c.tsv: 7 of 8 images it lists are not files under the image root {tmp_path} "
        r"\(first: b.jpg, c.jpg, d.jpg, e.jpg, f.jpg and 2 more\)"
    )
    with pytest.raises(DataFormatError, match=message):
        load_caption_dataset(path, tmp_path)
    with pytest.warns(UserWarning, match="7 of 8 images"):
        splits = load_caption_dataset(path, tmp_path, skip_missing=True)
    assert list(by_image(splits)) == [tmp_path / "a.jpg"]


def test_an_image_in_two_files_and_a_karpathy_file_with_others(
    shapes: CocoShaped, tmp_path: Path
) -> None:
    copy = write(tmp_path / "again.json", shapes.coco[0].read_text())
    with pytest.raises(DataFormatError, match=r"again.json: image .* is listed also in .*captions"):
        load_caption_dataset([shapes.coco[0], copy], shapes.images)
    with pytest.raises(DataFormatError, match="dataset_coco.json is a Karpathy split file"):
        load_caption_dataset([shapes.coco[0], shapes.karpathy], shapes.images)


# ---- the command ----


def prepare_args(shapes: CocoShaped, inputs: list[Path], out: Path) -> list[str]:
    return ["--input", *map(str, inputs), "--images", str(shapes.images), "--output", str(out)]


@pytest.mark.parametrize("kind", ["coco", "karpathy", "tsv"])
def test_prepare_writes_a_karpathy_file_the_trainer_reads(
    shapes: CocoShaped, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    inputs = {"coco": list(shapes.coco), "karpathy": [shapes.karpathy], "tsv": [shapes.tsv]}[kind]
    out = tmp_path / "out"
    argv = [*prepare_args(shapes, inputs, out), "--licence", "CC0-1.0", "--source-name", "Shapes"]
    captions.run(argv)
    printed = capsys.readouterr().out
    assert "tokens_per_caption" in printed and "valid" in printed and "all" in printed
    assert load_karpathy(out / "dataset.json", shapes.images) == load_caption_dataset(
        inputs, shapes.images
    )
    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["all"]["images"] == N_IMAGES
    assert sum(counts[name]["images"] for name in ("train", "valid", "test")) == N_IMAGES
    assert [s["file"] for s in manifest["sources"]] == [p.name for p in inputs]
    assert "`Shapes` (CC0-1.0)" in data_licences({"dataset": str(out / "dataset.json")})


def test_prepare_twice_gives_identical_files(
    shapes: CocoShaped, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = prepare_args(shapes, list(shapes.coco), tmp_path / "out")
    captions.run(argv)
    first = file_hashes(tmp_path / "out")
    captions.run(argv)
    assert "up to date" in capsys.readouterr().out
    captions.run([*argv, "--force"])
    assert file_hashes(tmp_path / "out") == first
    assert set(first) == {"dataset.json", "manifest.json"}


def test_prepare_errors_end_in_one_line(shapes: CocoShaped, tmp_path: Path) -> None:
    lines = write(tmp_path / "c.tsv", shapes.tsv.read_text() + "train2014/gone.jpg\tGone.\n")
    with pytest.raises(SystemExit, match=r"^error: .*c.tsv: 1 of 41 images .*gone.jpg"):
        captions.run(prepare_args(shapes, [lines], tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit, match=r"^error: --output .* holds other files"):
        captions.run(prepare_args(shapes, [shapes.tsv], shapes.images))


def test_verify_images_finds_a_corrupt_image(tmp_path: Path) -> None:
    small = write_coco_shaped(tmp_path / "small", n_images=6)
    broken = next(small.images.rglob("*.jpg"))
    broken.write_bytes(broken.read_bytes()[:200])
    argv = [*prepare_args(small, [small.tsv], tmp_path / "out"), "--verify-images"]
    with pytest.raises(SystemExit, match=rf"1 of 6 images .* cannot be decoded .*{broken.name}"):
        captions.run(argv)
    captions.run([*argv, "--skip-missing"])
    kept = load_karpathy(tmp_path / "out" / "dataset.json", small.images)
    assert len(by_image(kept)) == 5 and broken not in by_image(kept)


# ---- char LM text ----


def test_text_folder_reads_every_file_below_it_but_hidden_ones(tmp_path: Path) -> None:
    write(tmp_path / "b.txt", "bee\n" + "buzz " * 20)
    (tmp_path / "a").mkdir()
    write(tmp_path / "a" / "c.md", "sea")  # no final newline: one is added
    write(tmp_path / "a" / "d", b"\xef\xbb\xbfdee\r\n")  # BOM and CRLF
    write(tmp_path / ".hidden", "no")
    (tmp_path / ".git").mkdir()
    write(tmp_path / ".git" / "HEAD", "no")
    text = "sea\ndee\nbee\n" + "buzz " * 20 + "\n"
    assert load_text(tmp_path) == text
    train, valid = load_splits(str(tmp_path), max_train_chars=0)
    assert (train, valid) == (text[: int(len(text) * 0.95)], text[int(len(text) * 0.95) :])


def test_text_folder_with_train_and_valid_files(tmp_path: Path) -> None:
    write(tmp_path / "train.txt", "x" * 100)
    write(tmp_path / "notes.md", "not read")
    assert load_text_splits(tmp_path) == ("x" * 95, "x" * 5)  # no valid.txt: the last 5%
    write(tmp_path / "valid.txt", "y")
    assert load_splits(str(tmp_path), max_train_chars=10) == ("x" * 10, "y")


def test_text_that_is_not_utf8_names_file_and_byte(tmp_path: Path) -> None:
    write(tmp_path / "good.txt", "fine\n")
    write(tmp_path / "bad.txt", b"ok\n\xff\xfe")
    message = r"bad.txt: not UTF-8 text: byte 0xff at byte offset 3 \(line 2\); convert .* remove"
    with pytest.raises(DataFormatError, match=message):
        load_splits(str(tmp_path), max_train_chars=0)


def test_empty_text_says_so(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match=r"empty.txt: the text is empty"):
        load_text(write(tmp_path / "empty.txt", ""))
    (tmp_path / "blank").mkdir()
    write(tmp_path / "blank" / "a.txt", " \n")
    with pytest.raises(DataFormatError, match=r"blank: the text is empty"):
        load_splits(str(tmp_path / "blank"), max_train_chars=0)
    for tiny in ("a", "ab \n"):
        with pytest.raises(DataFormatError, match=r"tiny.txt: .* too few to train on 95%"):
            load_text_splits(write(tmp_path / "tiny.txt", tiny))


def test_max_images_takes_a_stable_spread_subset_of_each_split(tmp_path: Path) -> None:
    from training.captioning import load_caption_splits

    data = write_coco_shaped(tmp_path / "coco", n_images=120, seed=5)
    full = load_caption_splits(str(data.karpathy), str(data.images))
    part = load_caption_splits(str(data.karpathy), str(data.images), max_images=10)
    for name, examples in full.items():
        chosen = part[name]
        assert len(chosen) == min(10, len(examples))
        assert [e for e in examples if e in chosen] == chosen  # a subset, in the file's order
    train = full["train"]
    assert part["train"] != train[:10]  # spread over the split, not its head


def test_data_without_validation_images_validates_on_a_stable_part_of_train(
    tmp_path: Path,
) -> None:
    from training.captioning import load_caption_splits

    data = write_coco_shaped(tmp_path / "coco", n_images=80, seed=2)
    lines = data.tsv.read_text().splitlines()[1:]  # image, caption: every image in train or test
    split_of = {
        line.split("\t")[0]: ("test" if i % 5 == 0 else "train") for i, line in enumerate(lines)
    }
    tsv = tmp_path / "no_valid.tsv"
    tsv.write_text("".join(f"{line}\t{split_of[line.split(chr(9))[0]]}\n" for line in lines))
    first = load_caption_splits(str(tsv), str(data.images))
    again = load_caption_splits(str(tsv), str(data.images))
    assert first["valid"] and first["valid"] == again["valid"]
    train, valid = {e.image_path for e in first["train"]}, {e.image_path for e in first["valid"]}
    assert not train & valid and all(
        split_of[str(p.relative_to(data.images))] == "train" for p in valid
    )
