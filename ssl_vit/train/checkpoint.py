"""Atomic checkpoints that a resumed run continues from exactly: a dict of component states beside the recipe.

Layout of a run directory's `checkpoints/`:

    step_0001000/state.pt        the components every rank shares, written by rank 0: `model` (the objective's
                                 state_dict, unwrapped), `optimizer`, `scheduler`, `feed` (the data segment and the
                                 split's key ledger: feed.py), `precision` (fp16's loss scale; empty otherwise);
                                 beside them `step`, `config` (the recipe), `world_size`, `accumulation`,
                                 `global_batch`, `data` (the shards' identity, `data/identity.py`: a resume
                                 compares it; absent before 2026-12), and `format` + `version`
    step_0001000/rng_rank{r}.pt  every rank's own components: `rng` (python, numpy, torch CPU, CUDA when present)
                                 and `feed` (its loader workers' stream positions)
    step_0001000/config.yaml     the resolved recipe, for people
    latest                       a text file naming the newest complete checkpoint

Format version 1 (before 2026-12) kept the same states under other keys (`stream`, `split_keys`, `loss_scaler`;
the RNG states and `stream_positions` at the top of `rng_rank{r}.pt`); `read_state` and `load_checkpoint` read
it as version 2, so older runs resume exactly.

A checkpoint is written into `.tmp-step_…` and renamed when every rank has finished its part, and `latest` is
replaced (write, then rename) only after that; a crash or kill at any moment leaves `latest` naming a complete
checkpoint. Everything is stored in types that `torch.load(weights_only=True)` accepts, so loading a
checkpoint never runs pickled code.

Model and optimizer go through `torch.distributed.checkpoint.state_dict`, which gives full, unwrapped
parameter names for plain, DDP and FSDP models alike.
"""
from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from ..errors import CheckpointError
from ..files import atomic_write, make_dir, publish_dir
from ..safe_load import load_weights_only
from .agreement import HostAgreement

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STATE_FILE = "state.pt"
STEP_NAME = re.compile(r"^step_(\d+)$")
RNG_KEYS = ("python", "numpy", "torch", "cuda")
FORMAT, VERSION = "ssl_vit.checkpoint", 2
SHARED = ("model", "optimizer", "scheduler", "feed", "precision")  # the components in state.pt


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def checkpoint_step(path: Path) -> int | None:
    """The step a checkpoint directory's name says (`step_0001000` → 1000), without reading it; None otherwise."""
    match = STEP_NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first (temporary directories are not complete)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(STEP_NAME.match(p.name).group(1)))


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint `latest` names, if it is complete."""
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / STATE_FILE).is_file() else None


def remove_stale_temporaries(root: Path) -> None:
    """Delete half-written checkpoints a killed run left behind (main process, before training)."""
    if root.is_dir():
        for p in root.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True)


# --------------------------------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    """This process's RNG states in weights-only-safe types (numpy's key array becomes a tensor)."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state({
        "bit_generator": n["bit_generator"],
        "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
        "has_gauss": n["has_gauss"],
        "gauss": n["gauss"],
    })
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# -------------------------------------------------------------------------------------------------- save
def _write(obj: Any, path: Path) -> None:
    """One file of a checkpoint (a separate function so tests can make it fail half-way); a full disk is
    reported as such (`atomic_write`), never as torch's "unexpected pos 704 vs 598"."""
    atomic_write(path, lambda f: torch.save(obj, f))


