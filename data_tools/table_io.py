"""Reading tables block by block with pyarrow: parquet row groups and Arrow IPC record batches behind one interface.

Nothing here reads a whole table: the listing (`scan`) reads only the label column and the image's `path` field of
one block at a time, and the build (`image_cells`) reads one block's image column when its rows come up. Arrow IPC
files (what `save_to_disk` writes: IPC streams, one record batch per 1000 or 100 rows) are memory-mapped, so
stepping over the batches before the wanted one costs no reading of their data; each read copies what it needs
into Python objects and unmaps the file again, so pages of the mapping do not pile up in the process.

pyarrow is optional (`pip install 'ssl_vit[parquet]'`): `require_pyarrow` turns its absence into one line.
APIs used, all in pyarrow 10.0.1 (the oldest with wheels for Python 3.11; the tests pass with it and NumPy 1.26),
though the floor in pyproject.toml is 16, the first release that imports with NumPy 2:
`ParquetFile` on an `OSFile` with `read_row_group(columns=["image.path"])` (a nested field by its dotted path),
`metadata.row_group(i).column(j).path_in_schema / total_uncompressed_size`, `memory_map`, `ipc.open_stream`,
`StructArray.flatten`.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from .errors import DataToolsError
from .table_files import PARQUET


def require_pyarrow(kind: str):
    """The pyarrow module, or the one line that says how to get it."""
    what = "parquet" if kind == PARQUET else "a datasets save_to_disk folder"
    try:
        import pyarrow
        import pyarrow.ipc
        import pyarrow.parquet  # the submodules used below: each can fail on its own
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] != "pyarrow":
            raise DataToolsError(f"reading {what}: pyarrow is installed but does not import ({err}); "
                                 "pip install -U 'ssl_vit[parquet]'") from None
        raise DataToolsError(f"reading {what} needs pyarrow: pip install 'ssl_vit[parquet]'") from None
    except ImportError as err:  # e.g. a pyarrow older than 16 with NumPy 2: "numpy.core.multiarray failed to import"
        raise DataToolsError(f"reading {what}: pyarrow is installed but does not import ({err}); "
                             "pip install -U 'ssl_vit[parquet]'") from None
    return pyarrow


@contextlib.contextmanager
def reading(path: Path, what: str = "") -> Iterator[None]:
    """pyarrow's errors (a damaged or foreign file) as one line naming the file."""
    import pyarrow as pa

    try:
        yield
    except (pa.ArrowException, OSError) as err:
        where = f"{path}" + (f" ({what})" if what else "")
        said = (str(err).splitlines() or [type(err).__name__])[0].rstrip(".")
        raise DataToolsError(f"cannot read {where}: {said}; the file may be damaged or incomplete: check it or "
                             "fetch it again") from None


class TableFile:
    """One data file: its schema and blocks, read a few columns at a time."""

    def __init__(self, path: Path, kind: str):
        self.path, self.kind = path, kind

    def schema(self):
        with self._open() as opened:
            return opened.schema

    def scan(self, image: str, label: str | None, with_paths: bool) -> Iterator[tuple[int, int, list, list]]:
        """Per block: (rows, image column bytes, labels or [], image paths or [])."""
        with self._open() as opened:
            yield from opened.scan(image, label, with_paths)

    def image_cells(self, number: int, image: str) -> list[tuple[bytes | None, str]]:
        """Block `number`'s images: (bytes, "") or (None, why there are none) per row."""
        with self._open(f"{'row group' if self.kind == PARQUET else 'record batch'} {number}") as opened:
            return _cells(opened.column(number, image))

    @contextlib.contextmanager
    def _open(self, what: str = ""):
        import pyarrow as pa

        with reading(self.path, what):
            if self.kind == PARQUET:
                with pa.OSFile(str(self.path)) as f:
                    yield _Parquet(f)
            else:
                with pa.memory_map(str(self.path)) as source:
                    yield _Ipc(source)


class _Parquet:
    def __init__(self, f):
        import pyarrow.parquet as pq

        self.file = pq.ParquetFile(f)
        self.schema = self.file.schema_arrow

    def scan(self, image: str, label: str | None, with_paths: bool):
        meta = self.file.metadata
        columns = ([label] if label else []) + ([f"{image}.path"] if with_paths else [])
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            nbytes = sum(group.column(j).total_uncompressed_size for j in range(group.num_columns)
                         if group.column(j).path_in_schema.split(".")[0] == image)
            table = self.file.read_row_group(g, columns=columns) if columns else None
            labels = table.column(label).to_pylist() if label else []
            paths = _child(table.column(image), "path") if with_paths else []
            yield group.num_rows, nbytes, labels, paths

    def column(self, number: int, image: str):
        return self.file.read_row_group(number, columns=[image]).column(image)


class _Ipc:
    """An Arrow IPC stream, as `datasets`' ArrowWriter writes every `data-0000k-of-0000n.arrow`."""

    def __init__(self, source):
        import pyarrow as pa

        self.reader = pa.ipc.open_stream(source)
        self.schema = self.reader.schema

    def scan(self, image: str, label: str | None, with_paths: bool):
        for batch in self.reader:
            column = batch.column(batch.schema.get_field_index(image))
            labels = batch.column(batch.schema.get_field_index(label)).to_pylist() if label else []
            yield batch.num_rows, column.nbytes, labels, _child(column, "path") if with_paths else []

    def column(self, number: int, image: str):
        for k, batch in enumerate(self.reader):
            if k == number:
                return batch.column(batch.schema.get_field_index(image))
        raise DataToolsError(f"record batch {number} is missing: the file changed since it was listed; rerun "
                             "with --overwrite")


def _chunks(column) -> list:
    return list(column.chunks) if hasattr(column, "chunks") else [column]


def _child(column, name: str) -> list:
    """A struct column's field `name` as a Python list (None where the struct itself is null)."""
    out: list = []
    for chunk in _chunks(column):
        out += chunk.flatten()[chunk.type.get_field_index(name)].to_pylist()
    return out


def _cells(column) -> list[tuple[bytes | None, str]]:
    import pyarrow as pa

    cells: list[tuple[bytes | None, str]] = []
    for chunk in _chunks(column):
        if pa.types.is_struct(chunk.type):
            fields = chunk.flatten()
            data = fields[chunk.type.get_field_index("bytes")].to_pylist()
            at = chunk.type.get_field_index("path")
            paths = fields[at].to_pylist() if at >= 0 else [None] * len(data)
        else:
            data, paths = chunk.to_pylist(), [None] * len(chunk)
        for value, path in zip(data, paths):
            if value is not None:
                cells.append((value, ""))
            elif path:
                reason = (f"no image bytes in the row, only a path ({path}), which is not read: save the dataset "
                          "with its images embedded (save_to_disk and push_to_hub embed them, to_parquet does not)")
                cells.append((None, reason))
            else:
                cells.append((None, "no image (the image cell is empty)"))
    return cells
