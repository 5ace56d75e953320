"""A run directory's history is never lost or mixed: how a command may start in one, decided before it writes.

    plan = plan_start(run_dir, resume, overwrite, config, writes)   # reads only; raises a one-line UserError
    ... load plan.checkpoint (every rank) ...
    begin(run_dir, plan, config_yaml)                               # main process: the first write of the command

Rules (README "Resuming"):

- A fresh start (no `--resume`) in a directory that holds a run is refused, unless `--overwrite`: then this
  command deletes that run's files (listing them) before it trains — exactly what the run's manifest lists
  (`manifest.py`), a folder's own entries and never the folder's others; whatever else is in the directory is
  kept and named ("kept: 2 files that are not this run's: a.txt, notes/"). Nothing is ever deleted without
  that flag, and every path is checked before the first is deleted, so a refusal leaves all as it was.
- A directory whose `checkpoints/`, `ranks/`, `config.yaml` … are another tool's (no manifest lists them and
  their content is not a run's) is no run: refused in every mode, never written into, never emptied. A run of
  an earlier ssl_vit has no manifest but is recognised by its content, resumes and is overwritten as before.
  Our folders may be links to other disks (`checkpoints -> /scratch/x`): the run writes through the link, and
  `--overwrite` empties the run's entries behind it and keeps the link; a link that leads nowhere is refused.
- `--resume auto` continues from `checkpoints/latest`. A `latest` that is missing while checkpoints exist, or
  that names a checkpoint that is gone or incomplete, is refused, naming the intact checkpoints and how to
  resume from one (`--resume PATH`): it never falls back to step 0. A directory without any checkpoint starts
  at step 0 (nothing of a run can be lost: it never saved one).
- `--resume PATH` continues from that checkpoint. If it is an earlier checkpoint of this run, the later
  checkpoints would be replaced: refused unless `--overwrite`. A checkpoint of another run starts a new run
  from those weights in `output_dir`, which must hold no run (or `--overwrite`).
- The recipe may change on resume only in its changeable keys (`recipe_changes.py`); the data is compared by
  identity (`data/identity.py`: the shards' sha256 sums, recorded in each checkpoint), so another spelling of
  the same shards resumes and shards rebuilt in place refuse, naming the shard. A resume records its step,
  checkpoint and changes in `resumes.jsonl`.

`plan_start` runs on the main process under the run's lock (`run_lock.py`) and writes nothing; `begin` is
the first write, so a refused command leaves the directory byte for byte as it was.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from ..errors import CheckpointError, ConfigError, RunDirectoryError
from ..files import append_line, atomic_write
from ..ownership import Removal
from . import checkpoint as ckpt
from .manifest import RunOwnership, write_manifest
from .metrics import truncate_after
from .recipe_changes import recipe_changes

CONFIG_FILE = "config.yaml"
RESUMES_FILE = "resumes.jsonl"
LOGS = ("metrics.jsonl", "eval.jsonl")


@dataclass
class StartPlan:
    """Where a command starts: a checkpoint (None: step 0) and what it will replace once it goes ahead."""

    checkpoint: Path | None = None
    step: int = 0
    replaces: list[Path] = field(default_factory=list)  # the run's files and checkpoints `begin` deletes
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    note: str = ""  # printed before training
    removal: Removal | None = None  # what `begin` deletes (checked in full by the plan) and keeps
    claims: dict[str, str] | None = None  # the manifest `begin` writes (None: none, e.g. a dry run's plan)
    data: list[dict] | None = None  # the identity of the shards the recipe names, recorded in every checkpoint


def plan_start(run_dir: Path, resume: str | None, overwrite: bool, config: dict | None,
               writes: Iterable[str] = ()) -> StartPlan:
    """Decide how this command starts in `run_dir`, or refuse with one line (`RunDirectoryError`,
    `CheckpointError`, `ConfigError`, `StorageError`). Reads only. `writes`: the files the command writes into
    the run directory besides the trainer's (they are the run's, `manifest.py`)."""
    root = run_dir / ckpt.CHECKPOINTS
    owned = RunOwnership.read(run_dir, config, writes)
    owned.refuse_foreign()
    held = owned.present()
    data = data_identity(config)
    if resume is None:
        if held and not overwrite:
            raise RunDirectoryError(
                f"{run_dir} already holds a run ({_summary(run_dir, held)}); pass --resume auto to continue it, "
                "--overwrite to delete it and start afresh, or choose another output_dir")
        plan = StartPlan(removal=owned.removal() if held else None)
    elif resume == "auto":
        plan = _auto(run_dir, root, config, data)
    else:
        found = ckpt.resolve_checkpoint(resume)
        plan = StartPlan(checkpoint=found, step=(ckpt.checkpoint_step(found) or 0), changes=_changes(found, config, data))
        if found.parent.resolve() == root.resolve():  # an earlier checkpoint of this very run
            later = [p for p in ckpt.list_checkpoints(root) if ckpt.checkpoint_step(p) > plan.step]
            if later and not overwrite:
                raise RunDirectoryError(
                    f"--resume {resume}: {run_dir} holds later checkpoints ({', '.join(p.name for p in later)}), which "
                    f"resuming from step {plan.step} would replace; pass --overwrite to replace them (they are deleted), "
                    "or resume into another output_dir")
            plan.removal = Removal(run_dir, delete=later) if later else None
        elif held:
            if not overwrite:
                raise RunDirectoryError(
                    f"--resume {resume}: {run_dir} already holds another run ({_summary(run_dir, held)}); choose an "
                    "empty output_dir to continue from that checkpoint there, or pass --overwrite to delete the run in it")
            plan.removal = owned.removal()
    if plan.removal is not None:
        plan.removal.check()  # every path, before `begin` deletes the first
        plan.replaces = list(plan.removal.delete)
        plan.note = _replacing(plan.removal) or plan.note
    plan.claims = owned.claims(config, writes, plan.removal)
    plan.data = data
    return plan


def begin(run_dir: Path, plan: StartPlan, config_yaml: str | None, world_size: int) -> None:
    """The command's first writes (main process, after every check passed and the checkpoint loaded)."""
    root = run_dir / ckpt.CHECKPOINTS
    if plan.removal is not None:
        plan.removal.run()
    if plan.checkpoint is not None and plan.checkpoint.parent.resolve() == root.resolve():
        if ckpt.latest_checkpoint(root) != plan.checkpoint:
            atomic_write(root / ckpt.LATEST, plan.checkpoint.name + "\n")  # a kill before the next save resumes here
    ckpt.remove_stale_temporaries(root)
    for name in LOGS:  # records past the start were written by steps this run takes again
        truncate_after(run_dir / name, plan.step)
    if config_yaml is not None:
        atomic_write(run_dir / CONFIG_FILE, config_yaml)
    if plan.checkpoint is not None:
        record = {"step": plan.step, "checkpoint": str(plan.checkpoint), "processes": world_size,
                  "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "changed": {k: [old, new] for k, (old, new) in plan.changes.items()}}
        append_line(run_dir / RESUMES_FILE, json.dumps(record, default=str))
    if plan.claims is not None:  # before the trainer's, trackers' and session's writes; what came before it here
        write_manifest(run_dir, plan.claims)  # (config.yaml, the logs) a kill would leave recognisable by content


def run_files(run_dir: Path, config: dict | None = None) -> list[Path]:
    """The files and folders of a run that `run_dir` holds (empty for a new or empty directory)."""
    return RunOwnership.read(run_dir, config).present()


def data_identity(config: dict | None) -> list[dict] | None:
    """The identity of the shards `config` trains on (`data/identity.py`), or None for a recipe that names none
    (fine-tuning takes its data from the command line)."""
    from ..data import resolve_spec
    from ..data.identity import shard_records

    data = (config or {}).get("data") or {}
    if not data.get("train"):
        return None
    return shard_records(resolve_spec(data["train"], data.get("split"),
                                      follow_symlinks=bool(data.get("follow_symlinks"))))


# ------------------------------------------------------------------------------------------------ pieces
def _auto(run_dir: Path, root: Path, config: dict | None, data: list[dict] | None) -> StartPlan:
    pointer = root / ckpt.LATEST
    intact = ckpt.list_checkpoints(root)
    if pointer.is_file():
        name = pointer.read_text().strip()
        found = ckpt.latest_checkpoint(root)
        if found is None:
            state = "is incomplete" if (root / name).is_dir() else "does not exist"
            raise CheckpointError(f"{pointer} names {name}, which {state}; {ckpt.intact_choices(root, intact)}")
        return StartPlan(checkpoint=found, step=(ckpt.checkpoint_step(found) or 0), changes=_changes(found, config, data))
    if intact or any(root.glob("step_*")):
        raise CheckpointError(f"{pointer} is missing, so the run's latest checkpoint is unknown; {ckpt.intact_choices(root, intact)}")
    note = f"--resume auto: no checkpoint in {root}; starting from step 0"
    return StartPlan(note=note)


def _changes(found: Path, config: dict | None, data: list[dict] | None) -> dict[str, tuple[Any, Any]]:
    """The recipe keys this resume changes (fixed ones refuse); the checkpoint's recipe is its config.yaml, the
    data it was trained on its state's `data` (checkpoints of earlier versions have none: the spelling decides)."""
    if not config:
        return {}
    recipe = found / CONFIG_FILE
    try:
        saved = yaml.safe_load(recipe.read_text()) if recipe.is_file() else ckpt.read_state(found).get("config")
    except yaml.YAMLError as err:
        raise CheckpointError(f"{recipe}: not valid YAML ({' '.join(str(err).split())[:200]}); restore it from "
                              f"{found / ckpt.STATE_FILE}'s config or resume from another checkpoint") from None
    if not isinstance(saved, dict):
        return {}
    recorded = _recorded_data(found) if data is not None else None
    if recorded is not None:
        from ..data.identity import data_difference

        problem = data_difference(recorded, data)
        if problem is not None:
            raise ConfigError(
                f"--resume: {problem}; the checkpoint {found} was trained on the data as it was then. Resume with "
                "those shards, or start a new run on the new ones in another output_dir")
    return recipe_changes(saved, config, str(found), same_data=recorded is not None)


def _recorded_data(found: Path) -> list[dict] | None:
    """The shards' identity a checkpoint records, read with its tensors memory-mapped (not loaded); None when it
    records none or cannot be read here (loading it says why)."""
    import torch

    try:
        state = torch.load(found / ckpt.STATE_FILE, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - a damaged or unsafe file is reported by the load that follows
        return None
    recorded = state.get("data") if isinstance(state, dict) else None
    return recorded if isinstance(recorded, list) else None


def _summary(run_dir: Path, held: list[Path]) -> str:
    latest = ckpt.latest_checkpoint(run_dir / ckpt.CHECKPOINTS)
    if latest is not None:
        return f"latest checkpoint {latest.name}"
    intact = ckpt.list_checkpoints(run_dir / ckpt.CHECKPOINTS)
    if intact:
        return f"checkpoints {', '.join(p.name for p in intact)}"
    return ", ".join(p.name for p in held)


def _replacing(removal: Removal) -> str:
    """`--overwrite: deleting …; kept: 2 files that are not this run's: a.txt, notes/`."""
    parts = [f"--overwrite: deleting {removal.deleting_line()}" if removal.delete else "", removal.kept_line("this run's")]
    return "; ".join(p for p in parts if p)