def save_checkpoint(
    root: Path,
    step: int,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    meta: dict[str, Any],
    config_yaml: str | None,
    rank: int,
    agreement: HostAgreement,
    keep_last: int,
    components: dict[str, dict[str, Any]] | None = None,
    rank_components: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Write checkpoint `step` on every rank (a collective call); returns its final path.

    `model`, `optimizer` and `scheduler` are the components `load_checkpoint` restores in place; `components`
    (the others' states, e.g. the feed's and the precision's: rank 0's are written) go into `state.pt` beside
    them and `meta` (the recipe and the batch arithmetic); `rank_components` (this rank's own, e.g. its loader
    workers' positions) beside its RNG states in `rng_rank{rank}.pt`.

    If any rank fails, nobody publishes it: the temporary directory is removed, `latest` keeps naming the
    previous checkpoint, and every rank raises CheckpointError.
    """
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{final.name}"
    model_state, optim_state = get_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )  # collective under FSDP; the full state lands on rank 0
    error: BaseException | None = None
    try:
        make_dir(tmp)
        _write({"rng": rng_state(), **(rank_components or {})}, tmp / f"rng_rank{rank}.pt")
        if rank == 0:
            state = {"format": FORMAT, "version": VERSION, "step": step, **meta, "model": model_state,
                     "optimizer": optim_state, "scheduler": scheduler.state_dict(), **(components or {})}
            _write(state, tmp / STATE_FILE)
            if config_yaml is not None:
                atomic_write(tmp / "config.yaml", config_yaml)
    except Exception as err:  # noqa: BLE001 — any failure must reach the other ranks, not hang them
        error = err
    ok = agreement.all(error is None)
    if rank == 0:
        try:
            if ok:
                _publish(tmp, final)
                _prune(root, keep_last)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
        except Exception as err:  # noqa: BLE001 — e.g. a full disk while writing `latest`: tell the others
            error = err
    # Nobody reads `latest` before it is written, and a failed publish on rank 0 stops every rank too.
    published = agreement.all(error is None)
    if not (ok and published):
        previous = latest_checkpoint(root)
        reason = f": {error}" if error is not None else " on another rank"
        raise CheckpointError(
            f"could not write checkpoint {final}{reason}. "
            f"`latest` still names {previous or 'no checkpoint'}; free space or fix permissions and resume."
        ) from error
    return final


def _publish(tmp: Path, final: Path) -> None:
    """Rename the finished directory into place, then point `latest` at it (each step atomic)."""
    publish_dir(tmp, final)  # the same step saved again (a signal right at a checkpoint step) replaces it
    atomic_write(final.parent / LATEST, final.name + "\n")


def _prune(root: Path, keep_last: int) -> None:
    keep = latest_checkpoint(root)
    for path in list_checkpoints(root)[:-keep_last]:
        if path != keep:
            shutil.rmtree(path, ignore_errors=True)


# -------------------------------------------------------------------------------------------------- load
def find_checkpoint(path: str | Path) -> Path | None:
    """The checkpoint directory `path` stands for: itself, the one holding a `state.pt` file, or the latest of a
    run directory or its `checkpoints/`; None when there is none. Every command that takes a checkpoint asks here."""
    path = Path(path)
    if path.is_file():
        return path.parent if path.name == STATE_FILE else None
    if (path / STATE_FILE).is_file():
        return path
    for root in (path / CHECKPOINTS, path):
        found = latest_checkpoint(root)
        if found is not None:
            return found
    return None


def resolve_checkpoint(path: str | Path, flag: str = "--resume") -> Path:
    """The checkpoint a user-given path stands for (`find_checkpoint`), or one line saying why there is none:
    when the path is a run whose `latest` is broken, the line names its intact checkpoints."""
    found = find_checkpoint(path)
    if found is not None:
        return found
    path = Path(path)
    for root in (path / CHECKPOINTS, path):
        intact = list_checkpoints(root)
        if intact:
            raise CheckpointError(f"{flag} {path}: {root / LATEST} is missing or names no intact checkpoint; "
                                  f"{intact_choices(root, intact)}")
    raise CheckpointError(
        f"{flag} {path}: no checkpoint there (expected a directory with {STATE_FILE}, a run directory, or "
        f"its {CHECKPOINTS}/ with a `{LATEST}` file)")


def intact_choices(root: Path, intact: list[Path]) -> str:
    """How to go on when `latest` cannot be trusted: the intact checkpoints under `root` and how to resume."""
    if not intact:
        return (f"no intact checkpoint is left in {root}: start afresh with --overwrite (deletes the run) or in "
                "another output_dir")
    return f"intact checkpoints: {', '.join(p.name for p in intact)}; resume from one with --resume {intact[-1]}"


def read_state(path: Path) -> dict[str, Any]:
    """`state.pt` of a checkpoint, loaded weights-only (no pickled code runs), in today's format whatever its version."""
    file = path / STATE_FILE
    if not file.is_file():
        raise CheckpointError(f"{file}: missing; is {path} a checkpoint directory?")
    state = load_weights_only(file, "Was it written by ssl-vit pretrain?")
    if not isinstance(state, dict):
        raise CheckpointError(f"{file}: not a checkpoint written by ssl-vit pretrain (it holds a {type(state).__name__})")
    return upgrade_state(state, file)


def upgrade_state(state: dict[str, Any], file: Path) -> dict[str, Any]:
    """A `state.pt` of any format version as version 2 (the module's docstring): v1 kept the feed's segment under
    `stream`, its ledger under `split_keys` and fp16's scale under `loss_scaler`."""
    version = state.get("version", 1)
    if version == VERSION:
        return state
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(f"{file}: checkpoint format version {version}, newer than this ssl_vit reads "
                              f"({VERSION}); upgrade ssl_vit to resume or read it")
    state = dict(state)
    stream = state.pop("stream", None) or {}
    feed = {"segment": int(stream.get("segment", state.get("step", 0)))}
    if "split_keys" in state:
        feed["split_keys"] = state.pop("split_keys")
    state.update(format=FORMAT, version=VERSION, feed=feed, precision=state.pop("loss_scaler", None) or {})
    return state


def upgrade_rank_state(state: dict[str, Any]) -> dict[str, Any]:
    """An `rng_rank{r}.pt` of format version 1 (RNG states and `stream_positions` at the top) as version 2."""
    if "rng" in state:
        return state
    return {"rng": {k: state[k] for k in RNG_KEYS if k in state},
            "feed": {"positions": list(state.get("stream_positions", [])),
                     "next_worker": int(state.get("stream_next_worker", 0))}}


@dataclass
class Restored:
    """What `load_checkpoint` hands back besides the weights it loaded in place."""

    step: int
    meta: dict[str, Any]  # the recipe (`config`), `world_size`, `accumulation`, `global_batch`, …
    components: dict[str, dict[str, Any]]  # the shared states not loaded here: `feed`, `precision`
    rank_components: dict[str, dict[str, Any]]  # this rank's own, without `rng`: `feed` (empty without its file)
    rng_restored: bool  # False: the checkpoint had no RNG file for this rank


def load_checkpoint(
    path: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    rank: int,
) -> Restored:
    """Restore model, optimizer, scheduler and this rank's RNG in place; the other components come back to the caller.

    The optimizer's moments and the schedule's position come from the checkpoint; its hyperparameters (lr,
    weight decay, betas, …) and the schedule's base rates stay those of the optimizer and scheduler given,
    which the current recipe built: a resume with a changed changeable key (`recipe_changes.py`) trains on
    with the new values from the resumed step on, and an unchanged recipe continues exactly.
    """
    state = read_state(path)
    recipe = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    try:
        set_state_dict(
            model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
            options=StateDictOptions(full_state_dict=True, strict=True),
        )
    except (RuntimeError, KeyError, ValueError) as err:
        raise CheckpointError(
            f"{path} does not fit this model and objective ({' '.join(str(err).split())[:300]}); resume with the "
            "recipe the checkpoint was written with (its config.yaml)"
        ) from None
    scheduler.load_state_dict(state["scheduler"])
    apply_recipe(optimizer, scheduler, recipe)
    rng_file = path / f"rng_rank{rank}.pt"
    own: dict[str, Any] = {}
    if rng_file.is_file():
        loaded = load_weights_only(rng_file, "Delete the checkpoint's rng_rank*.pt files to resume with fresh random draws.")
        try:
            own = upgrade_rank_state(loaded)
            set_rng_state(own["rng"])
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError) as err:
            raise CheckpointError(
                f"{rng_file}: not an RNG state written by ssl-vit pretrain ({type(err).__name__}: "
                f"{' '.join(str(err).split())[:120]}); delete the checkpoint's rng_rank*.pt files to resume with "
                "fresh random draws (the run then differs from an uninterrupted one), or resume from another checkpoint"
            ) from None
    return Restored(
        step=int(state["step"]),
        meta={k: v for k, v in state.items() if k not in SHARED},
        components={k: state.get(k) or {} for k in SHARED[3:]},
        rank_components={k: v for k, v in own.items() if k != "rng"},
        rng_restored=bool(own),
    )


def apply_recipe(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                 recipe: list[dict[str, Any]]) -> None:
    """Put the recipe's hyperparameters back into the loaded optimizer and rebase the schedule on them.

    `recipe` is each param group's settings before loading (`initial_lr` is the group's base rate, set when
    the scheduler was built). The rate of the next step is then the new schedule's value at the resumed step.
    """
    for group, settings in zip(optimizer.param_groups, recipe):
        group.update(settings)
    scheduler.base_lrs = [settings["initial_lr"] for settings in recipe]
    factors = [fn(scheduler.last_epoch) for fn in scheduler.lr_lambdas]  # LambdaLR: one factor function per group
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, factors):
        group["lr"] = base * factor
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
