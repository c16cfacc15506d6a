"""`serve.batching.QueryBatcher`: queries that wait together are computed together, in order, and errors reach every
query of their batch."""

from __future__ import annotations

import threading
import time

import pytest

from modeling_rsmclip.serve.batching import QueryBatcher, QueueFullError


class Recorder:
    """A batch function that records its batches; the first call waits for `release` so that others queue up."""

    def __init__(self, hold_first: bool = True) -> None:
        self.batches: list[list[int]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.started.set()
        self.release.wait(10)
        return [item * item for item in items]


def test_queries_waiting_behind_a_batch_form_the_next_one():
    fn = Recorder()
    with QueryBatcher(fn, max_batch=4, max_wait_s=0.0) as batcher:
        first = batcher.submit(1)
        assert fn.started.wait(10)  # the worker is computing [1]; the next queries wait
        futures = [batcher.submit(i) for i in range(2, 8)]
        assert batcher.pending == 6
        fn.release.set()
        assert first.result(10) == 1
        assert [f.result(10) for f in futures] == [i * i for i in range(2, 8)]
    assert fn.batches == [[1], [2, 3, 4, 5], [6, 7]]
    assert batcher.stats.as_dict() == {
        "batches": 3,
        "queries": 7,
        "largest": 4,
        "mean_batch": round(7 / 3, 3),
    }


def test_an_open_batch_waits_for_more_queries():
    fn = Recorder(hold_first=False)
    with QueryBatcher(fn, max_batch=8, max_wait_s=0.5) as batcher:
        futures = [batcher.submit(1)]
        time.sleep(0.05)
        futures += [batcher.submit(2), batcher.submit(3)]
        assert [f.result(10) for f in futures] == [1, 4, 9]
    assert fn.batches == [[1, 2, 3]]


def test_max_batch_one_computes_each_query_alone_in_order():
    fn = Recorder(hold_first=False)
    with QueryBatcher(fn, max_batch=1, max_wait_s=0.5) as batcher:
        futures = [batcher.submit(i) for i in range(5)]
        assert [f.result(10) for f in futures] == [0, 1, 4, 9, 16]
    assert fn.batches == [[0], [1], [2], [3], [4]]


def test_an_error_fails_its_batch_and_the_worker_goes_on():
    calls = []

    def fn(items):
        calls.append(items)
        if 13 in items:
            raise ValueError("unlucky")
        return items

    with QueryBatcher(fn, max_batch=1) as batcher:
        bad = batcher.submit(13)
        with pytest.raises(ValueError, match="unlucky"):
            bad.result(10)
        assert batcher.submit(7).result(10) == 7


def test_a_wrong_number_of_results_is_an_error():
    with QueryBatcher(lambda items: items[:-1], max_batch=2, max_wait_s=0.2) as batcher:
        futures = [batcher.submit(1), batcher.submit(2)]
        for future in futures:
            with pytest.raises(RuntimeError, match="returned 1 results for 2 queries"):
                future.result(10)


def test_too_many_waiting_queries_are_refused_and_close_stops_it():
    fn = Recorder()
    batcher = QueryBatcher(fn, max_batch=2, max_wait_s=0.0, max_pending=3)
    try:
        batcher.submit(0)
        assert fn.started.wait(10)
        waiting = [batcher.submit(i) for i in (1, 2, 3)]
        with pytest.raises(QueueFullError, match="3 queries are waiting already"):
            batcher.submit(4)
        fn.release.set()
        assert [f.result(10) for f in waiting] == [1, 4, 9]
    finally:
        fn.release.set()
        batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(5)
    assert not batcher._thread.is_alive()


def test_cancelled_queries_are_skipped():
    fn = Recorder()
    with QueryBatcher(fn, max_batch=4, max_wait_s=0.0) as batcher:
        batcher.submit(1)
        assert fn.started.wait(10)
        keep, drop = batcher.submit(2), batcher.submit(3)
        assert drop.cancel()
        fn.release.set()
        assert keep.result(10) == 4
    assert fn.batches == [[1], [2]]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_batch": 0}, "max_batch"),
        ({"max_wait_s": -1}, "max_wait_s"),
        ({"max_pending": 0}, "max_pending"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QueryBatcher(lambda items: items, **kwargs)
