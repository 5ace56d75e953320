"""Preemption signals and host-side agreement between ranks.

A scheduler that preempts a job sends SIGTERM (SLURM can be told to send SIGUSR1 earlier); a person presses
Ctrl-C (SIGINT). The handler only sets a flag: the trainer looks at it at the next step boundary, where all
ranks agree (any rank flagged → all stop) and save a checkpoint together. A second Ctrl-C aborts at once.

Under a launcher (torch's elastic agent, behind `torchrun` and `accelerate launch`) the worker also watches its
parent: a launcher killed by a signal it does not handle (SIGUSR1 by default) would otherwise leave its workers
training as orphans. A launcher that is gone counts as a stop request, so every rank still checkpoints once and
exits. Under `ssl-vit launch` (`supervisor.py`) the worker announces that its handler is in place, so the
supervisor relays signals to it from then on.

The agreement runs over a gloo process group on CPU tensors, so asking "did any rank get a signal?" every step
never waits for the GPU: a NCCL all-reduce would need the flag on the device and a `.item()` to read it.

A failure on one rank (a corrupt shard only it reads) must stop every rank with that rank's error, not leave
the others waiting in the next collective for ever: `raise_on_every_rank` is that exchange, shared by the
trainer's data stream and feature extraction.
"""
from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist

from ..errors import DataError, UserError
from .supervisor import announce_ready

T = TypeVar("T")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
PARENT_GONE = "the launcher's exit"


def launched_by_agent() -> bool:
    """Whether torch's elastic agent (torchrun, accelerate launch) started this process: it sets this variable."""
    return "TORCHELASTIC_RUN_ID" in os.environ


_RECEIVED: list[str] = []  # every stop this process was asked for, by any StopRequest, in order


def stops_received() -> tuple[str, ...]:
    """Every stop signal (or PARENT_GONE) this process received while training, in order.

    A command that runs other commands in its process (`ssl-vit demo`, `ssl-vit study`) compares it before and
    after a pretraining that returned 0: stopped by a signal, the run saved a checkpoint and must not be
    evaluated as if it had finished.
    """
    return tuple(_RECEIVED)


class StopRequest:
    """Context manager: while active, STOP_SIGNALS set `received` (the signal's name) instead of killing.

    `watch_parent` (default: when launched by torch's elastic agent) also sets `received` when the parent process
    exits, checked every `poll_s` seconds.
    """

    def __init__(self, watch_parent: bool | None = None, poll_s: float = 0.5) -> None:
        self.received: str | None = None
        self._previous: dict[int, object] = {}
        self._watch = launched_by_agent() if watch_parent is None else watch_parent
        self._poll_s = poll_s
        self._done = threading.Event()

    def _handle(self, signum: int, frame) -> None:  # noqa: ANN001 (signal handler signature)
        if signum == signal.SIGINT and self.received == "SIGINT":
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        self.received = signal.Signals(signum).name
        _RECEIVED.append(self.received)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
            announce_ready()
        if self._watch:
            self._done.clear()
            threading.Thread(target=self._watch_parent, args=(os.getppid(),), daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _watch_parent(self, parent: int) -> None:
        while not self._done.wait(self._poll_s):
            if os.getppid() != parent:  # re-parented: the launcher is gone
                if self.received is None:
                    self.received = PARENT_GONE
                    _RECEIVED.append(PARENT_GONE)
                return


class HostAgreement:
    """Boolean any/all across ranks on the host (gloo), without touching the accelerator's stream."""

    def __init__(self) -> None:
        self.group = None
        self.distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if self.distributed and dist.get_backend() != "gloo":
            self.group = dist.new_group(backend="gloo")  # a collective call: every rank constructs one

    def any(self, flag: bool) -> bool:
        return self.any_each(flag)[0]

    def any_each(self, *flags: bool) -> tuple[bool, ...]:
        """Several `any`s in one exchange (the trainer asks "data failed?" and "stop?" together, once per batch)."""
        if not self.distributed:
            return tuple(bool(flag) for flag in flags)
        value = torch.tensor([int(bool(flag)) for flag in flags], dtype=torch.int32)
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.group)
        return tuple(bool(v) for v in value.tolist())

    def gather(self, obj: object) -> list:
        """Every rank's picklable `obj`, in rank order; for rare paths, such as sharing one rank's error message."""
        if not self.distributed:
            return [obj]
        out: list = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def gather_to_main(self, obj: object) -> list | None:
        """Every rank's picklable `obj`, in rank order, on rank 0 (None on the others)."""
        if not self.distributed:
            return [obj]
        out: list | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
        dist.gather_object(obj, out, dst=0, group=self.group)
        return out

    def all(self, flag: bool) -> bool:
        return not self.any(not flag)

    def close(self) -> None:
        if self.group is not None:
            dist.destroy_process_group(self.group)
            self.group = None


def raise_on_every_rank(failure: Exception | None, gather: Callable[[object], list], what: str) -> None:
    """Raise `failure` here and a failure on every other rank, when any rank failed; collective.

    `gather(obj)` returns every rank's `obj` in rank order (`HostAgreement.gather`, or Accelerate's
    `gather_object` for a list of one). The failing rank re-raises its own exception, with its traceback; the
    others raise its one-line message: a `DataError` for a user error (the same one line on every rank), else
    a RuntimeError naming `what` and the rank.
    """
    reports = gather(None if failure is None else (isinstance(failure, UserError), str(failure)))
    if failure is not None:
        raise failure
    for rank, report in enumerate(reports):
        if report is not None:
            user_error, message = report
            if user_error:
                raise DataError(message)
            raise RuntimeError(f"{what} failed on rank {rank} ({message}); its traceback shows where")


def together(agreement: HostAgreement, fn: Callable[[], T], what: str, *, main_only: bool = False) -> T:
    """`fn()` on every rank (or on rank 0 only, its result then handed to every rank); collective. A failure on
    any rank is raised on every rank (`raise_on_every_rank`), so no rank goes on into collectives alone."""
    result, failure = None, None
    if not main_only or not agreement.distributed or dist.get_rank() == 0:
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 — re-raised by raise_on_every_rank, here and on the others
            failure = err
    raise_on_every_rank(failure, agreement.gather, what)
    return agreement.gather(result)[0] if main_only else result
