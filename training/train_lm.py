"""Train the character language model with truncated BPTT: `python -m training.train_lm --preset default`."""

from __future__ import annotations

from training.command import TrainingCommand
from training.language_modeling import LanguageModelTask, LMSettings

COMMAND = TrainingCommand("lm", LMSettings, LanguageModelTask, __doc__)
get_args_parser, main = COMMAND.get_args_parser, COMMAND.main

if __name__ == "__main__":
    COMMAND.run()
