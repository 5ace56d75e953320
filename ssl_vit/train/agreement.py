"""Host-side agreement between the ranks of a run, shared by training and evaluation.

The agreement runs over a gloo process group on CPU tensors, so asking "did any rank get a signal?" every step
never waits for the GPU: a NCCL all-reduce would need the flag on the device and a `.item()` to read it.

A failure on one rank (a corrupt shard only it reads) must stop every rank with that rank's error, not leave
the others waiting in the next collective for ever: `raise_on_every_rank` is that exchange, shared by the
trainer's data stream and feature extraction, and `together` runs a step on every rank (or on rank 0) under it.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist

from ..errors import DataError, UserError

T = TypeVar("T")


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
