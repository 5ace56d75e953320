"""Whether a demo's --workdir may be continued: only by a command of the same settings.

The demo resumes whatever its --workdir holds (shards, the pretraining's last checkpoint, cached features), so a
rerun with another length, target, recipe, data or code must not continue it: a 4-step run resumed to 6 steps
is not a 6-step run (its schedule was another), and a report of it would show numbers of another command.
`WORKDIR/demo.json` records the settings the work there was started with (`ssl_vit.analysis.settings`: resolved
recipes, data by content, code version) before the pretraining starts; a rerun of other settings is refused in
one line naming what changed, or replaces the work with `--overwrite`: the pretraining then starts afresh
(`ssl-vit pretrain --overwrite`), and the previous report and summary are removed at once, so no report of the
old settings outlives the replacement.

`fresh` in the record stays true until the replacing pretraining has started (it returned, or stopped with a
checkpoint): a replacement that failed before is replaced again by the next run, never resumed as if it were the
new settings' run.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..analysis.settings import changed
from ..data.identity import content_key
from ..errors import RunDirectoryError
from ..files import atomic_write

RECORD = "demo.json"
REPORTS = ("report.md", "summary.json", "fewshot.png")  # what the demo writes last, from the finished work


def claim(work: Path, settings: dict[str, Any], *, overwrite: bool) -> bool:
    """Record `settings` as the workdir's, or refuse; True when the pretraining must start afresh (`--overwrite`)."""
    path = work / RECORD
    old = _read(path)
    key = content_key(settings)
    if old is not None and old.get("key") == key and old.get("settings") == settings:
        return bool(old.get("fresh"))
    started = _holds_a_run(work / "pretrain")
    if started and not overwrite:
        if old is None:
            what = "a pretraining run whose settings were not recorded (an older ssl-vit made it)"
        elif not old:
            what = f"a pretraining run whose record {path} cannot be read"
        else:
            what = f"a demo of other settings ({changed(old.get('settings') or {}, settings)})"
        raise RunDirectoryError(f"--workdir {work} holds {what}; pass --overwrite to replace it, or choose another "
                                "--workdir")
    for name in REPORTS if old is not None else ():  # the demo's own files: demo.json proves it wrote them
        (work / name).unlink(missing_ok=True)
    _write(path, key, settings, fresh=started)
    return started


def started_afresh(work: Path) -> None:
    """The replacing pretraining has started: from now on a rerun resumes it."""
    record = _read(work / RECORD)
    if record is not None and record.get("fresh"):
        _write(work / RECORD, record["key"], record["settings"], fresh=False)


def _holds_a_run(folder: Path) -> bool:
    try:
        return any(folder.iterdir())
    except OSError:  # absent (or not a folder: the pretraining names that)
        return False


def _read(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: settings unknown, so never the same as this command's
    return record if isinstance(record, dict) else {}


def _write(path: Path, key: str, settings: dict, *, fresh: bool) -> None:
    atomic_write(path, json.dumps({"key": key, "fresh": fresh, "settings": settings}, indent=1) + "\n")
