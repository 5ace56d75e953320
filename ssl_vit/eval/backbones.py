"""Which backbone to evaluate: `--checkpoint` strings → a factory that builds it at any resolution.

Accepted forms:
  - `random:MODEL[:SEED]`: the registered architecture at its random initialisation (the baseline a
    pretrained backbone must beat), reproducible from the seed;
  - a trainer run directory, its `checkpoints/`, one `step_…/` directory or its `state.pt`: the objective's
    weights (keys `backbone.*`), the architecture from the checkpoint's recipe, opened as `ssl-vit export` and
    `analyze` open it (`ssl_vit.train.restore.open_checkpoint`: its config.yaml, else the copy inside state.pt);
  - an exported backbone (`.safetensors` with its `.json`), which records its architecture;
  - a Hugging Face ViT folder or a timm folder (config.json + weights: `ssl-vit export --format hf|timm`'s, or
    anybody's), whose config.json gives the architecture; or such a folder on the Hugging Face Hub, named
    `hf-hub:ORG/NAME[@REVISION]` (or `ORG/NAME` when no such local path exists: `models/hub_weights.py`), read from
    huggingface_hub's cache (fetched first unless HF_HUB_OFFLINE=1), labelled `ORG/NAME`;
  - any other timm- or Hugging-Face-layout ViT state dict (`.pth`, `.bin`, `.safetensors`) or MAE checkpoint
    (`checkpoint-*.pth`, decoder dropped), which does not:
    then `--model NAME` says what to build.
`build(**overrides)` makes a fresh model with ViTConfig overrides (e.g. `img_size=384` for fine-tuning;
`load_backbone` resamples the position embeddings in 2D) and the weights loaded.

`random_baseline()` is the checkpoint's own initial weights: the pretraining seeded `torch.manual_seed(train.seed)`
and built the backbone from its recorded config before anything else drew a random number, so the same seed and
config rebuild them exactly (tested against a run's step-0 weights). A trainer checkpoint records `train.seed` in
its config, an export made by `ssl-vit export` in its JSON; for other weights the seed is unknown and the
evaluation's seed stands in (the command says so).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch

from ssl_vit.errors import CheckpointError
from ssl_vit.models import ViTConfig, VisionTransformer, model_config
from ssl_vit.models.formats import folder_kind
from ssl_vit.models.hub_weights import fetch, fetched_name, hub_id
from ssl_vit.models.weights import load_backbone, read_folder, saved_config, suggest_model_name

RANDOM = "random"


@dataclass
class BackboneSource:
    """A resolved `--checkpoint`: a label for tables, a fingerprint for the feature cache, and a builder."""

    label: str
    spec: str
    fingerprint: str
    config: ViTConfig
    _weights: Path | Mapping | None = field(default=None, repr=False)  # a file or a state dict; None: random init
    seed: int = 0
    train_seed: int | None = None  # the pretraining's `train.seed`, when the checkpoint records it
    crop_pct: float | None = None  # the centre crop its recipe evaluates with (`eval.crop_pct`), when recorded
    init_as_recorded: bool = False  # random init: draw at `config` (the checkpoint's), then resample to the request

    @property
    def model_name(self) -> str | None:
        return suggest_model_name(self.config)

    def build(self, **overrides) -> VisionTransformer:
        """A fresh backbone with `overrides` applied to the config, weights loaded (or seeded random init)."""
        config = ViTConfig(**{**self.config.to_dict(), **overrides})
        if self._weights is None:
            with torch.random.fork_rng(devices=[]):  # the same init every time, global RNG untouched
                torch.manual_seed(self.seed)
                if not self.init_as_recorded or config == self.config:
                    return VisionTransformer(config)
                init = VisionTransformer(self.config)  # the draws the pretraining made, at its own resolution
            return load_backbone(init.state_dict(), VisionTransformer(config))
        try:
            return load_backbone(self._weights, VisionTransformer(config))
        except CheckpointError as err:
            if isinstance(self._weights, Mapping):  # a trainer checkpoint's weights: name it, not "state dict"
                raise CheckpointError(f"--checkpoint {self.spec}: {err}") from None
            raise

    def eval_defaults(self) -> dict:
        """Resolution, crop and pooling as trained: what `ssl-vit eval` uses unless the recipe sets them."""
        return {"image_size": self.config.img_size, "crop_pct": self.crop_pct,
                "pool": "mean" if self.config.global_pool == "avg" else "cls"}

    def random_baseline(self, seed: int | None = None) -> "BackboneSource":
        """The checkpoint's own initial weights (its `train_seed`), else `seed`: what `--baseline random` adds."""
        seed = self.train_seed if self.train_seed is not None else (self.seed if seed is None else seed)
        name = self.model_name or f"vit_d{self.config.embed_dim}x{self.config.depth}"
        return BackboneSource(f"random-init {name} (seed {seed})", f"{RANDOM}:{name}:{seed}",
                              _random_fingerprint(self.config, seed, "as-recorded"), self.config, None, seed,
                              train_seed=seed, init_as_recorded=True, crop_pct=self.crop_pct)


