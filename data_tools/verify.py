"""`ssl-vit-shards verify OUT`: decode every sample and check every shard against `_info.json`.

Per split: the entry is self-consistent (list lengths, num_samples, num_classes); per shard: the file
exists, its size and sha256 match, the tar reads to the end and holds exactly `shard_lengths[i]` samples;
per sample: see samplecheck.py; across shards: keys are unique. Only files inside OUT are read: a
`filenames` entry that is absolute, leaves OUT (`..`) or looks like a URL (`pipe:`, `http:`) is a problem, not
opened; so is a shard that is not a regular file (a FIFO would block verify for ever, a device never end) or
that leads out of OUT through a symlink (unless `--follow-symlinks`): `shard_files.py`, the check training and
evaluation make too. The counts must be whole numbers ≥ 0. Members are read into memory, never extracted.
Problems are reported as `shard key: reason` (or `shard: reason`, `_info.json ...: reason`) and never stop the run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .progress_bar import progress_bar

from .decoding import max_file_bytes
from .errors import DataToolsError
from .info import INFO_NAME, read_info
from .parallel import ordered_map
from .samplecheck import check_sample
from .shard_files import MISSING, OUTSIDE, open_shard_file, shard_file_problem


@dataclass(frozen=True)
class ShardExpectation:
    path: Path
    count: int
    sha256: str | None  # None when _info.json does not record it (e.g. written by another tool)
    bytes: int | None
    class_names: list[str] | None
    max_pixels: int | None = None  # the decoding cap (None: Pillow's bomb limit)
    root: Path | None = None  # the folder the shard must not leave through a symlink (None: its own)
    follow_symlinks: bool = False  # it may


@dataclass
class ShardResult:
    name: str
    samples: int = 0
    keys: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class VerifyReport:
    splits: list[str]
    shards: int = 0
    samples: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        verdict = "OK" if self.ok else f"{len(self.problems)} problems"
        return (f"verified split(s) {', '.join(self.splits) or '-'}: {self.shards} shards, "
                f"{self.samples} samples: {verdict}")


def verify_out(out: str | Path, split: str | None = None, *, workers: int = 1, max_pixels: int | None = None,
               progress: bool = True, follow_symlinks: bool = False) -> VerifyReport:
    out = Path(out)
    if not out.is_dir():
        raise DataToolsError(f"{out} is not a folder; give the OUT folder of `ssl-vit-shards build`")
    if workers < 1:
        raise DataToolsError(f"--workers must be at least 1, got {workers}")
    if not (out / INFO_NAME).exists():
        return VerifyReport([], problems=[f"{INFO_NAME}: not found in {out}; build shards there first"])
    try:
        splits = read_info(out)["splits"]
    except DataToolsError as err:
        return VerifyReport([], problems=[f"{INFO_NAME}: {err}"])
    names = [split] if split is not None else sorted(splits)
    report = VerifyReport(names)
    if split is not None and split not in splits:
        report.problems.append(f"{INFO_NAME}: no split '{split}' (it has: {', '.join(sorted(splits)) or 'none'})")
        return report
    if not names:
        report.problems.append(f"{INFO_NAME}: lists no splits")
    for name in names:
        _verify_split(out, name, splits[name], report, workers, max_pixels, progress, follow_symlinks)
    return report


def _verify_split(out: Path, name: str, entry: object, report: VerifyReport, workers: int, max_pixels: int | None,
                  progress: bool, follow_symlinks: bool = False) -> None:
    expectations, problems = _expectations(out, name, entry)
    expectations = [dataclasses.replace(e, max_pixels=max_pixels, follow_symlinks=follow_symlinks)
                    for e in expectations]
    report.problems += problems
    seen: dict[str, str] = {}
    with progress_bar(total=sum(e.count for e in expectations), unit="sample", desc=f"verify {name}",
              disable=not progress, dynamic_ncols=True) as bar:
        for result in ordered_map(_check_shards, ([e] for e in expectations), workers):
            report.shards += 1
            report.samples += result.samples
            report.problems += result.problems
            for key in result.keys:
                if key in seen:
                    report.problems.append(f"{result.name} {key}: duplicate key (also in {seen[key]})")
                seen.setdefault(key, result.name)
            bar.update(result.samples)


def _expectations(out: Path, name: str, entry: object) -> tuple[list[ShardExpectation], list[str]]:
    """Per-shard expectations from one split entry, or the reasons the entry is unusable."""
    where = f"{INFO_NAME} splits.{name}"
    if not isinstance(entry, dict):
        return [], [f"{where}: not a mapping"]
    filenames, lengths = entry.get("filenames"), entry.get("shard_lengths")
    if not isinstance(filenames, list) or not isinstance(lengths, list) or len(filenames) != len(lengths):
        return [], [f"{where}: needs 'filenames' and 'shard_lengths' lists of equal length"]
    if not all(_is_count(n) for n in lengths) or not all(isinstance(f, str) for f in filenames):
        return [], [f"{where}: 'filenames' must be strings and 'shard_lengths' non-negative integers"]
    outside = [f for f in filenames if not _plain_name(f)]
    if outside:  # never opened: the index may have come with downloaded shards
        return [], [f"{where}: shard {f!r} is not a file name inside {out}; an {INFO_NAME} may only name shard "
                    "files beside it (rebuild it with `ssl-vit-shards build`)" for f in outside]
    problems = []
    if not _is_count(entry.get("num_samples")):
        problems.append(f"{where}: num_samples {entry.get('num_samples')!r} is not a whole number of samples ≥ 0")
    elif entry.get("num_samples") != sum(lengths):
        problems.append(f"{where}: num_samples {entry.get('num_samples')} != sum of shard_lengths {sum(lengths)}")
    sha, sizes = entry.get("sha256"), entry.get("bytes")
    for key, values in (("sha256", sha), ("bytes", sizes)):
        if values is not None and (not isinstance(values, list) or len(values) != len(filenames)):
            problems.append(f"{where}: '{key}' must list one value per shard")
    sha = sha if isinstance(sha, list) and len(sha) == len(filenames) else [None] * len(filenames)
    sizes = sizes if isinstance(sizes, list) and len(sizes) == len(filenames) else [None] * len(filenames)
    class_names = entry.get("class_names")
    if class_names is not None and not isinstance(class_names, list):
        problems.append(f"{where}: 'class_names' must be a list")
        class_names = None
    if class_names is not None and entry.get("num_classes", len(class_names)) != len(class_names):
        problems.append(f"{where}: num_classes {entry.get('num_classes')} != {len(class_names)} class_names")
    expectations = [ShardExpectation(out / f, n, s, b, class_names, root=out)
                    for f, n, s, b in zip(filenames, lengths, sha, sizes)]
    return expectations, problems


def _is_count(value: object) -> bool:
    """A whole number of samples ≥ 0, as JSON writes one (true and 12.0 are not)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _plain_name(name: str) -> bool:
    """Relative, inside OUT, no URL scheme (`pipe:`, `http:`): what `build` writes, and all verify opens."""
    path = PurePosixPath(name)
    return (bool(name) and "\0" not in name and not path.is_absolute() and ".." not in path.parts
            and re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*:", name) is None)


def _file_problem(name: str, path: Path, problem) -> str:
    """The report line of a shard file that is not read (`shard_files.ShardFileProblem`)."""
    if problem.kind == MISSING:
        return f"{name}: missing shard file ({path}{'' if problem.text == 'does not exist' else f': {problem}'})"
    if problem.kind == OUTSIDE:
        return f"{name}: {problem}; not read (pass --follow-symlinks if the links are yours)"
    return f"{name}: {problem}; not read (a FIFO blocks its reader, a device never ends): put the shard file there"


def _check_shards(batch: list[ShardExpectation]) -> list[ShardResult]:
    return [check_shard(e) for e in batch]


class _HashingReader:
    """A read-only file wrapper that hashes and counts what passes through (tarfile's stream mode reads)."""

    def __init__(self, f):
        self._f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data


def check_shard(expect: ShardExpectation) -> ShardResult:
    name = expect.path.name
    result = ShardResult(name)
    problem = shard_file_problem(expect.path, expect.path.parent if expect.root is None else expect.root,
                                 expect.follow_symlinks)
    if problem is not None:
        result.problems.append(_file_problem(name, expect.path, problem))
        return result
    try:
        f = open_shard_file(expect.path)
    except OSError as err:  # swapped for a FIFO since the check, or unreadable
        result.problems.append(f"{name}: cannot be read ({err.strerror or err})")
        return result
    with f:
        reader = _HashingReader(f)
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                _read_samples(tar, result, expect)
        except (tarfile.TarError, OSError, EOFError) as err:
            result.problems.append(f"{name}: tar is truncated or corrupt after {result.samples} samples ({err})")
        while reader.read(1 << 20):  # hash whatever the tar reader did not need
            pass
    if expect.bytes is not None and reader.size != expect.bytes:
        result.problems.append(f"{name}: {reader.size} bytes, {INFO_NAME} says {expect.bytes}")
    if expect.sha256 is not None and reader.sha.hexdigest() != expect.sha256:
        result.problems.append(f"{name}: sha256 differs from {INFO_NAME} (the file changed since it was built)")
    if result.samples != expect.count:
        result.problems.append(f"{name}: {result.samples} samples, {INFO_NAME} says {expect.count}")
    return result


def _read_samples(tar: tarfile.TarFile, result: ShardResult, expect: ShardExpectation) -> None:
    """Group consecutive members by key (`KEY.ext`, as WebDataset does) and check each finished group."""
    key, parts = None, {}
    limit = max_file_bytes(expect.max_pixels)
    for member in tar:
        prefix, dot, ext = member.name.partition(".")
        if not member.isfile() or not dot:
            result.problems.append(f"{result.name} {member.name}: not a KEY.ext file member")
            continue
        if prefix != key:
            _finish_sample(result, key, parts, expect)
            key, parts = prefix, {}
        if ext in parts:
            result.problems.append(f"{result.name} {key}: member .{ext} appears twice")
        if member.size > limit:  # never read into memory: the stream reads past it the same way
            result.problems.append(f"{result.name} {key}: member .{ext} is {member.size:,} bytes, larger than any "
                                   f"image within the pixel cap ({limit:,} bytes)")
            parts[ext] = None
            continue
        parts[ext] = tar.extractfile(member).read()
    _finish_sample(result, key, parts, expect)


def _finish_sample(result: ShardResult, key: str | None, parts: dict[str, bytes | None], expect: ShardExpectation) -> None:
    if key is None:
        return
    result.samples += 1
    result.keys.append(key)
    if None in parts.values():  # a member too large to read: reported already
        return
    result.problems += [f"{result.name} {key}: {reason}" for reason in check_sample(parts, expect.class_names, expect.max_pixels)]
