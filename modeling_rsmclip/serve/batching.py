"""`QueryBatcher`: concurrent queries gathered for a few milliseconds, then computed in one call.

A text query of a CLIP model costs little compute but a fixed overhead per forward pass (Python, the tokenizer,
kernel launches); on a CPU a batch of 32 short texts costs a few times one text, not 32 times. The batcher keeps one
worker thread and a queue: the first waiting query opens a batch, which takes whatever else arrives within
``max_wait_s`` (or until ``max_batch`` queries), and the batch is computed in one call of ``fn``. While a batch is
computed the next one fills up, so under load batches grow by themselves and the wait matters only when the server
is nearly idle.

It is plain threads and `concurrent.futures.Future` (no event loop of its own), so an asyncio server awaits it with
``asyncio.wrap_future`` and synchronous code with ``future.result()``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
_STOP = object()


class QueueFullError(RuntimeError):
    """More queries wait than the batcher accepts (``max_pending``): the server is overloaded."""


@dataclass
class BatchStats:
    """What the batcher has done: batches computed, queries in them, the largest batch."""

    batches: int = 0
    queries: int = 0
    largest: int = 0

    @property
    def mean_batch(self) -> float:
        return self.queries / self.batches if self.batches else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "queries": self.queries,
            "largest": self.largest,
            "mean_batch": round(self.mean_batch, 3),
        }


class QueryBatcher(Generic[T, R]):
    """Gather concurrent `submit` calls into batches for ``fn``.

    Args:
        fn: computes a batch: ``fn([q1, q2, ...]) -> [r1, r2, ...]`` (same length and order). An exception fails
            every query of that batch with it.
        max_batch: most queries per call of ``fn``; 1 computes each query alone (in arrival order).
        max_wait_s: how long an open batch waits for more queries (only while it is smaller than ``max_batch``).
        max_pending: most queries waiting at once; `submit` raises `QueueFullError` beyond it.
        name: the worker thread's name.
    """

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R]],
        *,
        max_batch: int = 32,
        max_wait_s: float = 0.005,
        max_pending: int = 1024,
        name: str = "rsmclip-query-batcher",
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.fn = fn
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_s)
        self.max_pending = int(max_pending)
        self.stats = BatchStats()
        self._queue: queue.Queue[Any] = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------------------------------------- public
    def submit(self, query: T) -> Future[R]:
        """Queue ``query``; the future gets its result (or the batch's exception)."""
        future: Future[R] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the query batcher is closed")
            if self._pending >= self.max_pending:
                raise QueueFullError(
                    f"{self._pending} queries are waiting already (at most {self.max_pending}): try again shortly"
                )
            self._pending += 1
        self._queue.put((query, future))
        return future

    def __call__(self, query: T, timeout: float | None = None) -> R:
        """`submit` and wait for the result."""
        return self.submit(query).result(timeout)

    @property
    def pending(self) -> int:
        """Queries submitted and not yet taken into a batch."""
        return self._pending

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker after the queries already submitted; later `submit` calls raise."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def __enter__(self) -> QueryBatcher[T, R]:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ----------------------------------------------------------------------------------------------- worker
    def _take(self, block: bool, timeout: float | None = None) -> Any:
        item = self._queue.get(block, timeout)
        if item is not _STOP:
            with self._lock:
                self._pending -= 1
        return item

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._take(True)
            if first is _STOP:
                break
            batch = [first]
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    item = self._take(remaining > 0, max(remaining, 0.0) or None)
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            self._compute(batch)

    def _compute(self, batch: list[tuple[T, Future[R]]]) -> None:
        live = [(query, future) for query, future in batch if future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            results = list(self.fn([query for query, _ in live]))
            if len(results) != len(live):
                raise RuntimeError(
                    f"the batch function returned {len(results)} results for {len(live)} queries"
                )
        except BaseException as error:  # every waiting query learns of it; the worker keeps serving
            for _, future in live:
                future.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        self.stats.batches += 1
        self.stats.queries += len(live)
        self.stats.largest = max(self.stats.largest, len(live))
        for (_, future), result in zip(live, results):
            future.set_result(result)


__all__ = ["BatchStats", "QueryBatcher", "QueueFullError"]
