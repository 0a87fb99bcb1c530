"""One module per task (caption, translate, language_model), and loading their models at startup.

Each task owns its whole path: validated request -> jobs -> batch run -> response. What they
share lives once in `service.runtime` (models, device, the batch worker); nothing here or in
the runtime branches on the kind of model.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Protocol

from service.artifacts import ArtifactError, ServedModel
from service.metrics import metrics
from service.runtime import Runtime

logger = logging.getLogger("bentoml.seqserve")


class Task(Protocol):
    """What loading needs from a task."""

    kind: str  # the artifact kind its models must be ("captioner", "translator", "char_lm")
    with_source: bool  # whether its models read text through a source vocabulary

    def model_names(self) -> list[str]:
        """The store models to load; [] for an optional model that is not in the store."""
        ...

    def golden_output(self, served: ServedModel) -> str:
        """The model's output for its golden input, through the task's serving path."""
        ...


def start_tasks(runtime: Runtime, tasks: Sequence[Task]) -> None:
    """Start the batch worker, then load in the background: /livez answers, /readyz waits."""
    runtime.batcher.start()
    threading.Thread(
        target=load_models, args=(runtime, tasks), name="seqserve-loader", daemon=True
    ).start()


def load_models(runtime: Runtime, tasks: Sequence[Task]) -> None:
    """Load every task's models in order and check each one's golden output; the runtime turns
    ready when all pass, and stays failed (not ready) at the first one that does not."""
    checked = metrics().golden_check
    wanted = [(task, name) for task in tasks for name in task.model_names()]
    for _, name in wanted:
        checked.labels(name).set(0)
    for task, name in wanted:
        try:
            served = runtime.load(name, task.kind, task.with_source)
            _check_golden(served, task)
        except Exception as error:  # ChecksumError, ArtifactError, a broken file...
            # the public reason names no file paths; the log line has the details
            problem = f"model {name!r} failed to load ({type(error).__name__})"
            logger.error("%s, the service stays NOT READY: %s", problem, error)
            runtime.mark_failed(problem)
            return
        checked.labels(name).set(1)
        logger.info("%s loaded on %s and passed its golden check", served.tag, runtime.device)
    runtime.mark_ready()


def _check_golden(served: ServedModel, task: Task) -> None:
    """The golden output must match exactly; under bf16 autocast a mismatch falls back to fp32
    once, and only a mismatch in fp32 fails the model."""
    expected = served.golden["output"]
    output = task.golden_output(served)
    if output != expected and served.autocast:
        logger.warning(
            "%s: bf16 autocast changes the golden output; serving it in fp32", served.tag
        )
        served.autocast = False
        output = task.golden_output(served)
    if output != expected:
        raise ArtifactError(
            f"{served.tag}: golden check failed: expected {expected!r}, got {output!r}"
        )
