"""Ordered map over worker processes with a bounded number of batches in flight.

`ProcessPoolExecutor.map` submits every task up front and buffers results without limit; when the
writer is slower than the decoders that holds the whole data set in memory. Here at most
`4 × workers` batches are pending, and results come back in input order, so parallelism never changes
the output. One worker runs in-process (no pool start-up, nothing pickled).
"""
from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from itertools import islice
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def _exit_with_parent(parent: int) -> None:
    """Worker initializer: exit when the parent dies (a SIGKILLed build must not leave idle workers).

    Workers block on a queue whose write end they hold themselves, so they would never see EOF.
    """
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of `size` items (the last shorter), taken lazily: a table's rows are read as their batch comes up."""
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def ordered_map(fn: Callable[[list[T]], list[R]], batches: Iterable[list[T]], workers: int) -> Iterator[R]:
    """Yield `fn(batch)`'s results, flattened, in the order of `batches`."""
    if workers <= 1:
        for batch in batches:
            yield from fn(batch)
        return
    # spawn: no fork of a process that may hold threads (tqdm's monitor) or locks; same on every OS.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_exit_with_parent, initargs=(os.getpid(),))
    try:
        source = iter(batches)
        pending: deque[Future] = deque(pool.submit(fn, b) for b in islice(source, 4 * workers))
        while pending:
            results = pending.popleft().result()
            for batch in islice(source, 1):
                pending.append(pool.submit(fn, batch))
            yield from results
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
