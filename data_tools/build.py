"""Build one split: inputs → shuffled order → samples (in parallel, in order) → shards → _info.json.

The output is a pure function of the input files and the options: the walk is sorted, the order is a
seeded shuffle, each sample's bytes are decided on their own (pass-through or deterministic
re-encoding), and the packer closes a shard exactly when the next sample would push it past
`shard_size` or `max_count`. So `--workers` cannot change a byte, a rebuild is byte-identical, and an
interrupted build resumes from its last finished shard to the same result (see progress.py). A table SRC
(parquet, a `datasets` save_to_disk folder: table_source.py) lists its rows instead of files, is ordered by a
seeded shuffle of blocks and windows (table_rows.py: a table is read by blocks, never whole) and hands each row
to the workers with its image bytes; the rest is the same.
"""
from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from .errors import DataToolsError
from .files import make_dir
from .info import INFO_NAME, read_info, set_split, split_entry
from .layout import clear_split, remove_stale, shard_name, skipped_path, split_files, write_skipped
from .options import BuildOptions, describe_differences, parse_size
from .parallel import batched, ordered_map
from .progress import Progress, ShardRecord, intact_prefix, load_progress, progress_path, save_progress
from .progress_bar import progress_bar
from .samples import Sample, Skipped, make_samples
from .sources import Inputs, collect, is_list_file, shuffled
from .table_files import TABLE_KINDS, table_kind
from .tarwriter import ShardWriter, archive_size, sample_size

if TYPE_CHECKING:
    from .table_source import TableLayout

BATCH = 32  # files per worker task: amortises the inter-process round trip over many small files


@dataclass
class BuildSummary:
    split: str
    out: Path
    written: int  # samples in the split's shards
    skipped: int  # inputs listed in NAME_skipped.tsv
    shards: int
    bytes: int  # total size of the split's shards
    seconds: float  # wall time of this call
    resumed_shards: int = 0  # finished shards an interrupted build left and this call kept
    up_to_date: bool = False  # the split was already complete: nothing was done
    reencoded: int = 0  # samples re-encoded in this call (the rest were passed through byte for byte)

    @property
    def skipped_file(self) -> Path:
        return skipped_path(self.out, self.split)

    def line(self) -> str:
        if self.up_to_date:
            return (f"{self.split}: already complete in {self.out} ({self.written} samples, {self.shards} shards); "
                    "nothing to do (--overwrite rebuilds it, `ssl-vit-shards verify` checks it)")
        skipped = f"{self.skipped} skipped" + (f" (listed in {self.skipped_file})" if self.skipped else "")
        resumed = f", resumed after {self.resumed_shards} finished shards" if self.resumed_shards else ""
        return (f"{self.split}: {self.written} written, {skipped}, {self.shards} shards, "
                f"{self.bytes / 1e6:.1f} MB, {self.seconds:.1f} s{resumed}")


def build_split(
    src: str | Path | None,
    out: str | Path,
    split: str,
    *,
    labels: str = "folder",
    list_file: str | Path | None = None,
    seed: int = 0,
    shard_size: int | str = 256_000_000,
    max_count: int | None = None,
    resize_shorter: int | None = None,
    quality: int = 95,
    workers: int = 1,
    overwrite: bool = False,
    follow_symlinks: bool = False,
    check: str = "header",
    max_pixels: int | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    progress: bool = True,
) -> BuildSummary:
    """Write `out/<split>-NNNNNN.tar` shards and the split's `_info.json` entry from a folder, list or table.

    `src` is an image folder (`labels="folder"`: `src/<class>/.../<image>`; `"none"`: any tree, cls -1),
    a .csv/.tsv list with `path` and `label` columns, or a table (table_files.py: a parquet file, a folder of
    them, a `datasets` save_to_disk folder; one sample per row, `image_column` / `label_column` when they cannot
    be found; needs pyarrow); `list_file` is the other way to give the list (then `src` is None). `max_pixels`
    caps width × height of any image (None: Pillow's bomb limit); larger ones are skipped before they are
    decoded. Raises `DataToolsError` for anything the user must fix.

    `workers > 1` starts processes with the "spawn" method, which re-imports the calling script: call
    this from under `if __name__ == "__main__":` in scripts.
    """
    started = time.perf_counter()
    src = _source_path(src, list_file)
    out = Path(out)
    kind = table_kind(src) if list_file is None else None
    opts = BuildOptions(
        split=split, source=kind or ("list" if src.is_file() else "folder"), labels=labels, seed=seed,
        shard_size=parse_size(shard_size), max_count=max_count, resize_shorter=resize_shorter,
        quality=quality, check=check, follow_symlinks=follow_symlinks, max_pixels=max_pixels,
        image_column=image_column, label_column=label_column)
    opts.validate()
    if workers < 1:
        raise DataToolsError(f"--workers must be at least 1, got {workers}")
    if out.exists() and not out.is_dir():
        raise DataToolsError(f"OUT {out} exists and is not a folder; give a folder for the shards")
    if opts.source == "folder" and out.resolve().is_relative_to(src.resolve()):
        raise DataToolsError(f"OUT {out} is inside SRC {src}; the shards would become inputs. Choose another OUT")
    inputs, table = _collect(src, opts)
    make_dir(out)
    if overwrite:
        clear_split(out, split)

    record = _resume_record(out, src, opts, inputs)
    inputs = _labelling(out, split, inputs, record)
    if record.complete:
        entry = _entry(opts, record, inputs)
        if read_info(out)["splits"].get(split) != entry:  # e.g. _info.json deleted since: restore the entry
            set_split(out, entry)
        return _summary(opts, out, record, inputs, started, up_to_date=True)
    kept = len(record.shards)
    remove_stale(out, split, keep=kept)
    if kept and progress:
        tqdm.write(f"{split}: resuming after {kept} finished shards "
                   f"({sum(s.count for s in record.shards)} samples)", file=sys.stderr)

    order = shuffled(inputs.sources, seed) if table is None else table.order(inputs.sources, seed)
    reencoded = _write_shards(out, opts, record, order, workers, progress,
                              load=(lambda rows: rows) if table is None else table.load)
    write_skipped(out, split, inputs.skipped + [(rel, reason) for _, rel, reason in record.skipped])
    if not record.shards:
        progress_path(out, split).unlink(missing_ok=True)
        raise DataToolsError(f"no usable image in {src}: all {len(inputs.skipped) + len(record.skipped)} "
                             f"{'rows' if table is not None else 'files'} were skipped; the reasons are in "
                             f"{skipped_path(out, split)}")
    set_split(out, _entry(opts, record, inputs))
    record.complete = True
    save_progress(out, split, record)
    summary = _summary(opts, out, record, inputs, started, up_to_date=False)
    summary.resumed_shards, summary.reencoded = kept, reencoded
    return summary


