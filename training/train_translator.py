"""Train the translator: `python -m training.train_translator --preset fast` (torchrun for several processes)."""

from __future__ import annotations

from training.command import TrainingCommand
from training.translation import TranslationTask, TranslatorSettings

COMMAND = TrainingCommand("translator", TranslatorSettings, TranslationTask, __doc__)
get_args_parser, main = COMMAND.get_args_parser, COMMAND.main

if __name__ == "__main__":
    COMMAND.run()
