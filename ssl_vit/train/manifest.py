"""Whose files a run directory holds: the run's manifest, so `--overwrite` deletes exactly what the run wrote.

    owned = RunOwnership.read(run_dir, config, writes)   # reads only
    owned.refuse_foreign()        # another tool's checkpoints/, ranks/, config.yaml …: one line, in every mode
    owned.present()               # the run's entries that hold something ("already holds a run")
    owned.removal()               # what --overwrite deletes, and what it keeps (ssl_vit/ownership.py)
    write_manifest(run_dir, owned.claims(config, writes, removal))   # `run_dir.begin`, the command's first write

`RUN/ssl_vit_run.json` = `{"format": "ssl_vit.run", "version": 1, "entries": {NAME: KIND}}`. A run's files
change while it trains (logs grow, checkpoints rotate), so the manifest records names and kinds, not sizes:
- "file": ours whole (config.yaml, the logs, trackers.json, a fine-tuning's selected.pt);
- "folder": ours, holding our entries by name — checkpoints/: `step_N`, `latest` and the temporaries of a save;
  ranks/: `rankN.json` — and perhaps somebody else's, which stay;
- "tracker": a folder a tracker creates for the run (TensorBoard's `train.project`, W&B's `wandb`, Aim's
  `.aim`: `trackers.output_names`), ours whole.
`run.lock` (and its takeover guard) and the manifest are the run's too, but `--overwrite` never deletes them.

Who writes what: config.yaml, resumes.jsonl and the manifest `run_dir.begin`; metrics.jsonl `metrics.py`;
eval.jsonl the trainer's validation; checkpoints/ `checkpoint.py`; ranks/ the session at the end of a run; samples/
`sample_records.py` (`train.record_samples`);
trackers.json `trackers.py` and the tracker folders Accelerate's trackers; run.lock `run_lock.py`; whatever else a
command writes there it names in `RunFiles.writes` (fine-tuning: selected.pt, finetune_history.json).

`begin` claims each name when it is absent or already ours, before the run writes it. A directory without a
manifest holds a run of an earlier ssl_vit when its entries' content says so (`_recognised`: a checkpoint whose
state.pt is ssl_vit's — or, when none can be read, a checkpoints/ holding only what a run writes there — a
config.yaml that is a recipe, logs of our records, an empty file …); such a run resumes and is
overwritten as before, and gets its manifest at its next start. An entry under one of our names that neither
proves ours — another tool's `checkpoints/` — makes the directory no run of ours: it is refused, never written
into and never emptied.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import yaml

from ..errors import RunDirectoryError
from ..files import atomic_write
from ..ownership import Removal, listing
from . import checkpoint as ckpt
from .trackers import IDS_FILE, output_names

MANIFEST = "ssl_vit_run.json"
FORMAT, VERSION = "ssl_vit.run", 1
FILES = ("config.yaml", "metrics.jsonl", "eval.jsonl", "resumes.jsonl", IDS_FILE)
FOLDERS = {  # our folders: the entries of ours they hold, by name
    ckpt.CHECKPOINTS: re.compile(r"step_\d+|latest|\.(tmp|old)-step_\d+|\.latest\.tmp-\d+"),
    "ranks": re.compile(r"rank\d+\.json|\.rank\d+\.json\.tmp-\d+"),
    "samples": re.compile(r"attempt-\d+(-rank\d+\.bin|\.json)|\.attempt-\d+\.json\.tmp-\d+"),
}
HELD = ("run.lock", "run.lock.takeover", MANIFEST)  # the run's, never deleted by --overwrite
_TEMPORARY = re.compile(r"\.(.+)\.tmp-\d+")  # files.atomic_write's temporary of NAME, left by a kill
_CHECKPOINT_FILES = re.compile(r"state\.pt|config\.yaml|rng_rank\d+\.pt|\..+\.tmp-\d+")  # what a step_N holds


@dataclass
class RunOwnership:
    """Which entries of `run_dir` are the run's (`entries`: name → kind) and which of our names somebody else's."""

    run_dir: Path
    entries: dict[str, str] = field(default_factory=dict)
    foreign: list[str] = field(default_factory=list)  # our names, present, not ours
    source: str = "none"  # "manifest", "content" (an earlier ssl_vit's run) or "none"

    @classmethod
    def read(cls, run_dir: Path, config: dict | None = None, writes: Iterable[str] = ()) -> RunOwnership:
        run_dir = Path(run_dir)
        path = run_dir / MANIFEST
        if path.exists():
            return cls(run_dir, _read_manifest(path), source="manifest")
        names = {**{n: "file" for n in (*FILES, *writes)}, **{n: "folder" for n in FOLDERS}}
        present = {n: k for n, k in names.items() if _exists(run_dir / n)}
        ours = {n: k for n, k in present.items() if _recognised(run_dir / n)}
        legacy = bool(ours)
        for name in writes:  # a command's own outputs carry no mark of ours: a run of ours vouches for them
            if name in present and legacy:
                ours[name] = "file"
        recipe = _recipe(run_dir / "config.yaml") if "config.yaml" in ours else None
        for name in _legacy_trackers(run_dir, recipe or config, ours):
            ours[name] = "tracker"
        foreign = sorted(n for n in present if n not in ours)
        return cls(run_dir, ours, foreign, "content" if legacy else "none")

    # ------------------------------------------------------------------------------------------ questions
    def refuse_foreign(self) -> None:
        """One line when one of the names the run writes is somebody else's, or leads through a dead link."""
        for name in (*FOLDERS, *self.entries):
            path = self.run_dir / name
            if path.is_symlink() and not path.exists():
                raise RunDirectoryError(
                    f"{path} is a link to {_target(path)}, which does not exist (a disk that is not mounted?); mount "
                    "it, or remove the link, then run the command again")
        if self.foreign:
            paths = [self.run_dir / n for n in self.foreign]
            are = "are" if len(paths) > 1 else "is"
            raise RunDirectoryError(
                f"{self.run_dir} holds {listing(paths, self.run_dir)}, which {are} not an ssl_vit run's (no {MANIFEST} "
                f"lists {'them' if len(paths) > 1 else 'it'}, and {'their' if len(paths) > 1 else 'its'} content is "
                "not a run's); ssl-vit neither writes into nor deletes another tool's files, with or without "
                "--overwrite: choose another output_dir, or move them away")

    def ours(self, name: str) -> bool:
        """Whether a name in the run directory is the run's (a write's temporary included)."""
        return name in self.entries or name in HELD or (_temporary_of(name) or "") in self.entries

    def present(self) -> list[Path]:
        """The run's entries that hold something of it (empty for a new or emptied directory)."""
        found = []
        for name, kind in self.entries.items():
            path = self.run_dir / name
            if kind == "file" and path.is_file():
                found.append(path)
            elif kind != "file" and path.is_dir() and any(self._owned_children(name, kind)):
                found.append(path)
        return found

    def removal(self) -> Removal:
        """What `--overwrite` deletes: every entry of the run (a folder's own entries, not the folder's others);
        what it keeps: everything else, named."""
        plan = Removal(self.run_dir)
        if not self.run_dir.is_dir():
            return plan
        for path in sorted(self.run_dir.iterdir()):
            name = path.name
            kind = self.entries.get(name)
            if name in HELD:
                continue
            if kind is None:
                (plan.delete if self.ours(_temporary_of(name) or "") else plan.kept).append(path)
            elif kind == "file":  # a folder under a file's name is nobody's we know: it stays
                (plan.delete if path.is_file() or path.is_symlink() else plan.kept).append(path)
            elif kind == "tracker" and not path.is_symlink():
                plan.delete.append(path)
            elif path.is_dir():  # a folder of ours, or a link to one (the link is the user's: it stays)
                owned = set(self._owned_children(name, kind))
                plan.delete += sorted(owned)
                plan.kept += sorted(p for p in path.iterdir() if p not in owned)
                if not path.is_symlink():
                    plan.prune.append(path)
            else:
                plan.kept.append(path)  # a file where our folder belongs: not ours to judge
        return plan

    def claims(self, config: dict | None, writes: Iterable[str], removal: Removal | None) -> dict[str, str]:
        """The manifest `begin` writes: our names (each absent, or ours already) and this recipe's tracker
        folders, plus the entries of ours that stay."""
        gone = {p.name for p in (removal.delete if removal else []) if p.parent == self.run_dir}
        kept = {n: k for n, k in self.entries.items() if n not in gone and _exists(self.run_dir / n)}
        wanted = {**{n: "file" for n in (*FILES, *writes)}, **{n: "folder" for n in FOLDERS},
                  **{n: "tracker" for n in output_names(*_trackers_of(config))}}
        for name, kind in wanted.items():
            if name in kept or not _exists(self.run_dir / name) or name in gone:
                kept.setdefault(name, kind)
        return dict(sorted(kept.items()))

    def _owned_children(self, name: str, kind: str) -> Iterable[Path]:
        folder = self.run_dir / name
        pattern = FOLDERS.get(name) if kind == "folder" else re.compile(r".*", re.S)
        if pattern is None or not folder.is_dir():
            return
        for child in folder.iterdir():
            if pattern.fullmatch(child.name):
                yield child


