"""Train the captioner: `python -m training.train_captioner --preset fast` (torchrun for several processes)."""

from __future__ import annotations

from training.captioning import CaptionerSettings, CaptionTask
from training.command import TrainingCommand

COMMAND = TrainingCommand("captioner", CaptionerSettings, CaptionTask, __doc__)
get_args_parser, main = COMMAND.get_args_parser, COMMAND.main

if __name__ == "__main__":
    COMMAND.run()
