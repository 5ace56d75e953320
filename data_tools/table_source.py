"""A table SRC (parquet files, a `datasets` save_to_disk folder) → the same `Inputs` as a folder, and its rows' bytes.

The listing reads only labels and image paths, block by block (`table_io.TableFile.scan`); each row becomes a
`Row` with its label, its place (block, index) and its `rel`, the json "path" its key is hashed from
(`samples.sample_key`, so keys follow the folder rules: stable, unique, no dots):

* the image's own `path` field (`datasets` keeps the file name an image came from) when every row has one and
  no two rows share it: stable however the table is split into files or row groups;
* else `FILE:ROW`, the data file's name and the row's index in it (stable for the same files).

Labels: a ClassLabel column's names in their own order (label k of the data stays cls k; -1 or null is "no
label": cls -1), else the label values as text in natural order ("2" before "10"), as for folders; a null is
unlabelled. The build then takes the rows in `table_rows.table_order` and `load_rows` reads each block's image
column when its first row comes up and drops it after its last, so the memory held is one shuffle window.
"""
from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import DataToolsError
from .hf_features import class_label_names, features_from_metadata
from .sources import Inputs, natural_key
from .table_columns import choose_image, choose_label, holds_images, holds_labels
from .table_files import DATASETS, data_files, saved_features
from .table_io import TableFile, require_pyarrow
from .table_rows import Block, LoadedRow, Row, table_order


@dataclass(frozen=True)
class TableLayout:
    """Where the rows' images are: the blocks in listing order and the image column."""

    kind: str
    image: str
    blocks: list[Block]

    def order(self, rows: list[Row], seed: int) -> list[Row]:
        return table_order(rows, self.blocks, seed)

    def load(self, rows: Sequence[Row]) -> Iterator[LoadedRow]:
        """`rows` with their image bytes, in their order; a block is read when first needed, dropped after its
        last row (in `table_order`'s order, one window of blocks at a time)."""
        remaining = Counter(r.block for r in rows)
        held: dict[int, list[tuple[bytes | None, str]]] = {}
        for row in rows:  # (no local name keeps a block alive past its last row)
            if row.block not in held:
                held[row.block] = self._read(row.block)
            data, missing = held[row.block][row.index]
            remaining[row.block] -= 1
            if not remaining[row.block]:
                del held[row.block]
            yield LoadedRow(row.rel, row.cls, row.class_name, data, missing)

    def _read(self, b: int) -> list[tuple[bytes | None, str]]:
        block = self.blocks[b]
        cells = TableFile(Path(block.path), self.kind).image_cells(block.number, self.image)
        if len(cells) != block.rows:
            raise DataToolsError(f"{block.path} changed since it was listed (block {block.number} has {len(cells)} "
                                 f"rows, not {block.rows}); rerun with --overwrite")
        return cells


def collect_table(src: Path, kind: str, *, split: str, labels: str, image_column: str | None = None,
                  label_column: str | None = None) -> tuple[Inputs, TableLayout]:
    require_pyarrow(kind)
    files = data_files(src, kind, split)
    if not files:
        raise DataToolsError(f"{src} holds no parquet files")
    tables = [TableFile(p, kind) for p in files]
    schema = tables[0].schema()
    features = (saved_features(src) if kind == DATASETS else None) or features_from_metadata(schema.metadata)
    where = str(src)
    image = choose_image(schema, features, image_column, where)
    label = choose_label(schema, features, label_column, image, where) if labels != "none" else None
    names = class_label_names(features, label) if label else None
    for table in tables[1:]:
        _check_like_first(table, image, label, names, files[0])
    with_paths = _has_path(schema.field(image).type)
    h = hashlib.sha256(f"{kind}\t{image}\t{label}\n".encode())  # the inputs' digest: a resume refuses others
    blocks, values, paths, spans = _scan(tables, image, label, with_paths, h)
    if not values:
        raise DataToolsError(f"{src} holds no rows to pack")
    rels = paths if with_paths and _unique_names(paths) else [f"{rel}:{i}" for rel, n in spans for i in range(n)]
    class_names, row_names = _labels(values, names, label, spans)
    index = {name: i for i, name in enumerate(class_names)}
    rows, at = [], 0
    for b, block in enumerate(blocks):
        for i in range(block.rows):
            name = row_names[at]
            rows.append(Row(rels[at], index[name] if name is not None else -1, name, b, i))
            h.update(f"{rels[at]}\t{name}\n".encode("utf-8", "surrogateescape"))
            at += 1
    return Inputs(rows, class_names, [], h.hexdigest()), TableLayout(kind, image, blocks)