def _collect(src: Path, opts: BuildOptions) -> tuple[Inputs, TableLayout | None]:
    """The inputs, and for a table where its rows' images are (pyarrow is imported only for tables)."""
    if opts.source in TABLE_KINDS:
        from .table_source import collect_table

        return collect_table(src, opts.source, split=opts.split, labels=opts.labels, image_column=opts.image_column,
                             label_column=opts.label_column)
    return collect(src, labels=opts.labels, follow_symlinks=opts.follow_symlinks), None


def _source_path(src: str | Path | None, list_file: str | Path | None) -> Path:
    if list_file is not None:
        if src is not None:
            raise DataToolsError("give the file list either as SRC or with --list, not both")
        list_file = Path(list_file)
        if not is_list_file(list_file):
            raise DataToolsError(f"--list {list_file} is not an existing .csv or .tsv file")
        return list_file
    if src is None:
        raise DataToolsError("no input: give SRC (an image folder, a .csv/.tsv list, parquet files or a datasets "
                             "save_to_disk folder) or --list FILE")
    return Path(src)


def _labelling(out: Path, split: str, inputs: Inputs, record: Progress) -> Inputs:
    """The inputs labelled with the class list this build writes: for a split already (partly) written, the
    list its shards hold — a resume or rerun must not renumber them —, else the shared list of the OUT."""
    if not inputs.class_names:
        return inputs
    if record.shards or record.complete:
        written = record.class_names or _list_of_older_versions(out, split, inputs)
    else:
        written = _shared_class_names(out, split, inputs)
    record.class_names = list(written)
    return inputs.with_class_names(written)


def _list_of_older_versions(out: Path, split: str, inputs: Inputs) -> list[str]:
    """A record without a class list comes from a version that sorted class names as text and shared nothing:
    the split's `_info.json` entry says which list its shards hold, or else that order does."""
    entry = read_info(out)["splits"].get(split) or {}
    names = entry.get("class_names")
    return list(names) if names and set(names) >= set(inputs.class_names) else sorted(inputs.class_names)


def _shared_class_names(out: Path, split: str, inputs: Inputs) -> list[str]:
    """Label k must be the same class in every split of one OUT, or train and test disagree silently (a test
    folder missing one class would shift every later index). So a labelled split built next to others takes
    their class list; a class that list lacks is an error, since the other split's labels are already written."""
    others = {name: entry["class_names"] for name, entry in sorted(read_info(out)["splits"].items())
              if name != split and entry.get("class_names")}
    if not others:
        return inputs.class_names
    other, names = next(iter(others.items()))
    known = set(names)
    missing = [name for name in inputs.class_names if name not in known]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5]) + (f" … ({len(missing)} in all)" if len(missing) > 5 else "")
        raise DataToolsError(
            f"split '{split}' has classes that split '{other}' in {out / INFO_NAME} lacks: {shown}. The splits of "
            f"one OUT share one class list, so a label means the same class in each. Build '{split}' into a new "
            f"OUT first and then '{other}' next to it (a split with fewer classes takes the fuller list), or "
            f"check the class names")
    return list(names)


