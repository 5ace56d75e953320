"""Opening a pretraining checkpoint: the one way `export`, `analyze` and `eval` read a checkpoint's recipe and weights.

    found = locate_checkpoint(path, "--checkpoint")   # checkpoint directory, None when `path` is something else
    opened = open_checkpoint(found)                    # recipe + state, by the rules below
    objective, cfg, state = restore_objective(found)  # the objective rebuilt from the recipe, loaded strictly

The rules, the same for every command:
  - which directory: `find_checkpoint` (train/checkpoint.py): a run directory (its `latest`), its `checkpoints/`,
    one `step_…/` directory or its `state.pt`. A directory holding checkpoints whose `latest` is missing or broken
    is refused with one line naming the intact ones (`locate_checkpoint`).
  - the recipe: the checkpoint's `config.yaml` when it is there, else the `config` saved inside `state.pt` — the
    order a resume reads them in (`run_dir.py`). The two are written from the same recipe; config.yaml is the copy
    a person reads and, when a recipe no longer fits this version of ssl_vit, repairs.
  - a damaged recipe (a config.yaml that is not YAML or not a mapping, a `config` that is not a mapping, keys or
    values this version refuses) and a missing one are one CheckpointError line naming the file and the fix.
  - a fine-tuning checkpoint (`ssl-vit eval finetune`'s: its recipe is a fine-tuning recipe, which does not say
    which backbone was fine-tuned) is refused by name; these commands open pretraining checkpoints.
  - the weights: `state.pt`'s `model`, the objective's whole state (`backbone.*`, `mask_token`, `head.*`).
    `restore_objective` rebuilds the objective from the recipe and loads it strictly (a checkpoint that does not
    fit its own recipe is damaged, and says so); evaluation reads the backbone's part (`Checkpoint.weights`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch.nn as nn
import yaml

from ..config import FinetuneConfig, PretrainConfig, build_objective, config_from_mapping
from ..errors import CheckpointError, ConfigError
from .checkpoint import CHECKPOINTS, LATEST, STATE_FILE, checkpoint_step, find_checkpoint, list_checkpoints, read_state

RECIPE_FILE = "config.yaml"


@dataclass(frozen=True)
class Checkpoint:
    """An opened checkpoint directory: its `state.pt` and its recipe (None only when opened with need_recipe=False
    and it records none)."""

    path: Path
    state: Mapping[str, Any]
    recipe: PretrainConfig | None

    @property
    def weights(self) -> Mapping[str, Any]:
        """The objective's state dict (`backbone.*`, …) as saved."""
        return self.state["model"]

    @property
    def step(self) -> int | None:
        """The step the checkpoint recorded, else the one its directory name says."""
        step = self.state.get("step")
        return step if isinstance(step, int) else checkpoint_step(self.path)


def locate_checkpoint(path: str | Path, flag: str) -> Path | None:
    """The checkpoint directory `path` stands for (`find_checkpoint`), or None when it is no checkpoint at all (the
    caller may read it as something else: weights, a folder). A directory that holds checkpoints but no usable
    `latest` raises one line (prefixed by `flag`, the command's argument) naming the intact checkpoints."""
    found = find_checkpoint(path)
    path = Path(path)
    if found is None and path.is_dir():
        for root in (path / CHECKPOINTS, path):
            intact = list_checkpoints(root)
            if intact:
                raise CheckpointError(f"{flag} {path}: {root / LATEST} is missing or names no intact checkpoint; intact "
                                      f"checkpoints: {', '.join(p.name for p in intact)}; pass one of them, e.g. "
                                      f"{intact[-1]}")
    return found


def open_checkpoint(path: Path, *, need_recipe: bool = True) -> Checkpoint:
    """Checkpoint directory `path` → its state and recipe, by the rules of the module docstring."""
    path = Path(path)
    state = read_state(path)
    if not isinstance(state, Mapping) or not isinstance(state.get("model"), Mapping):
        raise CheckpointError(f"{path / STATE_FILE}: holds no weights (`model`); was it written by ssl-vit pretrain?")
    raw, where = _raw_recipe(path, state)
    if raw is None:
        if need_recipe:
            raise missing_recipe(path)
        return Checkpoint(path, state, None)
    if _is_finetune_recipe(raw):
        raise CheckpointError(f"{path} is a fine-tuning checkpoint (its recipe is a fine-tuning recipe, which does not "
                              "name the backbone); pass the pretraining checkpoint or export it started from")
    try:
        recipe = config_from_mapping(dict(raw), where=where)
    except ConfigError as err:
        raise CheckpointError(f"{err}; the checkpoint's recipe does not fit this version of ssl_vit: correct it in "
                              f"{path / RECIPE_FILE} (read before the copy inside {STATE_FILE})") from None
    return Checkpoint(path, state, recipe)


def missing_recipe(path: Path) -> CheckpointError:
    """The one line for a checkpoint that records no recipe."""
    return CheckpointError(f"{path}: the checkpoint holds no recipe (no {RECIPE_FILE} beside {STATE_FILE}, no `config` "
                           "inside it); was it written by ssl-vit pretrain?")


def restore_objective(path: Path) -> tuple[nn.Module, PretrainConfig, Mapping[str, Any]]:
    """(objective with the checkpoint's weights, its recipe, the raw state) of checkpoint directory `path`."""
    opened = open_checkpoint(path)
    objective = build_objective(opened.recipe)
    try:
        objective.load_state_dict(opened.weights, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit its own recipe ({' '.join(str(err).split())[:300]})") from None
    return objective, opened.recipe, opened.state


# ------------------------------------------------------------------------------------------------ helpers
def _raw_recipe(path: Path, state: Mapping[str, Any]) -> tuple[Mapping | None, str]:
    """(the recipe's plain data or None, where it was read): config.yaml first, then state.pt's `config`."""
    file = path / RECIPE_FILE
    if file.is_file():
        try:
            raw = yaml.safe_load(file.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{file}: not valid YAML ({' '.join(str(err).split())[:200]}); restore it from "
                                  f"{path / STATE_FILE}'s `config`, or delete it to use that copy") from None
        if not isinstance(raw, Mapping):
            raise CheckpointError(f"{file}: not a recipe (a mapping of sections model:, data:, ...; got "
                                  f"{type(raw).__name__}); restore it from {path / STATE_FILE}'s `config`, or delete "
                                  "it to use that copy")
        return raw, str(file)
    raw = state.get("config")
    if raw is None:
        return None, ""
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{path / STATE_FILE}: its `config` is not a recipe (got {type(raw).__name__}); write the "
                              f"run's recipe to {file}")
    return raw, f"{path / STATE_FILE} config"


def _is_finetune_recipe(raw: Mapping) -> bool:
    """A fine-tuning recipe's top-level keys: some only it has, none only a pretraining recipe has."""
    pretrain = {f.name for f in dataclasses.fields(PretrainConfig)}
    finetune = {f.name for f in dataclasses.fields(FinetuneConfig)}
    keys = set(raw)
    return bool(keys & (finetune - pretrain)) and not keys & (pretrain - finetune)