def write_manifest(run_dir: Path, entries: dict[str, str]) -> None:
    atomic_write(Path(run_dir) / MANIFEST,
                 json.dumps({"format": FORMAT, "version": VERSION, "entries": entries}, indent=1) + "\n")


# ------------------------------------------------------------------------------------------------ pieces
def _read_manifest(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format') if isinstance(data, dict) else type(data).__name__!r}")
        if not isinstance(data.get("version"), int) or data["version"] > VERSION:
            raise ValueError(f"version {data.get('version')!r}, newer than this ssl_vit reads ({VERSION})")
        entries = data["entries"]
        if not isinstance(entries, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in entries.items()):
            raise ValueError("'entries' must map names to kinds")
    except (OSError, UnicodeDecodeError, ValueError, KeyError) as err:
        raise RunDirectoryError(
            f"{path}: not readable as ssl_vit's record of the run's files ({err}); restore it, or delete it (the run "
            "is then recognised by its files' content)") from None
    return {k: v for k, v in entries.items() if "/" not in k and k not in ("", ".", "..")}


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _target(path: Path) -> str:
    try:
        return str(path.readlink())
    except OSError:
        return "nowhere"


def _temporary_of(name: str) -> str | None:
    match = _TEMPORARY.fullmatch(name)
    return match.group(1) if match else None


def _trackers_of(config: dict | None) -> tuple[list[str], str]:
    train = (config or {}).get("train") or {}
    return list(train.get("log_with") or []), str(train.get("project") or "")


# ------------------------------------------------------------------------------ runs of earlier versions
def _recognised(path: Path) -> bool:
    """Whether an entry under one of our names is, by its content, what an ssl_vit run writes there."""
    if path.is_file() and path.stat().st_size == 0:
        return True  # nothing in it to lose, nothing of anybody's to mix with
    name = path.name
    try:
        if name == "config.yaml":
            return _recipe(path) is not None
        if name in FOLDERS and path.is_dir():
            children = list(path.iterdir())
            if all(FOLDERS[name].fullmatch(p.name) and not p.name.startswith(("step_", "rank")) for p in children):
                return True  # empty, or only a save's temporaries and `latest`: nothing of anybody's to mix with
            if name == ckpt.CHECKPOINTS:
                return _our_checkpoints(path, children)
            return any("param_sha256" in _json(p) for p in path.glob("rank*.json"))
        if name == IDS_FILE:
            ids = _json(path)
            return bool(ids) and set(ids) <= {"wandb", "mlflow"}
        first = _first_record(path)
        return "step" in first and (name != "metrics.jsonl" or "loss" in first)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError):
        return False


