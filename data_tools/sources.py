"""What to pack: walk an image-folder tree or read a CSV/TSV file list, then shuffle with a seed.

Everything here is sorted before it is shuffled, so the order depends only on the file names, the labels
and the seed — never on the order the file system happens to list a directory in. Hidden files and
folders (names starting with '.') are ignored; any other regular file is a candidate, and whether it is an
image is decided later by decoding it, not by its extension. One file gives one sample under its own label,
whatever links lead to it (`_Walker` states the symlink policy, `_one_per_file` the rule for several paths
to one file); what is left out is listed with the reason.
"""
from __future__ import annotations

import csv
import hashlib
import os
import posixpath
import random
import re
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import DataToolsError

LIST_SUFFIXES = (".csv", ".tsv")


@dataclass(frozen=True)
class Source:
    """One input file: where to read it, the path recorded in its sample, and its label."""

    path: str  # the file to open
    rel: str  # POSIX path relative to SRC (or as written in the list): the sample's json "path"
    cls: int  # class index; -1 when unlabelled
    class_name: str | None


@dataclass
class Inputs:
    sources: list[Source]  # sorted by `rel`
    class_names: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (rel, reason) decided while listing
    # sha256 over every (rel, label, size, mtime): a resumed build refuses to mix two different inputs.
    digest: str = ""

    def with_class_names(self, names: list[str]) -> "Inputs":
        """The same files, labelled by their class's index in `names` (which holds every class used here)."""
        index = {name: i for i, name in enumerate(names)}
        sources = [replace(s, cls=index[s.class_name]) if s.class_name is not None else s for s in self.sources]
        return Inputs(sources, list(names), self.skipped, self.digest)


def natural_key(name: str) -> tuple:
    """Sort key that puts "class2" before "class10" and label "2" before "10" (timm orders class folders so);
    ties such as "01" and "1" fall back to the text, so the order is total."""
    parts = re.split(r"(\d+)", name)  # text, digits, text, …: the types line up position by position
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name


def is_list_file(path: Path) -> bool:
    return path.suffix.lower() in LIST_SUFFIXES and path.is_file()


def collect(src: Path, *, labels: str, follow_symlinks: bool) -> Inputs:
    """Inputs from a folder (`labels="folder"`: SRC/<class>/...; `"none"`: any tree) or a CSV/TSV list."""
    if not src.exists():
        raise DataToolsError(f"{src} does not exist; give an image folder, a .csv/.tsv file list, parquet files or "
                             "a datasets save_to_disk folder")
    if src.is_file():
        if src.suffix.lower() not in LIST_SUFFIXES:
            raise DataToolsError(f"{src} is a file but not a .csv/.tsv list or a .parquet file; give an image folder, "
                                 "a file list or parquet files")
        inputs = _collect_list(src, labels)
    else:
        inputs = _collect_folder(src, labels, follow_symlinks)
    if not inputs.sources:
        raise DataToolsError(f"{src} holds no files to pack" + _skipped_hint(inputs.skipped))
    inputs.digest = _digest(inputs.sources)
    return inputs


def shuffled(sources: list[Source], seed: int) -> list[Source]:
    """A seeded permutation, so that every shard mixes classes; the same seed gives the same order."""
    order = list(sources)
    random.Random(seed).shuffle(order)
    return order


def _skipped_hint(skipped: list[tuple[str, str]]) -> str:
    if not skipped:
        return ""
    rel, reason = skipped[0]
    return f" ({len(skipped)} entries ignored, e.g. {rel}: {reason})"


def _collect_folder(root: Path, labels: str, follow_symlinks: bool) -> Inputs:
    skipped: list[tuple[str, str]] = []
    walker = _Walker(os.path.realpath(root), follow_symlinks, skipped)
    if labels == "none":
        found = walker.walk(str(root), "", None)
        return Inputs(_one_per_file(found, skipped, walker.root), [], skipped)

    class_dirs: list[tuple[str, str]] = []
    for rel, path, stat in walker.entries(str(root), ""):
        if stat is None:
            class_dirs.append((rel, path))
        else:
            skipped.append((rel, "not inside a class folder (use --labels none for a folder without labels)"))
    if not class_dirs:
        raise DataToolsError(
            f"{root} has no class folders (expected {root}/<class>/<image>); "
            "use --labels none for a folder of unlabelled images")
    class_dirs.sort(key=lambda d: natural_key(d[0]))
    class_names = [rel for rel, _ in class_dirs]
    found = []
    for name, path in class_dirs:
        found += walker.walk(path, name + "/", name)
    index = {name: i for i, name in enumerate(class_names)}
    sources = [replace(s, cls=index[s.class_name]) for s in _one_per_file(found, skipped, walker.root)]
    return Inputs(sources, class_names, skipped)


