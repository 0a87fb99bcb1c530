"""Plain UTF-8 text for the character language model: one file, or every file of a folder."""

from __future__ import annotations

from pathlib import Path

from training.data.loaders import DataFormatError, read_utf8


def text_files(folder: Path) -> list[Path]:
    """Every regular file under folder, recursively, sorted by path; hidden files and folders and
    our own manifest.json skipped."""
    folder = Path(folder)
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and path.name != "manifest.json"  # what `python -m training.data...` says of the folder
        and not any(p.startswith(".") for p in path.relative_to(folder).parts)
    )


def load_text(path_or_folder: Path) -> str:
    """One UTF-8 text file, or every file of `text_files(folder)` (each ending in a newline), as
    one string. DataFormatError for a file that is not UTF-8, or when the text is empty."""
    path = Path(path_or_folder)
    if path.is_file():
        text = read_utf8(path)
    elif path.is_dir():
        files = text_files(path)
        if not files:
            raise FileNotFoundError(f"{path} holds no files (hidden files are skipped)")
        texts = [read_utf8(file) for file in files]
        text = "".join(t if t.endswith("\n") or not t else t + "\n" for t in texts)
    else:
        raise FileNotFoundError(f"{path} is neither a text file nor a folder")
    if not text or text.isspace():
        raise DataFormatError(f"{path}: the text is empty (or only white space)")
    return text


def load_text_splits(path: Path) -> tuple[str, str]:
    """(train, valid) text: a folder's train.txt and valid.txt; else its train.txt, any other
    folder's files, or one file, with the last 5% of the characters validating."""
    path = Path(path)
    if path.is_dir() and (path / "train.txt").is_file():
        text = load_text(path / "train.txt")
        if (path / "valid.txt").is_file():
            return text, load_text(path / "valid.txt")
    else:
        text = load_text(path)
    cut = int(len(text) * 0.95)
    if any(not part or part.isspace() for part in (text[:cut], text[cut:])):
        raise DataFormatError(
            f"{path}: {len(text)} characters are too few to train on 95% and validate on 5%; "
            "give more text, or a folder with train.txt and valid.txt"
        )
    return text[:cut], text[cut:]
