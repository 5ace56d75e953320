"""What to pack: walk an image-folder tree or read a CSV/TSV file list, then shuffle with a seed.

Everything here is sorted before it is shuffled, so the order depends only on the file names, the labels
and the seed — never on the order the file system happens to list a directory in. Hidden files and
folders (names starting with '.') are ignored; any other file is a candidate, and whether it is an image
is decided later by decoding it, not by its extension.
"""
from __future__ import annotations

import csv
import hashlib
import os
import posixpath
import random
import re
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
        raise DataToolsError(f"{src} does not exist; give an image folder or a .csv/.tsv file list")
    if src.is_file():
        if src.suffix.lower() not in LIST_SUFFIXES:
            raise DataToolsError(f"{src} is a file but not a .csv/.tsv list; give an image folder or a file list")
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
    files: list[tuple[str, str]] = []  # (rel, path)
    skipped: list[tuple[str, str]] = []
    walker = _Walker(os.path.realpath(root), follow_symlinks, skipped)
    if labels == "none":
        walker.walk(str(root), "", files, ancestors=(walker.root,))
        return Inputs([Source(path, rel, -1, None) for rel, path in files], [], skipped)

    class_dirs: list[tuple[str, str]] = []
    for entry in walker.entries(str(root), ""):
        if entry is None:
            continue
        rel, path, is_dir = entry
        if is_dir:
            class_dirs.append((rel, path))
        else:
            skipped.append((rel, "not inside a class folder (use --labels none for a folder without labels)"))
    if not class_dirs:
        raise DataToolsError(
            f"{root} has no class folders (expected {root}/<class>/<image>); "
            "use --labels none for a folder of unlabelled images")
    class_dirs.sort(key=lambda d: natural_key(d[0]))
    class_names = [rel for rel, _ in class_dirs]
    sources = []
    for cls, (name, path) in enumerate(class_dirs):
        found: list[tuple[str, str]] = []
        walker.walk(path, name + "/", found, ancestors=(walker.root, os.path.realpath(path)))
        sources += [Source(p, rel, cls, name) for rel, p in found]
    return Inputs(sorted(sources, key=lambda s: s.rel), class_names, skipped)


class _Walker:
    """A sorted, symlink-aware recursive listing of one tree (files only, hidden names ignored)."""

    def __init__(self, root: str, follow_symlinks: bool, skipped: list[tuple[str, str]]):
        self.root = root
        self.follow_symlinks = follow_symlinks
        self.skipped = skipped

    def entries(self, folder: str, prefix: str):
        """Yield `(rel, path, is_dir)` per usable entry of `folder`, sorted by name; record the rest."""
        try:
            listing = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as err:
            self.skipped.append((prefix or ".", f"cannot list folder: {err.strerror or err}"))
            return
        for entry in listing:
            if entry.name.startswith("."):
                continue
            rel = prefix + entry.name
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                if not os.path.exists(target):
                    self.skipped.append((rel, "broken symlink"))
                    continue
                if not self.follow_symlinks and not _inside(target, self.root):
                    self.skipped.append((rel, "symlink to outside SRC, not followed (use --follow-symlinks)"))
                    continue
            try:
                if entry.is_dir():
                    yield rel, entry.path, True
                elif entry.is_file():
                    yield rel, entry.path, False
                else:  # a FIFO or device would block or never end when read
                    self.skipped.append((rel, "not a regular file"))
            except OSError as err:
                self.skipped.append((rel, f"cannot stat: {err.strerror or err}"))

    def walk(self, folder: str, prefix: str, out: list[tuple[str, str]], ancestors: tuple[str, ...]) -> None:
        for rel, path, is_dir in self.entries(folder, prefix):
            if not is_dir:
                out.append((rel, path))
                continue
            real = os.path.realpath(path)
            if real in ancestors:  # a symlink back up the tree would recurse forever
                self.skipped.append((rel + "/", "symlink loop, not followed"))
                continue
            self.walk(path, rel + "/", out, ancestors + (real,))


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


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
    index = {name: i for i, name in enumerate(class_names)}
    sources = [Source(path, rel, index[name] if name is not None else -1, name) for rel, path, name in entries]
    return Inputs(sorted(sources, key=lambda s: s.rel), class_names)


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
