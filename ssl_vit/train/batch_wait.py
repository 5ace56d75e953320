"""The trainer's wait for its next batch, which a stop request can end.

The next batch comes from a loader worker that may be blocked in a read (a slow or hung file system, a stalled
download), or with `data.num_workers=0` from this process's own read. A stop signal's handler only sets a flag
(`signals.StopRequest`), and Python runs handlers between the main thread's bytecodes: a main thread blocked in
`next(loader)` would not look at the flag until the read returned, which for a hung mount is never. So `next()`
runs on a helper thread, and the main thread waits for its result in slices of `POLL_S`, looking at the stop
request between them. Once a stop is requested the batch still has `GRACE_S` to arrive, so a loader that is
merely slow keeps the step (and its checkpoint); after that the wait ends without a batch, and the caller gives
the step up (`feed.StoppedWaiting`).

The helper thread calls `next()` only when asked, so batches are drawn exactly as before, one per request.

A wait that lasts `STALL_S` with no stop requested is reported once (`on_stall(seconds)`: the feed names the rank
and its loader workers and prints their stacks, `stall_report.py`), so a loader stuck where no deadline reaches
explains itself instead of leaving a silent job; the wait goes on (a first remote fetch may be slow).
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

POLL_S = 0.1  # how often a waiting main thread looks at the stop request
GRACE_S = 5.0  # how long a batch may still take once a stop is requested
STALL_S = 300.0  # a wait this long, with no stop requested, is reported (once per batch)


class BatchWait:
    """`next(batches)` on a helper thread, waited for until it arrives or a stop request has waited `GRACE_S`."""

    def __init__(self, batches: Iterator, grace_s: float = GRACE_S, stall_s: float = STALL_S,
                 on_stall: Callable[[float], None] | None = None) -> None:
        self.grace_s, self.stall_s, self.on_stall = grace_s, stall_s, on_stall
        self._batches = batches
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pending = False  # a request whose result has not been taken

    def next(self, stop_requested: Callable[[], bool]) -> tuple[bool, Any]:
        """(True, the next batch), or (False, None) when `stop_requested()` has been true for `grace_s` seconds
        and the batch has not come (it is still being waited for; the wait is then given up). What `next()` raises
        is raised here."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="ssl-vit batch wait", daemon=True)
            self._thread.start()
        if not self._pending:
            self._requests.put(True)
            self._pending = True
        stop_seen: float | None = None
        began, reported = time.monotonic(), False
        while True:
            try:
                ok, value = self._results.get(timeout=POLL_S)
            except queue.Empty:
                if stop_seen is None and stop_requested():
                    stop_seen = time.monotonic()
                waited = time.monotonic() - began
                if not reported and stop_seen is None and waited >= self.stall_s and self.on_stall is not None:
                    reported = True
                    self.on_stall(waited)
                if stop_seen is not None and time.monotonic() - stop_seen >= self.grace_s:
                    return False, None
                continue
            self._pending = False
            if ok:
                return True, value
            raise value

    def close(self) -> None:
        """End the helper thread once its current `next()` returns (at once when it is idle)."""
        if self._thread is not None:
            self._requests.put(False)
            if not self._pending:
                self._thread.join(timeout=5)
        self._thread = None

    def _serve(self) -> None:
        while self._requests.get():
            try:
                result = (True, next(self._batches))
            except BaseException as err:  # noqa: BLE001 - handed to the waiting thread, which raises it
                result = (False, err)
            self._results.put(result)