def resolve_backbone(checkpoint: str, model: str | None = None, seed: int = 0) -> BackboneSource:
    """Resolve a `--checkpoint` value (see the module docstring); every failure names what to pass instead."""
    if checkpoint.startswith(f"{RANDOM}:"):
        return _random(checkpoint, seed)
    hub = hub_id(checkpoint, "--checkpoint")
    if hub is not None:  # its snapshot in huggingface_hub's cache: a Hugging Face or timm folder
        folder = fetch(hub, "--checkpoint")
        return _from_weights(folder, model, seed, label=hub.name, spec=checkpoint,
                             shown=f"{checkpoint} ({fetched_name(hub, folder)})")
    path = Path(checkpoint)
    if not path.exists():
        raise CheckpointError(f"--checkpoint {checkpoint}: no such file or directory (or use random:MODEL[:SEED], or "
                              "a Hugging Face Hub id hf-hub:ORG/NAME)")
    found = _trainer_checkpoint(path)
    if found is not None:
        return _from_trainer(found, model)
    if path.is_dir() and folder_kind(path) is None:
        raise CheckpointError(
            f"--checkpoint {path} is a directory but not a trainer run or checkpoint (no checkpoints/latest or "
            "state.pt), nor a Hugging Face / timm folder (no config.json); pass the weights file inside it"
        )
    return _from_weights(path, model, seed, label=path.stem, spec=str(path), shown=str(path))


# ------------------------------------------------------------------------------------------------ helpers
def _from_weights(path: Path, model: str | None, seed: int, *, label: str, spec: str, shown: str) -> BackboneSource:
    """Weights in a file or a Hugging Face / timm folder: the architecture from what they record, else `--model`."""
    config = _model_config(model, spec) if model else saved_config(path)
    if config is None:
        hint = _guess(path)
        raise CheckpointError(
            f"--checkpoint {shown} holds bare weights without the model's configuration; pass --model NAME"
            f"{hint} (see `ssl-vit models` or ssl_vit.models.list_models())"
        )
    weights = read_folder(path)[0] if path.is_dir() else path  # a folder changes when its weights do
    record = _export_record(path)
    train_seed, crop_pct = record.get("train_seed"), record.get("crop_pct")
    return BackboneSource(label, spec, _file_fingerprint(weights, model), config, path, seed,
                          train_seed=train_seed if isinstance(train_seed, int) else None,
                          crop_pct=float(crop_pct) if isinstance(crop_pct, (int, float)) else None)


