"""Dynamic batching: one worker thread owns the model; requests queue up and share its forward passes.

The worker takes the requests waiting in the queue, in order, while they fit one model call: at most
`max_batch_size` texts and `max_batch_tokens` padded tokens (texts x the longest); after the first it waits up to
`batch_wait_ms` for company. It runs them as length-sorted batches and hands each request its rows, so that
concurrent clients share model calls instead of waiting for each other's. A request alone over the token budget
is split into forward passes within it. `dynamic_batching=False` (`serve --no-batching`) runs one request per
model call. A full queue refuses with 429; a request whose client went away is withdrawn.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

from embedtune.serve.errors import ApiError
from embedtune.serve.limits import RETRY_AFTER, ServeLimits
from embedtune.serve.metrics import ServerMetrics

log = logging.getLogger(__name__)


@dataclass
class _Job:
    ids: list[list[int]]
    future: Future

    @property
    def longest(self) -> int:
        return max(map(len, self.ids))


class Batcher:
    """One worker thread owns the model; requests queue up and share its forward passes."""

    def __init__(self, embedder, limits: ServeLimits, metrics: ServerMetrics | None = None):
        self.embedder, self.limits = embedder, limits
        self.metrics = metrics or ServerMetrics()
        self._queue: collections.deque[_Job] = collections.deque()
        self._queued_texts = 0
        self._cond = threading.Condition()
        self._stopping = False
        self.model_calls = 0  # batches run (for /health and the benchmark)
        self.withdrawn = 0  # requests taken out of the queue because their client went away
        self._thread = threading.Thread(target=self._run, name="embedtune-batcher", daemon=True)

    def start(self) -> Batcher:
        self.embedder.model.eval()
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def queued_texts(self) -> int:
        return self._queued_texts

    def submit(self, ids: list[list[int]]) -> Future:
        future: Future = Future()
        with self._cond:
            if self._stopping:
                raise ApiError(503, "server is shutting down", code="unavailable", kind="server_error",
                               headers={"Retry-After": "5"})
            if self._queued_texts and self._queued_texts + len(ids) > self.limits.max_queue:
                raise ApiError(429, f"server is busy: {self._queued_texts} texts are queued and the queue holds "
                                    f"{self.limits.max_queue}; retry shortly", code="overloaded",
                               kind="rate_limit_error", headers=dict(RETRY_AFTER))
            self._queue.append(_Job(ids, future))
            self._queued_texts += len(ids)
            self._cond.notify()
        return future

    def withdraw(self, future: Future) -> None:
        """Take a submitted request back (its client went away): out of the queue if still there, and its
        future cancelled, so that the worker skips it."""
        with self._cond:
            for i, job in enumerate(self._queue):
                if job.future is future:
                    del self._queue[i]
                    self._queued_texts -= len(job.ids)
                    self.withdrawn += 1
                    break
        future.cancel()

    def _take(self) -> list[_Job] | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping and not self._queue:
                return None
            jobs = [self._queue.popleft()]
            if self.limits.dynamic_batching:
                self._gather(jobs)
            self._queued_texts -= sum(len(job.ids) for job in jobs)
            return jobs

    def _gather(self, jobs: list[_Job]) -> None:
        """Add queued requests to `jobs` (under the lock) while they fit one model call, waiting up to
        batch_wait_ms for them; stops at the first that does not fit (requests are served in order)."""
        texts, longest = len(jobs[0].ids), jobs[0].longest
        deadline = time.monotonic() + self.limits.batch_wait_ms / 1000
        while texts < self.limits.max_batch_size:
            if self._queue:
                job = self._queue[0]
                wider = max(longest, job.longest)
                if (texts + len(job.ids) > self.limits.max_batch_size
                        or (texts + len(job.ids)) * wider > self.limits.max_batch_tokens):
                    return
                jobs.append(self._queue.popleft())
                texts, longest = texts + len(job.ids), wider
                continue
            left = deadline - time.monotonic()
            if left <= 0 or self._stopping:
                return
            self._cond.wait(left)

    def _run(self) -> None:
        while (jobs := self._take()) is not None:
            jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
            if not jobs:
                continue
            try:
                ids = [seq for job in jobs for seq in job.ids]
                # The same batcher as `encode` and evaluation: length-sorted padded batches.
                vectors = self.embedder.encode_ids(ids, batch_size=self.limits.max_batch_size,
                                                   max_tokens=self.limits.max_batch_tokens)
                self.model_calls += 1
                self.metrics.observe_batch(len(ids), sum(map(len, ids)))
            except BaseException as err:  # the worker must survive anything one batch does
                log.exception("embedding batch of %d texts failed", sum(len(j.ids) for j in jobs))
                for job in jobs:
                    job.future.set_exception(err)
                continue
            start = 0
            for job in jobs:
                job.future.set_result(vectors[start:start + len(job.ids)])
                start += len(job.ids)