def _scan(tables: list[TableFile], image: str, label: str | None, with_paths: bool, h) -> tuple[list, list, list, list]:
    """Every block of every file: (blocks, label value per row (None without labels), image path per row (when the
    image struct has paths), (file name, rows) per file); each file's name, size and mtime go into the digest `h`."""
    blocks: list[Block] = []
    values: list = []
    paths: list = []
    spans: list[tuple[str, int]] = []
    for table in tables:
        rel = table.path.name  # a parquet folder's files are those of its top level
        st = os.stat(table.path)
        h.update(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        in_file = 0
        for number, (rows, nbytes, block_labels, block_paths) in enumerate(table.scan(image, label, with_paths)):
            blocks.append(Block(str(table.path), number, rows, nbytes))
            values += block_labels if label else [None] * rows
            paths += block_paths
            in_file += rows
        spans.append((rel, in_file))
    return blocks, values, paths, spans


def _has_path(t) -> bool:
    import pyarrow as pa

    return pa.types.is_struct(t) and t.get_field_index("path") >= 0 and pa.types.is_string(t.field("path").type)


def _unique_names(paths: list) -> bool:
    return all(isinstance(p, str) and p for p in paths) and len(set(paths)) == len(paths)


def _check_like_first(table: TableFile, image: str, label: str | None, names: list[str] | None, first: Path) -> None:
    """Every data file must hold the chosen columns, usable, with the same ClassLabel names as the first."""
    schema = table.schema()
    for column, fits in ((image, holds_images), (label, holds_labels)):
        if column is not None and (schema.get_field_index(column) < 0 or not fits(schema.field(column).type)):
            found = schema.field(column).type if schema.get_field_index(column) >= 0 else "nothing"
            raise DataToolsError(f"{table.path}: column '{column}' holds {found}, unlike {first.name}; the data files "
                                 "of one SRC must share their columns")
    if label is not None and names is not None:
        theirs = class_label_names(features_from_metadata(schema.metadata), label)
        if theirs is not None and theirs != names:
            raise DataToolsError(f"{table.path}: the ClassLabel names of '{label}' differ from those of {first.name}; "
                                 "the data files of one SRC must share one class list")


def _labels(values: list, names: list[str] | None, label: str | None,
            spans: list[tuple[str, int]]) -> tuple[list[str], list[str | None]]:
    """(class names, each row's class name or None)."""
    if label is None:
        return [], [None] * len(values)
    if names is not None:
        if len(set(names)) != len(names):
            repeated = next(n for n, c in Counter(names).items() if c > 1)
            raise DataToolsError(f"the ClassLabel names of column '{label}' repeat {repeated!r}: a class name "
                                 "must say one class")
        row_names: list[str | None] = []
        for at, v in enumerate(values):
            if v is None or v == -1:
                row_names.append(None)
            elif isinstance(v, int) and 0 <= v < len(names):
                row_names.append(names[v])
            else:
                raise DataToolsError(f"{_place(spans, at)}: label {v!r} is not one of the {len(names)} ClassLabel names of "
                                     f"column '{label}' (0 … {len(names) - 1}, or -1 for none)")
        return names, row_names
    row_names = [None if v is None else str(v) for v in values]
    return sorted({n for n in row_names if n is not None}, key=natural_key), row_names


def _place(spans: list[tuple[str, int]], at: int) -> str:
    """`FILE row N` of the row at position `at` of the listing."""
    for rel, rows in spans:
        if at < rows:
            return f"{rel} row {at}"
        at -= rows
    return f"row {at}"
