"""Train the captioner: `python -m training.train_captioner --preset fast` (torchrun for several processes)."""

from __future__ import annotations

import argparse

from training.captioning import CaptionerSettings, CaptionTask
from training.loop import train
from training.settings import add_setting_flags, resolve_settings
from training.state import Progress


def get_args_parser() -> argparse.ArgumentParser:
    """Flags: a preset, then any setting of the preset overridden by name."""
    parser = argparse.ArgumentParser(description=__doc__)
    add_setting_flags(parser, CaptionerSettings)
    return parser


def main(args: argparse.Namespace) -> Progress:
    """Train with the preset and flags in `args`; the best model lands in <run>/best."""
    return train(resolve_settings(CaptionerSettings, "captioner", args), CaptionTask)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