def _random(checkpoint: str, default_seed: int) -> BackboneSource:
    _, _, rest = checkpoint.partition(":")
    name, _, seed_text = rest.partition(":")
    if seed_text and not seed_text.isdigit():
        raise CheckpointError(f"--checkpoint {checkpoint}: the seed after the model name must be an integer")
    seed = int(seed_text) if seed_text else default_seed
    config = _model_config(name, checkpoint)
    return BackboneSource(f"random-init {name} (seed {seed})", checkpoint, _random_fingerprint(config, seed),
                          config, None, seed)


def _model_config(name: str, where: str) -> ViTConfig:
    try:
        return model_config(name)
    except KeyError as err:
        raise CheckpointError(f"{where}: {err.args[0]}") from None


def _random_fingerprint(config: ViTConfig, seed: int, *how: str) -> str:
    return "random:" + hashlib.sha256(json.dumps([config.to_dict(), seed, torch.__version__, *how]).encode()).hexdigest()[:16]


def _export_record(path: Path) -> dict:
    """What `ssl-vit export` recorded (train_seed, crop_pct, step…): its sidecar JSON, or the `ssl_vit` entry of an
    exported folder's config.json; {} for anything else."""
    sidecar = path / "config.json" if path.is_dir() else path.with_suffix(".json")
    try:
        info = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        record = info.get("ssl_vit") if path.is_dir() else info
    except (ValueError, AttributeError, OSError):
        return {}  # saved_config reports an unreadable sidecar; these are only defaults
    return record if isinstance(record, dict) else {}


def _file_fingerprint(path: Path, model: str | None) -> str:
    """The sha256 of the weights file's bytes (and the model it is read as): the feature cache's key follows the
    weights themselves, so a file rewritten in place — even with its old size and date — is a miss. It costs
    one read of the file: 4.1 s for 343 MB (a ViT-B/16 export) on a loaded 2-core machine, against minutes of
    feature extraction saved."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256")
    digest.update(f"|{model}".encode())
    return "sha256:" + digest.hexdigest()[:32]


def _trainer_checkpoint(path: Path) -> Path | None:
    """The checkpoint directory a run dir / checkpoints dir / step dir / state file stands for (train/restore.py's
    rules, shared with export and analyze)."""
    from ssl_vit.train.restore import locate_checkpoint

    return locate_checkpoint(path, "--checkpoint")


def _from_trainer(path: Path, model: str | None) -> BackboneSource:
    """The backbone of a trainer checkpoint, built as its recipe describes (`open_checkpoint`: config.yaml, else the
    copy inside state.pt); `model` names the architecture instead, and then a checkpoint without a recipe opens too."""
    from ssl_vit.train.restore import missing_recipe, open_checkpoint

    opened = open_checkpoint(path, need_recipe=False)
    recipe = opened.recipe
    if recipe is None and model is None:
        raise CheckpointError(f"{missing_recipe(path)} (or pass --model NAME to read its backbone without one)")
    config = _model_config(model, str(path)) if model else _trainer_config(recipe)
    step = opened.step
    run = path.parent.parent.name if path.parent.name == "checkpoints" else path.name
    label = f"{run}@{step}" if step is not None else run
    state_file = path / "state.pt"
    return BackboneSource(label, str(path), _file_fingerprint(state_file, model), config, opened.weights,
                          train_seed=None if recipe is None else recipe.train.seed,
                          crop_pct=None if recipe is None else recipe.eval.crop_pct)


def _trainer_config(cfg) -> ViTConfig:
    """The backbone a pretraining recipe built, as evaluation builds it (no stochastic depth)."""
    from ssl_vit.config import model_overrides

    overrides = {k: v for k, v in model_overrides(cfg).items() if k != "drop_path_rate"}
    return model_config(cfg.model.name, **overrides)


def _guess(path: Path) -> str:
    """", e.g. --model vit_base_patch16" when the weights' shapes match a registered size."""
    try:
        name = suggest_model_name(load_backbone(path).config)  # infers the size from the shapes
    except Exception:  # noqa: BLE001 - only a hint
        return ""
    return f" (its shapes fit --model {name})" if name else ""
