"""The service's own Prometheus metrics, shown on /metrics beside BentoML's request metrics.

What they explain is queueing: how much waits (rows and requests, per task and model), how much
is in flight, how big and how long the batches are, which requests were refused and why, and
whether each model passed its golden check. docs/service.md has example queries.

prometheus_client is imported on first use, never when the service module is: BentoML's workers
count in a multiprocess registry that /metrics reads, and a metric created before that is set up
would be invisible (BentoML's parent process imports the service module too). Gauges add up over
the live worker processes (`livesum`), except the golden check, which shows the worst worker.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram

BATCH_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
BATCH_SECOND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class Metrics:
    """Every metric the service defines; labels as named in each one's help text."""

    queue_rows: Gauge
    queue_requests: Gauge
    in_flight: Gauge
    batch_rows: Histogram
    batch_seconds: Histogram
    errors: Counter
    golden_check: Gauge


@functools.cache
def metrics() -> Metrics:
    """The metrics, created in this process on the first call."""
    from prometheus_client import Counter, Gauge, Histogram

    per_model = ["task", "model"]
    return Metrics(
        queue_rows=Gauge(
            "seqserve_queue_rows",
            "Inputs (images, sentences, texts) queued for a batch, not yet running",
            per_model,
            multiprocess_mode="livesum",
        ),
        queue_requests=Gauge(
            "seqserve_queue_requests",
            "Requests with at least one input queued for a batch",
            per_model,
            multiprocess_mode="livesum",
        ),
        in_flight=Gauge(
            "seqserve_requests_in_flight",
            "API requests being read, queued, computed or answered",
            ["route"],
            multiprocess_mode="livesum",
        ),
        batch_rows=Histogram(
            "seqserve_batch_rows",
            "Inputs (images, sentences, texts) run together in one batch",
            per_model,
            buckets=BATCH_ROW_BUCKETS,
        ),
        batch_seconds=Histogram(
            "seqserve_batch_duration_seconds",
            "Time one batch took on the batch worker",
            per_model,
            buckets=BATCH_SECOND_BUCKETS,
        ),
        errors=Counter(
            "seqserve_error_responses",  # exposed with the _total suffix
            "Answers in the error shape, by route, HTTP status and error code",
            ["route", "status", "code"],
        ),
        golden_check=Gauge(
            "seqserve_golden_check_passed",
            "1 once the model reproduced its golden output, 0 while loading or after a failure",
            ["model"],
            multiprocess_mode="livemin",
        ),
    )
