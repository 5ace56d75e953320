"""The train order: which sample sits at each global position, a function of the seed, the epoch and the position.

    order = GlobalOrder(counts, seed=0, window=10_000)    # counts[i]: samples of shard i the stream trains on
    epochs, shards, members = order.locate(np.arange(s * G, (s + 1) * G))   # global step s's samples

Global step `s` trains on positions `[s·G, (s+1)·G)` (G = `train.global_batch`); position `p` lies in epoch
`p // E` (E = `order.epoch_size`) at place `p % E`. Nothing here knows how many processes, loader workers,
micro-batches or accumulation steps read those positions, so every cluster shape trains on the same samples in
the same global batches, and a resume on any shape continues exactly where the last step ended: each epoch is
a permutation of the split, whatever happened between.

Each epoch: a seeded permutation of the shards, cut into windows of whole shards that hold at least `window`
samples (`data.shuffle_buffer`); within a window, a seeded uniform permutation of its samples. So a stretch of
training reads from the few shards of one window at a time (files stay hot in the page cache, a remote shard is
fetched once) while any two samples of a window are equally likely neighbours. `window <= 1` keeps the stored
order (shards in order, samples in order), as a shuffle buffer of 1 did.

Memory: the shard permutation and window bounds (a few ints per shard) and the permutation of the windows in
use (8 bytes per sample of a window: 80 KB at the default 10,000).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ssl_vit.errors import DataError

_SHARDS, _WINDOW = 0x5A4D, 0x57494E  # tags that keep the two kinds of permutation's seeds apart


@dataclass(frozen=True)
class _Epoch:
    shards: np.ndarray  # (N,) shard numbers in this epoch's order
    window_starts: np.ndarray  # (W+1,) position in the epoch where each window starts, then the epoch size
    window_shards: np.ndarray  # (W+1,) index into `shards` where each window's shards start, then N


class GlobalOrder:
    """See the module's docstring. `counts[i]` is how many samples of shard i the stream trains on (after a
    holdout); the order addresses them as shard i's 0 … counts[i]−1."""

    def __init__(self, counts: Sequence[int], *, seed: int, window: int) -> None:
        self.counts = np.asarray(counts, dtype=np.int64)  # (N,)
        self.seed, self.window = int(seed), int(window)
        self.epoch_size = int(self.counts.sum())
        if self.epoch_size <= 0:
            raise DataError("the training split holds no sample to train on (every shard is empty, or the holdout "
                            "keeps none)")
        self._epochs: OrderedDict[int, _Epoch] = OrderedDict()
        self._windows: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(epoch, shard, member) of each global position: `member` counts the shard's trained-on samples."""
        positions = np.asarray(positions, dtype=np.int64)
        epochs, places = np.divmod(positions, self.epoch_size)
        shards, members = np.empty_like(positions), np.empty_like(positions)
        for e in np.unique(epochs):
            mine = epochs == e
            shards[mine], members[mine] = self._locate_in_epoch(int(e), places[mine])
        return epochs, shards, members

    def _locate_in_epoch(self, epoch: int, places: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        plan = self._epoch(epoch)
        windows = np.searchsorted(plan.window_starts, places, side="right") - 1  # (n,)
        shards, members = np.empty_like(places), np.empty_like(places)
        for w in np.unique(windows):
            mine = windows == w
            first, last = plan.window_shards[w], plan.window_shards[w + 1]
            in_window = plan.shards[first:last]  # the window's shards, in the epoch's order
            bounds = np.concatenate(([0], np.cumsum(self.counts[in_window])))  # (k+1,)
            drawn = self._window(epoch, int(w), int(bounds[-1]))[places[mine] - plan.window_starts[w]]
            which = np.searchsorted(bounds, drawn, side="right") - 1
            shards[mine], members[mine] = in_window[which], drawn - bounds[which]
        return shards, members

    def _epoch(self, epoch: int) -> _Epoch:
        plan = self._epochs.get(epoch)
        if plan is None:
            n = len(self.counts)
            shards = (np.random.default_rng([self.seed, epoch, _SHARDS]).permutation(n) if self.window > 1
                      else np.arange(n))
            starts, firsts, total, held = [0], [0], 0, 0
            for i, count in enumerate(self.counts[shards]):
                total, held = total + int(count), held + int(count)
                if held >= max(self.window, 1) and i + 1 < n:  # this window holds enough: the next starts
                    starts.append(total)
                    firsts.append(i + 1)
                    held = 0
            starts.append(total)
            firsts.append(n)
            plan = _Epoch(shards, np.asarray(starts, dtype=np.int64), np.asarray(firsts, dtype=np.int64))
            self._epochs[epoch] = plan
            _bound(self._epochs, 2)
        return plan

    def _window(self, epoch: int, window: int, size: int) -> np.ndarray:
        """The permutation of window `window`'s `size` samples (the identity without shuffling)."""
        drawn = self._windows.get((epoch, window))
        if drawn is None:
            drawn = (np.random.default_rng([self.seed, epoch, window, _WINDOW]).permutation(size) if self.window > 1
                     else np.arange(size, dtype=np.int64))
            self._windows[(epoch, window)] = drawn
            _bound(self._windows, 3)
        return drawn


def _bound(cache: OrderedDict, size: int) -> None:
    while len(cache) > size:
        cache.popitem(last=False)
