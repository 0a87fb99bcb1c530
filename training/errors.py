"""Errors a user can act on, and the `__main__` wrapper that ends a command on them in one line."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from models.atomic import DamagedFileError, WriteFailedError
from training.data.loaders import DataFormatError
from training.settings import SettingsError

# each names the file or setting and what to do: a traceback would only hide that line
USER_ERRORS: tuple[type[Exception], ...] = (
    DataFormatError,
    DamagedFileError,  # ChecksumError, CheckpointError, a damaged vocabulary or feature shard
    FileExistsError,
    FileNotFoundError,
    SettingsError,
    WriteFailedError,  # a full disk: the file there before is kept
)


def run_main(main: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> None:
    """Run a command's `main(args)`; a user error ends it with one line on stderr, status 1."""
    try:
        main(args)
    except USER_ERRORS as error:
        raise SystemExit(f"error: {error}") from None