@dataclass(frozen=True)
class _Found:
    """A regular file met while listing, with its identity (st_dev, st_ino): one file, one sample."""

    rel: str
    path: str
    class_name: str | None
    identity: tuple[int, int]


class _Walker:
    """A sorted, loop-proof recursive listing of one tree (regular files only, hidden names ignored).

    The symlink policy (README, "What the build reads"): a symlink to a file is followed when the file lies
    inside SRC, or anywhere with --follow-symlinks; a symlink to a folder inside SRC is never descended (its
    files are listed where they really are, under their own class), one to a folder outside SRC only with
    --follow-symlinks and at most once per real folder and class, so a loop ends at once and the listing
    stays linear in the tree's size. A file reached under two classes is then skipped as ambiguous
    (`_one_per_file`). Special files (FIFOs, devices, sockets) are skipped: reading
    a FIFO would block for ever, a device never ends.
    """

    def __init__(self, root: str, follow_symlinks: bool, skipped: list[tuple[str, str]]):
        self.root = root
        self.follow_symlinks = follow_symlinks
        self.skipped = skipped
        self.walked: set[tuple[str | None, int, int]] = set()  # (class, st_dev, st_ino) of each folder descended

    def entries(self, folder: str, prefix: str):
        """Yield `(rel, path, stat)` per usable entry of `folder` sorted by name (stat None for a folder);
        record the rest with the reason."""
        try:
            listing = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as err:
            self.skipped.append((prefix or ".", f"cannot list folder: {err.strerror or err}"))
            return
        for entry in listing:
            if entry.name.startswith("."):
                continue
            rel = prefix + entry.name
            try:
                reason = self._refusal(entry)
                if reason is not None:
                    self.skipped.append((rel + ("/" if reason.startswith("symlink to a folder") else ""), reason))
                elif entry.is_dir():
                    yield rel, entry.path, None
                else:
                    yield rel, entry.path, entry.stat()
            except OSError as err:
                self.skipped.append((rel, f"cannot stat: {err.strerror or err}"))

    def _refusal(self, entry: os.DirEntry) -> str | None:
        """Why `entry` is not listed, or None."""
        if entry.is_symlink():
            target = os.path.realpath(entry.path)
            if not os.path.exists(target):
                return "broken symlink"
            inside = _inside(target, self.root)
            if os.path.isdir(target):
                if inside:
                    return "symlink to a folder inside SRC, not descended (its files are listed where they are)"
                if not self.follow_symlinks:
                    return "symlink to a folder outside SRC, not followed (use --follow-symlinks)"
                return None
            if not inside and not self.follow_symlinks:
                return "symlink to outside SRC, not followed (use --follow-symlinks)"
        if entry.is_dir() or stat.S_ISREG(entry.stat().st_mode):
            return None
        return "not a regular file (a FIFO, device or socket would block or never end when read)"

    def walk(self, folder: str, prefix: str, class_name: str | None) -> list[_Found]:
        info = os.stat(folder)
        if (class_name, info.st_dev, info.st_ino) in self.walked:  # a loop, or a second link to one folder
            self.skipped.append((prefix or ".", "symlink to a folder already listed, not descended again"))
            return []
        self.walked.add((class_name, info.st_dev, info.st_ino))
        found = []
        for rel, path, st in self.entries(folder, prefix):
            if st is None:
                found += self.walk(path, rel + "/", class_name)
            else:
                found.append(_Found(rel, path, class_name, (st.st_dev, st.st_ino)))
        return found


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _one_per_file(found: list[_Found], skipped: list[tuple[str, str]], root: str | None) -> list[Source]:
    """One sample per file, under its own label: of several paths to one file (symlinks, hard links, a list
    naming it twice), the one that is the file itself (no symlink on the way, when `root` is given) wins, or
    the first by path when all agree on the label; paths that disagree on the label are all skipped, since
    the file's class is then ambiguous. Returns the sources sorted by `rel`."""
    groups: dict[tuple[int, int], list[_Found]] = {}
    for f in found:
        groups.setdefault(f.identity, []).append(f)
    sources = []
    for group in groups.values():
        if len(group) == 1:  # the common case: no realpath (a few lstat calls per path component) needed
            sources.append(Source(group[0].path, group[0].rel, -1, group[0].class_name))
            continue
        group.sort(key=lambda f: f.rel)
        real = [f for f in group if root is not None and os.path.realpath(f.path) == os.path.join(root, f.rel)]
        labels = {f.class_name for f in group}
        if len(real) == 1 or len(labels) == 1:
            keep = real[0] if len(real) == 1 else group[0]
            sources.append(Source(keep.path, keep.rel, -1, keep.class_name))
            skipped += [(f.rel, f"the same file as {keep.rel} (a symlink or hard link to it)") for f in group
                        if f is not keep]
        else:
            where = ", ".join(f.rel for f in group)
            skipped += [(f.rel, f"one file under several labels ({where}): its class is ambiguous") for f in group]
    return sorted(sources, key=lambda s: s.rel)