def _resume_record(out: Path, src: Path, opts: BuildOptions, inputs: Inputs) -> Progress:
    """The progress to continue from: fresh, a resumable prefix, or complete (refusing any mismatch)."""
    split = opts.split
    record = load_progress(out, split)
    if record is None:
        if split_files(out, split) or split in read_info(out)["splits"]:
            raise DataToolsError(
                f"{out} already holds split '{split}' from a build without a progress record "
                f"({progress_path(out, split).name}); rerun with --overwrite to replace it")
        return Progress(options=opts.record(), inputs=inputs.digest)
    if record.options != opts.record():
        raise DataToolsError(
            f"split '{split}' in {out} was {'built' if record.complete else 'started'} with different options "
            f"({describe_differences(record.options, opts.record())}); rerun with the same options to resume "
            "it, or add --overwrite to rebuild it from scratch")
    if record.inputs != inputs.digest:
        raise DataToolsError(
            f"the files in {src} (or their labels) changed since split '{split}' was started in {out}; "
            "rerun with --overwrite to rebuild it from scratch")
    if record.complete and intact_prefix(out, record.shards, hash_files=False) == len(record.shards):
        return record
    # Finished shards are trusted only if their bytes still hash to what was recorded.
    record.shards = record.shards[:intact_prefix(out, record.shards, hash_files=True)]
    record.complete = False
    start = record.shards[-1].next_input if record.shards else 0
    record.skipped = [s for s in record.skipped if s[0] < start]
    return record


def _write_shards(out: Path, opts: BuildOptions, record: Progress, order: list, workers: int, progress: bool,
                  load: Callable[[list], Iterable]) -> int:
    """Pack the inputs after the record's last shard into new shards; returns how many were re-encoded.
    `load` turns the inputs left into what `make_samples` takes: files as they are, table rows with their bytes."""
    start = record.shards[-1].next_input if record.shards else 0
    reencoded = read_bytes = 0
    clock = time.perf_counter()
    writer: ShardWriter | None = None
    bar = progress_bar(total=len(order), initial=start, unit="row" if opts.source in TABLE_KINDS else "file",
                       desc=opts.split, disable=not progress, dynamic_ncols=True, smoothing=0.1)
    work = functools.partial(make_samples, opts=opts)
    results = ordered_map(work, batched(load(order[start:]), BATCH), workers)
    try:
        for index, result in enumerate(results, start):
            read_bytes += result.read_bytes
            if isinstance(result, Skipped):
                record.skipped.append((index, result.rel, result.reason))
            else:
                if writer is not None and _full(writer, result, opts):
                    _close(writer, out, record, next_input=index)
                    writer = None
                if writer is None:
                    writer = ShardWriter(out / shard_name(opts.split, len(record.shards)))
                writer.add(result)
                reencoded += result.reencoded is not None
            bar.update(1)
            if index % BATCH == 0:
                rate = read_bytes / 1e6 / max(time.perf_counter() - clock, 1e-9)
                bar.set_postfix_str(f"{rate:.1f} MB/s", refresh=False)
        if writer is not None:
            _close(writer, out, record, next_input=len(order))
            writer = None
    except OSError as err:  # reading inputs fails per sample (a skip); this is the output side: disk, permissions
        where = writer.tmp if writer is not None else out
        raise DataToolsError(
            f"cannot write to {where}: {err.strerror or err} — {len(record.shards)} finished shards are kept; free "
            "space (or fix the output directory), then rerun the same command to resume from there") from None
    except BrokenProcessPool:
        raise DataToolsError(
            f"a worker process died (out of memory, or a crash inside an image decoder) after {len(record.shards)} "
            "finished shards; rerun the same command to resume, with --workers 1 to see the file at fault") from None
    finally:
        results.close()  # stops the worker pool now, not whenever the generator is collected
        if writer is not None:  # interrupted (Ctrl-C, error): finished shards stay, the partial one goes
            writer.abort()
        bar.close()
    return reencoded


def _full(writer: ShardWriter, sample: Sample, opts: BuildOptions) -> bool:
    """Would adding `sample` break a bound? (A shard always takes at least one sample.)"""
    if opts.max_count is not None and writer.count >= opts.max_count:
        return True
    return archive_size(writer.payload + sample_size(sample)) > opts.shard_size


def _close(writer: ShardWriter, out: Path, record: Progress, next_input: int) -> None:
    sha, size = writer.finish()
    record.shards.append(ShardRecord(writer.final.name, sha, size, writer.count, next_input))
    save_progress(out, record.options["split"], record)


def _entry(opts: BuildOptions, record: Progress, inputs: Inputs) -> dict:
    shards = record.shards
    return split_entry(opts.split, [s.filename for s in shards], [s.count for s in shards],
                       [s.sha256 for s in shards], [s.bytes for s in shards], inputs.class_names)


def _summary(opts: BuildOptions, out: Path, record: Progress, inputs: Inputs, started: float, *,
             up_to_date: bool) -> BuildSummary:
    return BuildSummary(
        split=opts.split, out=out, written=sum(s.count for s in record.shards),
        skipped=len(inputs.skipped) + len(record.skipped), shards=len(record.shards),
        bytes=sum(s.bytes for s in record.shards), seconds=time.perf_counter() - started,
        up_to_date=up_to_date)
