"""An in-process batch queue: one worker thread runs what concurrent requests queued as one batch."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from service.errors import overloaded

logger = logging.getLogger("bentoml.seqserve")

# family, payloads (in queue order) -> one result per payload
BatchRunner = Callable[[Hashable, Sequence[Any]], Sequence[Any]]
# family, rows queued, requests queued: told whenever the queue of a family changes
QueueObserver = Callable[[Any, int, int], None]


class BatchAbandoned(Exception):
    """Every request waiting on the running batch gave up: its runner may stop computing it."""


@dataclass
class _Job:
    family: Hashable
    payload: Any
    rows: int
    request: Hashable  # the request that submitted it (one request may submit several jobs)
    future: Future = field(default_factory=Future)
    given_up: bool = False  # its request stopped waiting (timed out)


def current_request() -> Hashable:
    """What identifies the request running here: its asyncio task on an event loop (where every
    async request shares the thread), else its thread (a sync API body has one to itself)."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no event loop runs in this thread
        task = None
    return task if task is not None else threading.get_ident()


class Batcher:
    """Queue jobs from many request threads; a single worker takes the oldest job's family and
    runs it with every other queued job of that family, up to `max_rows(family)` rows.

    A batch starts as soon as the worker is free, except that it waits (at most `max_wait_s`)
    for requests that announced themselves with `arriving()` and are still being decoded, so a
    lone request never waits and a burst is not split into a small batch and a big one.
    `observe`, when given, hears the queued rows and requests of a family whenever they change.
    """

    def __init__(
        self,
        run: BatchRunner,
        max_rows: Callable[[Hashable], int],
        max_wait_s: float,
        max_queue_rows: int,
        observe: QueueObserver | None = None,
    ) -> None:
        self._run, self._max_rows, self._observe = run, max_rows, observe
        self._max_wait_s, self._max_queue_rows = max_wait_s, max_queue_rows
        self._pending: deque[_Job] = deque()
        # what is queued, kept as jobs come and go: rows, and jobs per request, per family
        self._queued_rows: Counter[Hashable] = Counter()
        self._queued_jobs: defaultdict[Hashable, Counter[Hashable]] = defaultdict(Counter)
        self._arriving = 0
        self._running: list[_Job] = []
        self._running_waited = 0  # running jobs whose request still waits
        self._stopping = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._work, name="seqserve-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        self._thread.join(timeout=30)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Announce a request that will submit soon (while it decodes its inputs)."""
        with self._changed:
            self._arriving += 1
        try:
            yield
        finally:
            with self._changed:
                self._arriving -= 1
                self._changed.notify_all()

    @property
    def abandoned(self) -> bool:
        """True while a batch runs that no request waits for any more: the runner may stop it."""
        return bool(self._running) and self._running_waited == 0

    def raise_if_abandoned(self) -> None:
        """For the runner, between steps of a batch: BatchAbandoned when nobody waits for it."""
        if self.abandoned:
            raise BatchAbandoned

    def give_up(self, futures: Sequence[Future]) -> None:
        """The request waiting on `futures` stopped waiting: its queued jobs are dropped, and a
        running batch whose requests all gave up turns `abandoned`."""
        wanted = set(futures)
        with self._changed:
            for job in self._pending:
                if job.future in wanted and job.future.cancel():
                    self._leave_queue(job)
                    self._report(job.family)
            for job in self._running:
                if job.future in wanted and not job.given_up:
                    job.given_up = True
                    self._running_waited -= 1

    def submit(
        self, family: Hashable, payload: Any, rows: int = 1, request: Hashable | None = None
    ) -> Future:
        """Queue one job; its future gets the runner's result for `payload` (or its error).
        `request` identifies the submitting request (default: the calling task's or thread's)."""
        job = _Job(family, payload, rows, current_request() if request is None else request)
        with self._changed:
            queued = sum(self._queued_rows.values())
            if queued + rows > self._max_queue_rows:
                raise overloaded(f"{queued} inputs are queued; retry later")
            self._pending.append(job)
            self._queued_rows[family] += rows
            self._queued_jobs[family][job.request] += 1
            self._report(family)
            self._changed.notify_all()
        return job.future

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            family, jobs = batch
            if not jobs:
                continue
            with self._changed:
                self._running, self._running_waited = jobs, len(jobs)
            try:
                results = self._run(family, [job.payload for job in jobs])
            except BaseException as error:  # handed to the waiting requests; the worker lives on
                for job in jobs:
                    job.future.set_exception(error)
            else:
                for job, result in zip(jobs, results, strict=True):
                    job.future.set_result(result)
            finally:
                with self._changed:
                    self._running, self._running_waited = [], 0

    def _next_batch(self) -> tuple[Hashable, list[_Job]] | None:
        with self._changed:
            while not self._pending and not self._stopping:
                self._changed.wait()
            if self._stopping:
                return None
            family = self._pending[0].family
            limit = self._max_rows(family)
            deadline = time.monotonic() + self._max_wait_s
            while self._arriving and self._queued_rows[family] < limit:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            jobs, rows, kept, full = [], 0, deque(), False
            for job in self._pending:
                if job.future.cancelled():
                    continue  # its request timed out while queued
                if full or job.family != family or (jobs and rows + job.rows > limit):
                    full = full or job.family == family  # keep queue order within a family
                    kept.append(job)
                elif job.future.set_running_or_notify_cancel():
                    jobs.append(job)
                    rows += job.rows
                    self._leave_queue(job)
            self._pending = kept
            self._report(family)
            return family, jobs

    def _leave_queue(self, job: _Job) -> None:
        """Count `job` out of the queue (taken into a batch, or dropped); holding the lock."""
        self._queued_rows[job.family] -= job.rows
        jobs = self._queued_jobs[job.family]
        jobs[job.request] -= 1
        if jobs[job.request] <= 0:
            del jobs[job.request]

    def _report(self, family: Hashable) -> None:
        """Tell `observe` the family's queued rows and requests (holding the lock)."""
        if self._observe is not None:
            self._observe(family, self._queued_rows[family], len(self._queued_jobs[family]))