def _collect_list(list_file: Path, labels: str) -> Inputs:
    """A CSV/TSV with a header row naming `path` and `label` columns (`label` optional with --labels none)."""
    delimiter = "\t" if list_file.suffix.lower() == ".tsv" else ","
    try:
        with open(list_file, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f, delimiter=delimiter))
    except UnicodeDecodeError:
        raise DataToolsError(f"{list_file} is not UTF-8 text; save the file list as UTF-8") from None
    except (OSError, csv.Error) as err:
        raise DataToolsError(f"cannot read file list {list_file}: {err}") from None
    if not rows:
        raise DataToolsError(f"{list_file} is empty; it needs a header row with 'path' and 'label' columns")
    header = [name.strip().lower() for name in rows[0]]
    needed = ["path"] if labels == "none" else ["path", "label"]
    missing = [name for name in needed if name not in header]
    if missing:
        raise DataToolsError(
            f"{list_file}: the header row must name the columns {' and '.join(map(repr, needed))} "
            f"(missing {', '.join(map(repr, missing))}; found {', '.join(map(repr, header))})")
    path_col = header.index("path")
    label_col = header.index("label") if labels != "none" else None
    base = list_file.parent
    entries: list[tuple[str, str, str | None]] = []  # (rel, path, class name)
    first_line: dict[str, int] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(path_col, label_col or 0):
            raise DataToolsError(f"{list_file} line {line}: expected {len(header)} columns, found {len(row)}")
        written = row[path_col].strip()
        if not written:
            raise DataToolsError(f"{list_file} line {line}: empty path")
        name = row[label_col].strip() if label_col is not None else None
        if name == "":
            raise DataToolsError(f"{list_file} line {line}: empty label for {written}; give every row a label "
                                 "or build with --labels none")
        rel = posixpath.normpath(written)
        if rel in first_line:
            raise DataToolsError(
                f"{list_file} lines {first_line[rel]} and {line} both list {rel}; remove the duplicate")
        first_line[rel] = line
        entries.append((rel, str(base / written), name))
    class_names = sorted({name for _, _, name in entries if name is not None}, key=natural_key)
    skipped: list[tuple[str, str]] = []
    found = []
    for rel, path, name in entries:
        try:
            st = os.stat(path)
        except OSError as err:
            skipped.append((rel, f"cannot read: {err.strerror or err}"))
            continue
        if not stat.S_ISREG(st.st_mode):
            skipped.append((rel, "not a regular file (a folder, FIFO or device would block or never end when read)"))
            continue
        found.append(_Found(rel, path, name, (st.st_dev, st.st_ino)))
    index = {name: i for i, name in enumerate(class_names)}
    sources = [replace(s, cls=index[s.class_name]) if s.class_name is not None else s
               for s in _one_per_file(found, skipped, None)]
    return Inputs(sources, class_names, skipped)


def _digest(sources: list[Source]) -> str:
    h = hashlib.sha256()
    for s in sources:
        try:
            st = os.stat(s.path)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = -1, -1
        h.update(f"{s.rel}\t{s.class_name}\t{size}\t{mtime}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()
