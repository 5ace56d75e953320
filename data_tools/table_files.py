"""Which SRC is a table, and which of its files hold the split: recognised from the path alone, without pyarrow.

Three kinds, as `ssl-vit-shards build` takes them next to image folders and CSV lists:

* `parquet`: a `.parquet` file, or a folder whose top level holds `.parquet` files and no folders (its other
  files, a README or `.gitattributes`, are not read). A folder with both parquet files and folders is refused: an
  image folder with a stray table must not be packed as the table, nor the table's images ignored. Files named as the Hub names them,
  `SPLIT-00000-of-00042[-hash].parquet`, may hold several splits in one folder (`data/` of a Hub dataset holds
  train, validation and test): then only the files of the split named by `--split` are read, and a `--split` none
  of them has is refused, so a validation set never slips into a train split.
* `datasets`: a folder written by `datasets`' `Dataset.save_to_disk`, recognised by its `state.json` (which lists
  the `data-0000k-of-0000n.arrow` files, Arrow IPC streams) beside `dataset_info.json` (the features). A
  `DatasetDict.save_to_disk` folder (a `dataset_dict.json` and one such folder per split) is refused with the
  folder to give instead.
* None: anything else (an image folder or a CSV/TSV list, as before).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import DataToolsError
from .sources import natural_key

PARQUET = "parquet"
DATASETS = "datasets"
TABLE_KINDS = (PARQUET, DATASETS)
# `train-00000-of-00294.parquet` (push_to_hub), `train-00000-of-00008-2fe2b7c2e8a1d3f5.parquet` (older versions)
_HUB_NAME = re.compile(r"(?P<split>.+?)-\d{5}-of-\d{5}(?:-[0-9a-f]+)?\.parquet")


def table_kind(src: Path) -> str | None:
    """`parquet`, `datasets` or None (not a table: an image folder or a file list)."""
    if src.is_file():
        return PARQUET if src.suffix.lower() == ".parquet" else None
    if not src.is_dir():
        return None
    if (src / "state.json").is_file() or (src / "dataset_dict.json").is_file():
        return DATASETS
    parquet = _parquet_files(src)
    folders = sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if parquet and folders:  # an image folder with a stray table, or a table beside its images: never guess
        raise DataToolsError(
            f"{src} holds parquet files ({', '.join(p.name for p in parquet[:3])}) and folders ({', '.join(folders[:3])}), "
            "so it is neither clearly a table nor an image folder: give the parquet file (or a folder of only "
            "parquet files), or move the parquet files out to build the image folder")
    return PARQUET if parquet else None


def data_files(src: Path, kind: str, split: str) -> list[Path]:
    """The files holding the rows, in the order their rows are listed."""
    if kind == DATASETS:
        return _saved_files(src)
    if src.is_file():
        return [src]
    files = _parquet_files(src)
    named = {p: m.group("split") for p in files if (m := _HUB_NAME.fullmatch(p.name))}
    splits = sorted(set(named.values()), key=natural_key)
    if len(splits) > 1:
        if split not in splits:
            raise DataToolsError(
                f"{src} holds the parquet files of several splits ({', '.join(splits)}) and none is named "
                f"'{split}'; give --split one of those names, or a folder holding one split's files")
        files = [p for p in files if named.get(p) == split]
    return files


def saved_features(src: Path) -> dict | None:
    """The `features` of a save_to_disk folder's dataset_info.json (None when it has none)."""
    info = src / "dataset_info.json"
    if not info.is_file():
        return None
    try:
        features = json.loads(info.read_text(encoding="utf-8")).get("features")
    except (OSError, ValueError, AttributeError) as err:
        raise DataToolsError(f"{info} is unreadable ({err}); save the dataset again with save_to_disk") from None
    return features if isinstance(features, dict) else None


def _parquet_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.suffix.lower() == ".parquet" and not p.name.startswith(".")
                   and p.is_file()), key=lambda p: natural_key(p.name))


def _saved_files(src: Path) -> list[Path]:
    if not (src / "state.json").is_file():
        try:
            splits = json.loads((src / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        except (OSError, ValueError, KeyError, TypeError):
            splits = []
        shown = ", ".join(map(str, splits)) or "none listed"
        example = src / str(splits[0]) if splits else src / "train"
        raise DataToolsError(
            f"{src} is a DatasetDict saved with save_to_disk (splits: {shown}); give one split's folder as SRC, "
            f"e.g. {example}")
    state_file = src / "state.json"
    try:
        names = [entry["filename"] for entry in json.loads(state_file.read_text(encoding="utf-8"))["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataToolsError(
            f"{state_file} does not list the data files (expected '_data_files': [{{'filename': ...}}]; {err}); "
            "save the dataset again with save_to_disk") from None
    files = [src / name for name in names]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DataToolsError(f"{state_file} lists {len(names)} data files but {', '.join(missing[:3])}"
                             f"{' …' if len(missing) > 3 else ''} {'is' if len(missing) == 1 else 'are'} missing "
                             f"from {src}; copy the whole folder that save_to_disk wrote")
    if not files:
        raise DataToolsError(f"{state_file} lists no data files: the saved dataset is empty")
    return files