def _recipe(path: Path) -> dict | None:
    """An earlier run's recipe: config.yaml holding the sections every ssl_vit recipe has."""
    try:
        recipe = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return recipe if isinstance(recipe, dict) and {"model", "data", "train"} <= set(recipe) else None


def _our_checkpoints(folder: Path, children: list[Path]) -> bool:
    """checkpoints/ of an earlier run: the newest readable `state.pt` is in ssl_vit's format (any version
    `checkpoint.upgrade_state` reads; read with its tensors memory-mapped, not loaded); when none is readable
    (damaged, or refused as unsafe: loading it says so), the folder holds only what a run writes there."""
    steps = sorted((p for p in children if p.is_dir() and ckpt.STEP_NAME.match(p.name)), key=ckpt.checkpoint_step)
    for step_dir in reversed(steps[-3:]):
        verdict = _checkpoint_format(step_dir / ckpt.STATE_FILE)
        if verdict is not None:
            return verdict
    return all(FOLDERS[ckpt.CHECKPOINTS].fullmatch(p.name) for p in children) and all(
        _CHECKPOINT_FILES.fullmatch(f.name) for step_dir in steps for f in step_dir.iterdir())


def _checkpoint_format(file: Path) -> bool | None:
    """True for a state.pt of ours, False for another program's, None when it cannot be read here."""
    import torch

    if not file.is_file() or file.stat().st_size == 0:
        return None
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - truncated, foreign pickle, or code inside: unknown here
        return None
    if not isinstance(state, dict):
        return False
    if state.get("format") == ckpt.FORMAT:
        return True
    return "version" not in state and {"step", "model", "optimizer", "scheduler"} <= set(state)  # format version 1


def _json(path: Path) -> dict:
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}


def _first_record(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        line = f.readline(1 << 16)
    record = json.loads(line) if line.strip() else {}
    return record if isinstance(record, dict) else {}


def _legacy_trackers(run_dir: Path, recipe: dict | None, ours: dict[str, str]) -> list[str]:
    """Tracker folders of an earlier run: TensorBoard's when it holds event files, W&B's when it holds the run
    whose id the run's trackers.json keeps."""
    if not ours:
        return []
    log_with, project = _trackers_of(recipe)
    found = []
    for name in output_names(log_with, project):
        folder = run_dir / name
        if not folder.is_dir() or name in ours:
            continue
        if name == project and any(folder.rglob("events.out.tfevents.*")):
            found.append(name)
        elif name == "wandb" and IDS_FILE in ours:
            run_id = _json(run_dir / IDS_FILE).get("wandb")
            if run_id and any(p.name.endswith(str(run_id)) for p in folder.iterdir()):
                found.append(name)
    return found
