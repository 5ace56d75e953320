"""Data specs → shard URLs and counts.

A data spec is one string (or a list of them) that says where the shards are:

- a directory holding `_info.json` (written by `ssl-vit-shards`, or timm's WebDataset layout, below) plus a split
  name: `resolve_spec("/data/in1k", "train")`. Two shorthands name the split inside the string:
  `"/data/in1k:train"`, and `"/data/in1k/_info.json"` (split from the argument, or the only split the file has);
- a remote index, `"https://host/in1k/_info.json"` or `"https://host/in1k/_info.json:train"`, also through fsspec
  (`"hf://datasets/timm/imagenet-1k-wds/_info.json:train"`): its shards are the URLs beside it, with its counts and
  class names (fetched with the same retries as shards, `remote.py`);
- a brace-expanded URL list: `"/data/train-{000000..000099}.tar"`, `"pipe:curl -s https://host/x-{0..9}.tar"`,
  `"https://host/x-{0..9}.tar"`, `"s3://bucket/x-{0..9}.tar"`, `"gs://bucket/x-{0..9}.tar"` (http(s) through
  `remote.HTTPStream`, which retries and resumes; `hf://`, `gs://` and other fsspec URLs through
  `remote_fsspec.FsspecStream`, which does the same; s3 through the AWS CLI; the rest through webdataset's
  openers). Shards may be `.tar.gz`. A URL list knows no sample count: pass `num_samples=` when the trainer needs
  an epoch length.

timm's WebDataset layout (`timm/imagenet-1k-wds` on the Hugging Face Hub, timm's `ReaderWds`) is read as it is:
its index is `_info.json` (or `info.json`, the name timm's own shard writer gives it, used when there is no
`_info.json`), `{"name": …, "splits": {NAME: {"name", "num_samples", "filenames", "shard_lengths",
"alt_label"}}}`, and its samples hold `jpg`, `cls` (the label, ASCII digits) and `json`. `filenames` entries may
be brace patterns (`"imagenet1k-train-{0000..1023}.tar"`), expanded in order. It lists no classes, so labels are
not checked against a class list; the feature protocols (k-NN, linear, few-shot) size their heads from the labels
they see (the largest + 1, over train and test), and fine-tuning and the MAE linear probe, which need the count
before, ask for `data.num_classes` / `linear.num_classes` (1000 for ImageNet-1k) by name. A split whose labels
come from a field of each sample's json (`alt_label`, timm's `train_12k` of ImageNet-22k) is refused by name:
ssl_vit reads `cls`.

Local shards are checked here, so a typo fails at once with the missing file's name rather than later inside
a worker process (and so are the libraries fsspec URLs need: `remote_fsspec.check_backend`), and so is what they
are: a shard must be a regular file (a FIFO, device or socket, which an
unpacked archive can hold, would make a reader wait or read for ever), and one that leads out of its folder
through a symlink is refused unless `follow_symlinks` (`data.follow_symlinks=true`): see
`data_tools/shard_files.py`, which the reader asks again when it opens the file. Remote URLs are checked when
they are opened.

The counts of an `_info.json` must add up before anything is read: `num_samples` and every `shard_lengths`
entry are whole numbers ≥ 0, one length per file, summing to `num_samples`, and `num_classes` (when given) is
the number of `class_names`. Each broken promise is one line naming the file, the split and the key. What
the shards really hold is checked as they are read (`shards.read_shard`, per
shard; `promises.SplitCount`, the whole split when `_info.json` gives no `shard_lengths`).

`pipe:` commands and remote URLs are taken only from the spec itself (the user's recipe or command line). An
`_info.json` travels with downloaded or shared shards, so its `filenames` must be plain relative file names
inside its directory: a `pipe:rm …`, an `http://…` or a `../../x.tar` there is refused, never run or read.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote

import braceexpand

from data_tools.shard_files import MISSING, NOT_REGULAR, shard_file_problem
from ssl_vit.errors import DataError

from .remote import HTTPStream, RemoteReadError, fetch, is_http
from .remote_fsspec import FsspecStream, check_backend, is_fsspec, protocols

INFO_FILE = "_info.json"
INFO_NAMES = (INFO_FILE, "info.json")  # ours and timm's Hub copies; timm's shard writer names it info.json
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
_REMOTE_INFO = re.compile(r"([A-Za-z][\w+.\-:]*://\S+/_?info\.json)(?::([\w.\-]+))?")  # URL[:split]
REINDEX = "fix it, download it again, or rebuild the shards with `ssl-vit-shards`"


@dataclass(frozen=True)
class ShardSet:
    """The shards of one split: URLs in order, and what `_info.json` knows about them (None when unknown)."""

    urls: tuple[str, ...]
    num_samples: int | None = None
    shard_lengths: tuple[int, ...] | None = None
    class_names: tuple[str, ...] | None = None
    sha256: tuple[str, ...] | None = None  # each shard's checksum, as `_info.json` records it

    @property
    def num_classes(self) -> int | None:
        return None if self.class_names is None else len(self.class_names)


def resolve_spec(
    spec: str | Sequence[str] | ShardSet, split: str | None = None, *, num_samples: int | None = None,
    follow_symlinks: bool = False,
) -> ShardSet:
    """Turn a data spec into a `ShardSet`.

    `split` picks the split of a directory spec (a directory with one split needs none; a URL list ignores it;
    a split written into the spec, `DIR:name`, takes precedence, so recipe defaults never contradict it);
    `num_samples` gives a URL list its sample count (for a directory it must agree with `_info.json`, or be None);
    `follow_symlinks` lets local shards lead out of their folder through symlinks (the user's own links).
    """
    if isinstance(spec, ShardSet):
        return spec if num_samples is None else _with_count(spec, num_samples, "the ShardSet")
    if not isinstance(spec, str):
        return _url_list([u for s in spec for u in _expand(str(s))], num_samples, str(list(spec)), follow_symlinks)
    remote = _REMOTE_INFO.fullmatch(spec)
    if remote is not None and (is_http(remote.group(1)) or is_fsspec(remote.group(1))):
        shards = _from_remote_info(remote.group(1), remote.group(2) or split)
        return shards if num_samples is None else _with_count(shards, num_samples, remote.group(1))
    directory, split, index = _directory_of(spec, split)
    if directory is None:
        _check_named_directory(spec)
        return _url_list(_expand(spec), num_samples, spec, follow_symlinks)
    shards, info_path = _from_info(directory, split, follow_symlinks, index)
    return shards if num_samples is None else _with_count(shards, num_samples, str(info_path))


def _expand(spec: str) -> list[str]:
    try:
        return list(braceexpand.braceexpand(spec))
    except ValueError as exc:  # unbalanced braces
        hint = "write shard ranges as /data/train-{000000..000099}.tar"
        raise DataError(f"data spec {spec!r}: {exc}; {hint}") from None


def is_local(url: str) -> bool:
    """Plain paths and file: URLs are local; anything else with a scheme (pipe:, http:, s3:, ...) is not."""
    return url.startswith("file:") or not _SCHEME.match(url)


def local_path(url: str) -> Path:
    """The file a local shard URL names (a plain path, or a file: URL)."""
    return Path(re.sub(r"^file://?", "/", url) if url.startswith("file:") else url)


def _directory_of(spec: str, split: str | None) -> tuple[Path | None, str | None, str | None]:
    """(directory, split, the index's file name when the spec names it) for the directory forms of a spec;
    (None, split, None) for a URL list."""
    if "{" in spec or "}" in spec:
        return None, split, None
    if Path(spec).is_dir():
        return Path(spec), split, None
    head, sep, tail = spec.rpartition(":")
    if sep and head and re.fullmatch(r"[\w.\-]+", tail) and Path(head).is_dir():
        # The split written into the spec is the more specific choice: it wins over the `split` argument,
        # which recipes fill with a default ("train", "validation").
        return Path(head), tail, None
    if is_local(spec) and Path(spec).name in INFO_NAMES and Path(spec).is_file():
        return Path(spec).parent, split, Path(spec).name
    return None, split, None


_SHARD_FILE = re.compile(r"\.(tar|tar\.gz|tgz)$")


def _check_named_directory(spec: str) -> None:
    """A spec that names one local path that is not there, and not as a shard file (`/data/in1k`, `nope`,
    `/data/in1k:train`), meant the directory `ssl-vit-shards` writes: say that directory does not exist, not
    that its one "shard" is missing, which reads as if a directory needed a .tar name."""
    if "{" in spec or "}" in spec or not is_local(spec):
        return
    path = local_path(spec)
    if not path.exists() and ":" in spec:
        head, _, tail = spec.rpartition(":")
        path = local_path(head) if head and re.fullmatch(r"[\w.\-]+", tail) else path
    if path.exists() or path.name in INFO_NAMES or _SHARD_FILE.search(path.name):
        return
    raise DataError(f"data directory {path} does not exist (data spec {spec!r}); give the folder `ssl-vit-shards` "
                    f"built, holding {INFO_FILE}, or a list of .tar shards")


def _from_info(directory: Path, split: str | None, follow_symlinks: bool = False,
               name: str | None = None) -> tuple[ShardSet, Path]:
    """The ShardSet of `split` in `directory`'s index (`name`, or the first of INFO_NAMES there), and its path."""
    found = [directory / name] if name else [directory / n for n in INFO_NAMES if (directory / n).is_file()]
    if not found or not found[0].is_file():
        raise DataError(
            f"{directory} has no {INFO_FILE}: build shards there with `ssl-vit-shards`, or give a brace-expanded "
            f"shard list such as '{directory}/train-{{000000..000009}}.tar'"
        )
    info_path = found[0]
    try:
        text = info_path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{info_path} is not readable ({exc}); {REINDEX}") from None
    shards = _from_index(text, str(info_path), split, lambda name: str(directory / name))
    _check_files(shards.urls, str(info_path), lambda url: directory, follow_symlinks)
    return shards, info_path


def _from_remote_info(url: str, split: str | None) -> ShardSet:
    """An index given as an http(s) or fsspec URL: its shards are the URLs beside it, with its counts and classes."""
    http = is_http(url)
    try:
        text = fetch(url, stream_class=HTTPStream if http else FsspecStream).decode("utf-8")
    except (RemoteReadError, UnicodeDecodeError) as exc:
        advice = getattr(exc, "advice", None)
        raise DataError(f"cannot read the shard index {url}: {exc}" + (f"; {advice}" if advice else "")) from None
    base = url[: url.rindex("/") + 1]
    if not http:  # fsspec paths are plain paths: a name is appended as it is spelled
        return _from_index(text, url, split, lambda name: base + name)
    return _from_index(text, url, split, lambda name: base + "/".join(quote(part) for part in name.split("/")))


def _from_index(text: str, where: str, split: str | None, locate) -> ShardSet:
    """The ShardSet of `split` in an `_info.json`'s text; `locate(name)` gives a listed shard's URL."""
    try:
        splits = json.loads(text)["splits"]
        if not isinstance(splits, dict) or not all(isinstance(e, dict) for e in splits.values()):
            raise TypeError("'splits' must map split names to mappings")
    except (ValueError, RecursionError, KeyError, TypeError) as exc:  # not JSON, wrong shape
        raise DataError(f"{where} is not a valid shard index ({exc!r}); {REINDEX}") from None
    if split is None and len(splits) == 1:
        split = next(iter(splits))
    if split not in splits:
        what = "no split given" if split is None else f"no split {split!r}"
        raise DataError(f"{where}: {what}; available splits: {', '.join(sorted(splits)) or '(none)'}")
    entry = splits[split]
    try:
        filenames = entry["filenames"]
        if not isinstance(filenames, list):
            raise TypeError("'filenames' (not a list)")
        lengths = _counts(entry["shard_lengths"]) if entry.get("shard_lengths") is not None else None
        count = _count(entry["num_samples"]) if entry.get("num_samples") is not None else None
        names = _class_names(entry["class_names"]) if entry.get("class_names") is not None else None
        sums = tuple(str(x) for x in entry["sha256"]) if isinstance(entry.get("sha256"), list) else None
        relabel = _alt_label(entry.get("alt_label"))
    except _BadEntry as exc:
        raise DataError(f"{where}: split {split!r} {exc}; {REINDEX}") from None
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise DataError(f"{where}: split {split!r} lacks or mangles {exc}; {REINDEX}") from None
    if relabel:
        plain = sorted(name for name, e in splits.items() if not e.get("alt_label"))
        raise DataError(
            f"{where}: split {split!r} takes its labels from the field {relabel!r} of each sample's json (timm's "
            f"alt_label; its shard_lengths count only the samples labelled there), and ssl_vit reads labels from "
            f"the cls member only: use a split without alt_label ({', '.join(plain) or 'none listed'})")
    filenames = _expand_names(filenames, where, split)
    if not filenames:
        raise DataError(f"{where}: split {split!r} lists no shard files; {REINDEX}")
    if lengths is not None and len(lengths) != len(filenames):
        raise DataError(f"{where}: split {split!r} lists {len(filenames)} files but {len(lengths)} shard_lengths")
    if lengths is not None and count is not None and sum(lengths) != count:
        raise DataError(f"{where}: split {split!r} num_samples {count} != sum of shard_lengths {sum(lengths)}")
    for name in filenames:
        _check_plain_name(name, where, split)
    urls = tuple(locate(name) for name in filenames)
    _check_listed_once(urls, where)
    if names is not None and len(set(names)) != len(names):
        raise DataError(f"{where}: split {split!r} lists a class name twice; {REINDEX}")
    if names is not None and entry.get("num_classes") is not None and entry["num_classes"] != len(names):
        raise DataError(f"{where}: split {split!r} num_classes {entry['num_classes']!r} != the {len(names)} "
                        f"class_names; {REINDEX}")
    if sums is not None and len(sums) != len(filenames):
        sums = None  # a hand-edited index: fall back to the files' sizes and dates where checksums are wanted
    return ShardSet(urls, count if count is not None else (sum(lengths) if lengths else None), lengths, names, sums)


def _expand_names(filenames: list, where: str, split: str) -> list:
    """`filenames` with each brace pattern (`"imagenet1k-train-{0000..1023}.tar"`) expanded in place, in order."""
    out: list = []
    for name in filenames:
        if isinstance(name, str) and ("{" in name or "}" in name):
            try:
                out += braceexpand.braceexpand(name)
            except ValueError as exc:  # unbalanced braces
                raise DataError(f"{where}: split {split!r} lists shard pattern {name!r}: {exc}; {REINDEX}") from None
        else:
            out.append(name)
    return out


def _alt_label(value: object) -> str | None:
    """timm's `alt_label`: absent, null or "" for a split labelled by `cls`, else the json field its labels are in."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _BadEntry(f"alt_label is {str(value)[:60]!r}, not the name of a json field")
    return value


def _check_plain_name(name: object, info_path: str, split: str) -> None:
    """A shard name from `_info.json` must be a relative path that stays inside the index's directory."""
    plain = (isinstance(name, str) and name and "\0" not in name and not _SCHEME.match(name)
             and not os.path.isabs(name) and ".." not in PurePosixPath(name).parts)
    if not plain:
        raise DataError(
            f"{info_path}: split {split!r} lists shard {name!r}, which is not a file name inside "
            f"{info_path.rsplit('/', 1)[0]}; "
            "an _info.json may only name shard files beside it. Fix or rebuild it with `ssl-vit-shards`, or give "
            "remote or pipe: URLs in the data spec itself"
        )


def _url_list(urls: list[str], num_samples: int | None, spec: str, follow_symlinks: bool = False) -> ShardSet:
    if not urls or not all(urls):
        raise DataError(f"data spec {spec!r} names no shards; give a directory with {INFO_FILE} or a list of .tar URLs")
    if num_samples is not None and num_samples <= 0:
        raise DataError(f"num_samples must be positive for data spec {spec!r}, got {num_samples}")
    if len(urls) == 1 and is_local(urls[0]) and local_path(urls[0]).is_dir():
        raise DataError(f"{urls[0]} is a directory without {INFO_FILE}: build shards there with `ssl-vit-shards`")
    _check_files(urls, f"data spec {spec!r}", lambda url: local_path(url).parent, follow_symlinks)
    _check_listed_once(urls, f"data spec {spec!r}")
    first_of: dict[tuple[str, ...], str] = {}
    for url in urls:
        if is_fsspec(url):
            first_of.setdefault(tuple(protocols(url)), url)
    for url in first_of.values():
        check_backend(url)  # one per protocol chain: fsspec and its libraries are installed
    return ShardSet(tuple(urls), num_samples)


def _check_files(urls: Sequence[str], source: str, folder_of, follow_symlinks: bool) -> None:
    """Every local shard exists and is a regular file inside `folder_of(url)` (or anywhere, `follow_symlinks`);
    nothing is opened. Missing shards are listed together; a special file or a link out names the first."""
    problems = {u: shard_file_problem(local_path(u), folder_of(u), follow_symlinks) for u in urls if is_local(u)}
    missing = [u for u, problem in problems.items() if problem is not None and problem.kind == MISSING]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise DataError(f"{len(missing)} of {len(urls)} shards of {source} do not exist: {shown}")
    for url, problem in problems.items():
        if problem is not None and problem.kind == NOT_REGULAR:
            raise DataError(f"shard {url} of {source} {problem}: refused, never opened (reading a FIFO or a device "
                            "waits or reads for ever; an unpacked archive can hold one). Put the shard file there")
        if problem is not None:
            raise DataError(f"shard {url} of {source} {problem}: refused (an unpacked archive can hold links to any "
                            "file). If the links are yours, set data.follow_symlinks=true")


class _BadEntry(ValueError):
    """A field of a split entry of the wrong kind: a count that is not a whole number ≥ 0, or class names that
    are not names."""


def _count(value: object, what: str = "num_samples") -> int:
    """A sample count as JSON writes one: an integer ≥ 0 (not "12", 12.5 or true, which int() would take)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _BadEntry(f"{what} is {value!r}, not a whole number of samples ≥ 0")
    return value


def _counts(values: object) -> tuple[int, ...]:
    if not isinstance(values, list):
        raise _BadEntry(f"shard_lengths is {type(values).__name__}, not a list of sample counts")
    return tuple(_count(n, f"shard_lengths[{i}]") for i, n in enumerate(values))


def _class_names(values: object) -> tuple[str, ...]:
    """The class list: strings (a single string would otherwise become one class per character)."""
    if not isinstance(values, list) or not all(isinstance(name, str) for name in values):
        raise _BadEntry(f"class_names is {str(values)[:60]!r}, not a list of names")
    return tuple(values)


def _check_listed_once(urls: Sequence[str], source: str) -> None:
    """Each shard once: a shard named twice (or a local file reached under two names) would be read twice per
    epoch, and every sample in it would count twice."""
    seen: dict[str, str] = {}
    for url in urls:
        same = os.path.realpath(local_path(url)) if is_local(url) else url
        if same in seen:
            also = "" if seen[same] == url else f" (as {seen[same]})"
            raise DataError(f"{source} names shard {url} twice{also}; every shard must be listed once")
        seen[same] = url


def _with_count(shards: ShardSet, num_samples: int, source: str) -> ShardSet:
    if shards.num_samples is not None and shards.num_samples != num_samples:
        raise DataError(f"num_samples={num_samples} disagrees with {source}, which holds {shards.num_samples} samples")
    if num_samples <= 0:
        raise DataError(f"num_samples must be positive, got {num_samples}")
    return dataclasses.replace(shards, num_samples=num_samples)
