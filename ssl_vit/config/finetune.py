"""The fine-tuning recipe (`recipes/finetune/*.yaml`): the pretraining schema's data/optim/train sections,
with SGD, momentum and layer-wise learning-rate decay added to `optim`.

    model: {drop_path_rate: 0.1}                 # ViTConfig overrides; the architecture is the checkpoint's
                                                 # (init_from: WEIGHTS names the checkpoint when --checkpoint is absent)
    objective: {label_smoothing: 0.1, mixup_alpha: 0.8, cutmix_alpha: 1.0}
    data: {image_size: 384, batch_size: 64, crop_pct: 1.0, ...}
    optim: {name: sgd, lr: 0.01, momentum: 0.9, weight_decay: 0, grad_clip: 1.0, layer_decay: 1.0, warmup_steps: 500}
    train: {global_batch: 512, total_steps: 20000, checkpoint_every: 1000, ...}
    holdout_fraction: 0.0                        # > 0 (the paper: 0.01–0.02): hold out this part of --train and
                                                 # select the step scoring best on it; test is read only at the end
    val_every: null                              # steps between holdout validations; null: once per epoch

The training data is `--train`, the validation data `--test` of `ssl-vit eval finetune`. Loaded by the one
recipe loader (`loader.py`), so `base:`, dotted overrides and the error messages are the pretraining ones.
"""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError
from .loader import load_recipe, source_of
from .pretrain import DataConfig, OptimConfig, TrainConfig, check_stream_options


@dataclass
class FinetuneData(DataConfig):
    crop_pct: float = 0.875  # validation: centre crop of this fraction, resized to image_size
    num_classes: int | None = None  # when the shards do not list class_names


@dataclass
class FinetuneOptim(OptimConfig):
    """SGD (the ViT paper) or AdamW (MAE); `layer_decay` < 1 scales block i's rate by decay^(depth + 1 - i)."""

    name: Literal["sgd", "adamw"] = "sgd"  # SGD with momentum (the ViT paper) or AdamW (MAE)
    lr: float = 0.01  # peak learning rate, reached at the end of the warmup
    momentum: float = 0.9  # SGD's momentum
    weight_decay: float = 0.0  # decoupled weight decay
    layer_decay: float = 1.0  # < 1: block i's rate scaled by layer_decay^(depth + 1 - i) (MAE: 0.65)


@dataclass
class FinetuneConfig:
    """A fine-tuning recipe: the backbone of --checkpoint plus a zero-initialised head, trained end to end."""

    model: dict[str, Any] = field(default_factory=dict)  # ViTConfig changes (drop_path_rate), init_from: WEIGHTS
    objective: dict[str, Any] = field(default_factory=dict)  # label_smoothing, mixup_alpha, cutmix_alpha, ...
    data: FinetuneData = field(default_factory=FinetuneData)
    optim: FinetuneOptim = field(default_factory=FinetuneOptim)
    train: TrainConfig = field(default_factory=TrainConfig)
    val_every: int | None = None  # steps between holdout validations; null: once per epoch
    holdout_fraction: float = 0.0  # > 0: hold out this part of --train and select the step scoring best on it

    @property
    def init_from(self) -> str | None:
        """`model.init_from`: the weights to fine-tune when `--checkpoint` is not given (any source it accepts)."""
        return self.model.get("init_from")

    def model_overrides(self) -> dict[str, Any]:
        """The ViTConfig overrides of `model` (everything but `init_from`)."""
        return {k: v for k, v in self.model.items() if k != "init_from"}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self, where: str, sources: dict[str, str] | None = None) -> None:
        """The loader's value-check hook: `validate` below."""
        validate(self, where, sources)


def load_finetune_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> FinetuneConfig:
    """Read a fine-tuning recipe (following `base:`), apply `key=value` overrides, check types and values."""
    return load_recipe(FinetuneConfig, path, overrides, what="fine-tuning recipe (see recipes/finetune/)",
                       sections="model:, data:, optim:, ...")


def validate(cfg: FinetuneConfig, where: str, sources: dict[str, str] | None = None) -> None:
    """Value checks; each message names where the offending key was set (the recipe or the command line)."""
    o, t = cfg.optim, cfg.train

    def at(*keys: str) -> str:
        return source_of(sources or {}, where, *keys)

    if (t.total_steps is None) == (t.epochs is None):
        raise ConfigError(f"{at('train.total_steps', 'train.epochs')}: set exactly one of train.total_steps and train.epochs")
    if not 0 < o.layer_decay <= 1:
        raise ConfigError(f"{at('optim.layer_decay')}: optim.layer_decay must be in (0, 1] (1 disables it), got {o.layer_decay}")
    if not 0 <= o.momentum < 1:
        raise ConfigError(f"{at('optim.momentum')}: optim.momentum must be in [0, 1), got {o.momentum}")
    if o.lr <= 0 or o.weight_decay < 0 or o.warmup_steps < 0:
        raise ConfigError(f"{at('optim')}: optim.lr must be positive, weight_decay and warmup_steps ≥ 0")
    check_stream_options(cfg.data, at)  # the train stream's options: the pretraining recipe's checks, in its words
    if not 0 < cfg.data.crop_pct <= 1:
        raise ConfigError(f"{at('data.crop_pct')}: data.crop_pct must be in (0, 1], got {cfg.data.crop_pct}")
    if not 0 <= cfg.holdout_fraction < 0.5:
        raise ConfigError(f"{at('holdout_fraction')}: holdout_fraction must be 0 (no selection) or a small fraction "
                          f"such as 0.02, got {cfg.holdout_fraction}")
    if cfg.val_every is not None and cfg.val_every < 1:
        raise ConfigError(f"{at('val_every')}: val_every must be a positive number of steps or null (once per epoch)")
    if cfg.init_from is not None and not isinstance(cfg.init_from, str):
        raise ConfigError(f"{at('model.init_from')}: model.init_from must be a path, got {cfg.init_from!r}")
    if "img_size" in cfg.model:
        raise ConfigError(f"{at('model.img_size')}: model.img_size: set the fine-tuning resolution with data.image_size")
    from ..objectives import ImageClassification

    options = [p for p in inspect.signature(ImageClassification).parameters if p not in ("backbone", "num_classes")]
    for key in cfg.objective:
        if key not in options:
            raise ConfigError(f"{at(f'objective.{key}')}: objective.{key} is not an option of classification; options: {', '.join(options)}")
