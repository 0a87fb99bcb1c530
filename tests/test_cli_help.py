"""Every command line in the project answers --help (exit 0, a usage line) without doing any work."""

from __future__ import annotations

import contextlib
import io
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    """Modules with a `__main__` guard under training/, bench/ and tests/reliability/."""
    found = []
    for folder in ("training", "bench", "tests/reliability"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if 'if __name__ == "__main__":' in path.read_text(encoding="utf-8"):
                found.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return found


COMMANDS = _commands()


def test_the_commands_are_found() -> None:
    assert {"training.train_captioner", "training.export", "bench.serving"} <= set(COMMANDS)


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")  # already imported
@pytest.mark.parametrize("module", COMMANDS)
def test_help_works(module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stopped:
        runpy.run_module(module, run_name="__main__", alter_sys=False)
    assert stopped.value.code in (0, None), out.getvalue()
    assert "usage:" in out.getvalue()
