"""The command line every trainer shares: settings from a preset and flags, then one training run."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

import torch

from training.distributed import setup, teardown
from training.errors import run_main
from training.loop import Task, Trainer
from training.settings import LoopSettings, resolve_settings, settings_parser
from training.state import Progress

TaskFactory = Callable[..., Task]  # (settings, Distributed, torch.device) -> Task


def train(settings: LoopSettings, make_task: TaskFactory) -> Progress:
    """Set up this process (alone or under torchrun), build the task and train it."""
    info, device = setup(settings.device)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        task = make_task(settings, info, device)
        progress = Trainer(task, settings, info, device).run()
    finally:
        teardown(info)
    if info.is_main:
        print(
            f"{settings.run_dir}: {progress.step} steps, {progress.epoch} epochs, "
            f"best {settings.select_metric} {progress.best_metric}"
        )
    return progress


@dataclass(frozen=True)
class TrainingCommand:
    """One model's `python -m training.train_<kind>`: its settings, presets and task."""

    kind: str  # presets are training/configs/<kind>_<preset>.yaml
    settings_class: type[LoopSettings]
    make_task: TaskFactory
    description: str | None

    def get_args_parser(self) -> argparse.ArgumentParser:
        """Flags: a preset, then any setting of the preset overridden by name."""
        return settings_parser(self.settings_class, self.kind, self.description)

    def main(self, args: argparse.Namespace) -> Progress:
        """Train with the preset and flags in `args`; the best model lands in <run>/best."""
        return train(resolve_settings(self.settings_class, self.kind, args), self.make_task)

    def run(self, argv: list[str] | None = None) -> None:
        """The `__main__` entry: data mistakes, damaged files (checkpoint, vocabulary, cache) and
        a full disk end in one line naming the file and what to do, not a traceback."""
        run_main(self.main, self.get_args_parser().parse_args(argv))
