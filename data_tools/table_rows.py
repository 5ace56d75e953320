"""The rows of a table source (parquet files, a `datasets` save_to_disk folder) and the seeded order they are packed in.

Pure data and arithmetic, no pyarrow: a `LoadedRow` crosses into the worker processes, which never read tables.

Why not one global shuffle as for folders: a table is read by blocks (a parquet row group, an Arrow record
batch: the smallest unit a reader can fetch), and visiting rows in a global random order would read one block per
row. So the order is shuffled at two levels, both from `--seed`: the blocks are permuted, then consecutive blocks
are gathered into windows of about `WINDOW_BYTES` of image data and the rows of each window are permuted together.
The build holds one window of blocks in memory at a time (`table_source.load_rows`), so memory is bounded by
the window (and the largest block), whatever the size of the table, while every shard still mixes rows from
several places of the input. The order is a pure function of the listing (block sizes, rows, labels) and the
seed, so a resume continues it exactly and `--workers` cannot change it.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

WINDOW_BYTES = 256_000_000  # image bytes whose rows are shuffled together: the build's memory for a table


@dataclass(frozen=True, slots=True)
class Block:
    """One readable unit of one data file: a parquet row group or an Arrow IPC record batch."""

    path: str  # the data file
    number: int  # the row group / record batch within the file
    rows: int
    nbytes: int  # size of its image column (uncompressed), which the window is measured in


@dataclass(frozen=True, slots=True)
class Row:
    """One row: the sample it becomes (`rel` is the json "path" and the key's source) and where its image is."""

    rel: str
    cls: int  # class index; -1 when unlabelled
    class_name: str | None
    block: int  # index into the listing's blocks
    index: int  # row within the block


@dataclass(frozen=True, slots=True)
class LoadedRow:
    """A row with its image bytes, as the workers receive it; `data` is None when the cell holds no image bytes,
    and `missing` then says why (the reason written to NAME_skipped.tsv)."""

    rel: str
    cls: int
    class_name: str | None
    data: bytes | None
    missing: str = ""


def table_order(rows: list[Row], blocks: list[Block], seed: int) -> list[Row]:
    """Blocks in a seeded permutation, each window of them (≥ WINDOW_BYTES, or the last) shuffled by rows.

    `rows` lists every row block by block (the listing's order)."""
    starts, at = [], 0
    for block in blocks:
        starts.append(at)
        at += block.rows
    rng = random.Random(seed)
    visit = list(range(len(blocks)))
    rng.shuffle(visit)
    order: list[Row] = []
    window: list[Row] = []
    size = 0
    for b in visit:
        window += rows[starts[b]:starts[b] + blocks[b].rows]
        size += blocks[b].nbytes
        if size >= WINDOW_BYTES:
            rng.shuffle(window)
            order += window
            window, size = [], 0
    rng.shuffle(window)
    return order + window
