"""The record of which samples each step trained on (`train.record_samples`), and its check (`ssl-vit samples`).

Exactly-once is a claim about data a user cannot see, so it can be recorded and checked. Each rank appends, when a
step is done, one row per position of its micro-batches: (step, position, key hash), the position stored as
−(p+1) when the sample was not read (undecodable, or its shard skipped). Files, in `RUN/samples/`:

    attempt-<id>.json          the attempt: start step, processes, global batch, epoch size (rank 0)
    attempt-<id>-rank<r>.bin   little-endian int64 rows (step, position, key hash): 24 bytes a sample

An attempt is one start of the run (its id, the start time in ns, is the same on every rank); a resume is a new
attempt, so every file is kept, and a step trained by several attempts (a resume redoes the steps after its
checkpoint) counts as the last attempt that trained it. A kill may leave a partial row: it is ignored.

    report = check_run(run_dir)    # per epoch: samples, duplicates, missing; exit status 1 on any in a finished epoch
    first = first_difference(run_a, run_b)   # the first step whose global batch differs as a set of keys
"""
from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..files import append_bytes, atomic_write, make_dir

FOLDER = "samples"
_ROW = np.dtype("<i8")  # three of these a row
_META = re.compile(r"attempt-(\d+)\.json")


class SampleRecorder:
    """One rank's writer for one attempt (see the module's docstring)."""

    def __init__(self, run_dir: Path, *, attempt: int, rank: int, world_size: int, global_batch: int,
                 start: int) -> None:
        self.folder = Path(run_dir) / FOLDER
        self.attempt, self.rank, self.world_size = attempt, rank, world_size
        self.global_batch, self.start = global_batch, start
        self.path = self.folder / f"attempt-{attempt}-rank{rank}.bin"

    def begin(self, epoch_size: int | None) -> None:
        """Before the first step: the folder, and the attempt's description (written by rank 0)."""
        make_dir(self.folder, "the samples record folder")
        if self.rank == 0:
            meta = {"attempt": self.attempt, "start": self.start, "world_size": self.world_size,
                    "global_batch": self.global_batch, "epoch_size": epoch_size}
            atomic_write(self.folder / f"attempt-{self.attempt}.json", json.dumps(meta, indent=1) + "\n")

    def write(self, step: int, batches: list[dict]) -> None:
        """The rows of step `step`: its micro-batches' `positions`, `hashes` and `read` flags."""
        positions = torch.cat([b["positions"] for b in batches]).numpy().astype(np.int64)  # (n,)
        hashes = torch.cat([b["hashes"] for b in batches]).numpy().astype(np.int64)  # (n,)
        read = torch.cat([b["read"] for b in batches]).numpy().astype(bool)  # (n,)
        rows = np.empty((len(positions), 3), dtype=_ROW)  # (n, 3) step, position (−(p+1): not read), key hash
        rows[:, 0], rows[:, 1], rows[:, 2] = step, np.where(read, positions, -positions - 1), hashes
        append_bytes(self.path, rows.tobytes())


@dataclass
class Steps:
    """The rows of a run's record that count: per step, the (position, read, hash) rows of its last attempt."""

    epoch_size: int | None
    global_batch: int
    rows: dict[int, np.ndarray]  # step -> (n, 3) position, read (0/1), key hash
    incomplete: list[int]  # steps whose last attempt did not record every rank


def read_steps(run_dir: Path) -> Steps:
    """The record of `run_dir` (a `UserError` when it has none)."""
    folder = Path(run_dir) / FOLDER
    metas = sorted((int(m.group(1)), p) for p in folder.glob("attempt-*.json") if (m := _META.fullmatch(p.name)))
    if not metas:
        raise UserError(f"{run_dir} has no samples record ({folder}/attempt-*.json): train it with "
                        "train.record_samples=true")
    by_step: dict[int, tuple[int, dict]] = {}  # step -> (attempt, {rank: rows})
    epoch_size, global_batch = None, None
    for attempt, path in metas:  # oldest first: a later attempt's rows replace an earlier one's
        meta = json.loads(path.read_text())
        epoch_size = meta.get("epoch_size") or epoch_size
        global_batch = int(meta["global_batch"])
        for rank in range(int(meta["world_size"])):
            for step, rows in _rank_rows(folder / f"attempt-{attempt}-rank{rank}.bin").items():
                if by_step.get(step, (None,))[0] != attempt:
                    by_step[step] = (attempt, {})
                by_step[step][1][rank] = rows
    worlds = {attempt: int(json.loads(p.read_text())["world_size"]) for attempt, p in metas}
    steps, incomplete = {}, []
    for step in sorted(by_step):
        attempt, ranks = by_step[step]
        if len(ranks) < worlds[attempt]:
            incomplete.append(step)
        steps[step] = np.concatenate([ranks[r] for r in sorted(ranks)])
    return Steps(epoch_size, global_batch or 0, steps, incomplete)


def _rank_rows(path: Path) -> dict[int, np.ndarray]:
    """step -> (n, 3) position, read, hash rows of one rank file (a partial last row, from a kill, dropped)."""
    if not path.is_file():
        return {}
    data = path.read_bytes()
    raw = np.frombuffer(data[: len(data) - len(data) % (3 * _ROW.itemsize)], dtype=_ROW).reshape(-1, 3)  # (n, 3)
    stored = raw[:, 1]
    rows = np.stack([np.where(stored >= 0, stored, -stored - 1), stored >= 0, raw[:, 2]], axis=1)  # (n, 3)
    out: dict[int, list] = defaultdict(list)
    for step in np.unique(raw[:, 0]):
        out[int(step)] = rows[raw[:, 0] == step]  # a step written twice by one attempt cannot happen: one write
    return dict(out)


@dataclass
class EpochCount:
    epoch: int
    samples: int  # distinct keys read
    duplicates: int  # reads beyond the first of a key
    missing: int  # samples of the epoch never read (its size minus `samples`)
    positions: int  # positions of the epoch the record covers
    finished: bool  # every position of the epoch recorded

    def line(self) -> str:
        text = f"epoch {self.epoch}: {self.samples} samples, {self.duplicates} duplicates, {self.missing} missing"
        return text if self.finished else f"{text} (unfinished: {self.positions} positions recorded so far)"


def epoch_counts(steps: Steps) -> list[EpochCount]:
    """Per epoch of the record: distinct keys read, duplicates and missing samples."""
    if not steps.rows:
        return []
    size = steps.epoch_size
    if not size:
        raise UserError("the samples record does not know the epoch size (a URL list without a sample count)")
    rows = np.concatenate(list(steps.rows.values()))  # (n, 3)
    epochs = rows[:, 0] // size
    counts = []
    for epoch in np.unique(epochs):
        mine = rows[epochs == epoch]
        read = mine[mine[:, 1] == 1]
        distinct = len(np.unique(read[:, 2]))
        covered = len(np.unique(mine[:, 0]))
        counts.append(EpochCount(int(epoch), distinct, len(read) - distinct, size - distinct, covered,
                                 covered == size))
    return counts


def first_difference(a: Steps, b: Steps) -> int | None:
    """The first step both records hold whose global batches differ as sets of keys (None: none differs)."""
    for step in sorted(set(a.rows) & set(b.rows)):
        keys_a, keys_b = np.sort(a.rows[step][:, 2]), np.sort(b.rows[step][:, 2])
        if len(keys_a) != len(keys_b) or not np.array_equal(keys_a, keys_b):
            return step
    return None
