"""Ending a DataLoader's worker processes, also when one is blocked in a read.

Loader workers ignore stop signals (`stream._ignore_stop_signals`: a launcher or a terminal signals a whole
process group, and the training process must still get batches while it saves its checkpoint). The price: the
SIGTERM that torch's shutdown sends a worker that did not exit in time is ignored too, and so is the one that
Python's `multiprocessing` sends its daemon children at interpreter exit, which then waits for them without a
timeout. A worker blocked in a read that never returns (a hung mount, a stalled download) would keep the
training process from exiting for ever. So:

- `end(iterator)`: torch's graceful shutdown, then SIGKILL for a worker still alive after it;
- `end(iterator, now=True)`: SIGKILL first (the trainer gave up waiting for a batch after a stop request: a
  worker is known to be stuck), then the shutdown, which no longer waits;
- `end_at_exit(iterator)`: registers the iterator so that, should the interpreter exit while it is still open
  (an exception or a second Ctrl-C on the way out), its workers are killed before `multiprocessing` waits for
  them.

Workers only read shards and build batches: killing one loses nothing but its unsent batches.
"""
from __future__ import annotations

import atexit
import multiprocessing.util  # noqa: F401 - its exit hook is registered first, so the one here runs before it
import weakref
from typing import Any

_OPEN: weakref.WeakSet = weakref.WeakSet()  # iterators whose workers may still run


def end(iterator: Any, now: bool = False) -> None:
    """Stop the worker processes of a DataLoader iterator (see the module's docstring); safe to call twice."""
    _OPEN.discard(iterator)
    workers = list(getattr(iterator, "_workers", None) or [])
    if now:
        _forget(iterator)
        _kill(workers)
    if hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    _kill(workers)  # alive after torch's shutdown: blocked, and deaf to its SIGTERM


def end_at_exit(iterator: Any) -> None:
    """Kill `iterator`'s workers at interpreter exit unless `end` was called first."""
    if getattr(iterator, "_workers", None):
        _OPEN.add(iterator)


def _forget(iterator: Any) -> None:
    """Take the workers out of torch's SIGCHLD check, which would otherwise raise 'DataLoader worker killed' in the
    main thread, wherever it is, when they die."""
    if getattr(iterator, "_worker_pids_set", False):
        from torch.utils.data._utils import signal_handling

        signal_handling._remove_worker_pids(id(iterator))
        iterator._worker_pids_set = False


def _kill(workers: list) -> None:
    alive = [w for w in workers if w.is_alive()]
    for worker in alive:
        worker.kill()
    for worker in alive:
        worker.join(timeout=5)


@atexit.register  # registered after multiprocessing's exit hook (torch imported it), so it runs before it
def _end_open_iterators() -> None:
    for iterator in list(_OPEN):
        _forget(iterator)
        _kill(list(getattr(iterator, "_workers", None) or []))
