"""The pretraining recipe (`recipes/pretrain/*.yaml`): the schema, its value checks, and what it builds.

Loaded by the one recipe loader (`loader.py`: `base:`, dotted overrides, did-you-mean), so a ViT-S recipe is
the ViT-B one plus three lines. The batch arithmetic depends on the number of processes, known only at
launch: `accumulation_steps(cfg, world_size)` checks it and says which per-device batch or global batch would
fit. `build_backbone` / `build_objective` turn a recipe into the model, the same way for the pretrain command,
the recipe check and a restored checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Literal

import yaml

from ..data.stream_options import StreamOptionError, TrainStreamOptions
from ..errors import ConfigError
from .eval_data import EvalData, PeriodicEvalData
from .loader import (
    COMMAND_LINE,
    DEFAULTS,
    check_output_dir,
    first_line,
    from_mapping,
    load_recipe,
    plain,
    source_of,
)


@dataclass
class ModelConfig:
    """A registered backbone (`ssl_vit.models.list_models()`) and `ViTConfig` overrides (img_size, drop_path_rate…).

    `init_from`: start from existing weights instead of the random init — an `ssl-vit export` (file or folder), a
    timm file (.safetensors / .pth), a Hugging Face ViT folder, an MAE `checkpoint-*.pth`, a run directory or
    checkpoint, or a Hugging Face Hub id (`hf-hub:ORG/NAME[@REVISION]`; `ORG/NAME` when no such local path exists:
    models/hub_weights.py); the architecture stays this section's, and the weights must fit it (pos_embed is
    resampled to the grid)."""

    name: str = "vit_base_patch16"  # a registered backbone: ssl_vit.models.list_models(), e.g. vit_small_patch16
    overrides: dict[str, Any] = field(default_factory=dict)  # ViTConfig changes, e.g. {drop_path_rate: 0.1}
    init_from: str | None = None  # start from these weights (an export, timm, HF or MAE file, a run, a Hub id hf-hub:ORG/NAME) instead of a random init


@dataclass
class ObjectiveConfig:
    """An objective name (`mpp`, `classification`) and its constructor options (target, corruption_rate, head…)."""

    name: str = "mpp"  # mpp (masked patch prediction) or classification
    kwargs: dict[str, Any] = field(default_factory=dict)  # its options: target, corruption_rate, mask_prob, head, ...


_STREAM = TrainStreamOptions  # the train stream's options: their defaults and ranges live there, once


@dataclass
class DataConfig:
    """Where the images come from and how each worker turns them into uint8 batches."""

    train: str = ""  # a data spec: a shard directory (with `split`) or a brace-expanded URL list
    split: str = "train"  # the split of a shard directory to train on
    val: str | None = None  # a data spec of held-out images (eval.evaluators' test set when eval.test is unset)
    val_split: str = "validation"  # the split of data.val
    num_samples: int | None = None  # a URL list's sample count (directories know theirs): needed for train.epochs
    follow_symlinks: bool = False  # read local shards that lead out of their folder through symlinks (your own links; refused by default: an unpacked archive can link to any file)
    image_size: int = _STREAM.image_size  # side of the square training crops, in pixels
    batch_size: int = _STREAM.batch_size  # per device, per micro-batch
    num_workers: int = _STREAM.num_workers  # loader processes per device
    shuffle_buffer: int = _STREAM.shuffle_buffer  # samples shuffled together: the order shuffles windows of whole shards holding at least this many (0 or 1: the stored order)
    crop_scale: tuple[float, float] = _STREAM.crop_scale  # random-resized crop: min, max area (fraction of the image)
    crop_ratio: tuple[float, float] = _STREAM.crop_ratio  # random-resized crop: min, max aspect ratio
    hflip: bool = _STREAM.hflip  # flip half the images left-right
    max_bad_fraction: float = _STREAM.max_bad_fraction  # undecodable images tolerated before a DataError stops the run
    max_pixels: int | None = _STREAM.max_pixels  # width × height cap per image, before decoding (None: Pillow's bomb limit)
    shard_errors: Literal["stop", "skip"] = _STREAM.shard_errors  # a shard unreadable after retries: stop, or skip it this epoch
    check_unique_keys: bool = _STREAM.check_unique_keys  # stop when a key occurs twice in the split (16 B/sample, main process)
    remote_min_rate: float = _STREAM.remote_min_rate  # http(s) shards: bytes/s an attempt must average over remote_rate_window_s of waiting (0: no minimum), or it is retried
    remote_rate_window_s: float = _STREAM.remote_rate_window_s  # seconds of waiting the minimum rate is averaged over
    remote_cache_gb: float = _STREAM.remote_cache_gb  # GB of remote shards each node keeps local copies of (at least one shuffle window of shards)
    remote_shard_deadline_s: float | None = _STREAM.remote_shard_deadline_s  # seconds of waiting an http(s) shard may take over all its attempts (null: 15 min more than its bytes take at the minimum rate)

    def stream_options(self, pin_memory: bool = False) -> TrainStreamOptions:
        """The train stream's options from this section (same names; `pin_memory` is the device's choice). Raises
        `StreamOptionError` naming the first key out of range: recipe validation calls it, so a bad value fails
        when the recipe loads, in the stream's own words."""
        shared = {f.name: getattr(self, f.name) for f in fields(TrainStreamOptions) if hasattr(self, f.name)}
        return TrainStreamOptions(**shared, pin_memory=pin_memory)


def check_stream_options(data: DataConfig, at: Callable[..., str]) -> None:
    """`data.stream_options()`'s check, its message led by where the key was set (`at(key)`: file or command line)."""
    try:
        data.stream_options()
    except StreamOptionError as err:
        raise ConfigError(f"{at(err.key)}: {err}") from None


@dataclass
class OptimConfig:
    """AdamW with linear warmup, then cosine decay to `min_lr` (or a constant rate). Accumulation is derived."""

    name: Literal["adamw"] = "adamw"  # AdamW (no weight decay on norms, biases, position embeddings and tokens)
    lr: float = 2e-4  # peak learning rate, reached at the end of the warmup
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW's beta1, beta2
    eps: float = 1e-8  # AdamW's epsilon
    weight_decay: float = 0.1  # decoupled weight decay
    warmup_steps: int = 10_000  # optimizer steps of linear warmup from 0 to lr
    schedule: Literal["cosine", "constant"] = "cosine"  # after the warmup: cosine decay to min_lr, or constant
    min_lr: float = 0.0  # the learning rate at the end of the cosine decay
    grad_clip: float | None = 1.0  # global gradient norm; null disables


@dataclass
class TrainConfig:
    """Length, precision, logging and checkpointing of the run. A step is one optimizer update of `global_batch`."""

    global_batch: int = 4096  # images per optimizer step over all processes (accumulation fills in)
    total_steps: int | None = None  # optimizer steps of the run (or train.epochs)
    epochs: float | None = None  # instead of total_steps; needs the sample count
    seed: int = 0  # initial weights, data order and corruption draws
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on a GPU that has it, fp16 on older GPUs, else fp32
    fp16_loss_scale: float = 65536.0  # fp16 only: the initial loss scale; halves on an overflow, doubles after 2000 clean steps
    compile: bool = False  # torch.compile the objective
    grad_checkpointing: bool = False  # recompute each block in the backward: less activation memory, more compute
    log_every: int = 50  # steps between metrics.jsonl records
    checkpoint_every: int = 1000  # steps between checkpoints
    keep_last: int = 3  # checkpoints kept; older ones are deleted
    record_samples: bool = False  # write the key of every sample each step trained on (RUN/samples/, 16 B a sample): `ssl-vit samples RUN` checks it
    max_nonfinite: int = 5  # non-finite losses in a row before the run stops
    log_with: list[str] = field(default_factory=list)  # Accelerate trackers, e.g. [tensorboard]
    project: str = "ssl_vit"  # W&B project, MLflow experiment, TensorBoard folder (in the run directory)
    run_name: str | None = None  # the trackers' run name; default: the run directory's name
    collective_timeout_s: int = 600  # a collective that waits longer (a machine lost) stops the run with an error


@dataclass
class EvalConfig(PeriodicEvalData):
    """Evaluations during pretraining (ssl_vit.eval.periodic): every `every` steps (0: never) run the listed
    evaluators, e.g. `[{name: fewshot, shots: [5]}, {name: knn}]`, on labelled data. Unset data keys come
    from `data`: `train`/`split` as the labelled pool, `val`/`val_split` as the test set."""

    every: int = 0  # steps between evaluations during pretraining; 0: never
    evaluators: list[dict[str, Any]] = field(default_factory=list)  # e.g. [{name: fewshot, shots: [5]}, {name: knn}]


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "runs/pretrain"  # the run directory: config.yaml, metrics.jsonl, checkpoints/
    def to_dict(self) -> dict:
        """Plain YAML-safe data (tuples become lists), the form saved in the run directory."""
        return plain(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def validate(self, where: str, sources: dict[str, str] | None = None) -> None:
        """The loader's value-check hook: `validate` below."""
        validate(self, where, sources)

    def eval_data(self) -> EvalData:
        """The labelled data of the `eval` section: its own keys where set, else the pretraining data's (`train` /
        `split` as the labelled pool, `val` / `val_split` as the test set, its image size, batch and workers)."""
        e, d = self.eval, self.data
        own = lambda key, fallback: fallback if getattr(e, key) is None else getattr(e, key)  # noqa: E731
        return EvalData(
            train=own("train", d.train), test=own("test", d.val), train_split=own("train_split", d.split),
            test_split=own("test_split", d.val_split), image_size=own("image_size", d.image_size),
            crop_pct=own("crop_pct", EvalData.crop_pct), batch_size=own("batch_size", d.batch_size),
            num_workers=own("num_workers", d.num_workers), follow_symlinks=own("follow_symlinks", d.follow_symlinks),
        )


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> PretrainConfig:
    """Read a pretraining recipe (following `base:`), apply `key=value` overrides, check types and values."""
    cfg = load_recipe(PretrainConfig, path, overrides)
    given = any(item.partition("=")[0].strip() == "output_dir" for item in overrides)
    check_output_dir(cfg.output_dir, "output_dir", COMMAND_LINE if given else str(path) if path else DEFAULTS)
    return cfg


def config_from_mapping(data: dict, where: str = "checkpoint") -> PretrainConfig:
    """Rebuild a config from its saved dict (a run directory's `config.yaml`, a checkpoint's `config`)."""
    return from_mapping(PretrainConfig, data, where)


# ---------------------------------------------------------------------------------------------- values
def validate(cfg: PretrainConfig, where: str, sources: dict[str, str] | None = None) -> None:
    """Value checks that need no data and no process count (those happen at launch).

    Each message names where the offending key was set: the recipe file or the command line (`sources`).
    """
    t, o, d = cfg.train, cfg.optim, cfg.data

    def at(*keys: str) -> str:
        return source_of(sources or {}, where, *keys)

    positive = {
        "train.global_batch": t.global_batch, "train.log_every": t.log_every,
        "train.checkpoint_every": t.checkpoint_every, "train.keep_last": t.keep_last,
        "train.max_nonfinite": t.max_nonfinite, "optim.lr": o.lr, "train.fp16_loss_scale": t.fp16_loss_scale,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{at(key)}: {key} must be positive, got {value}")
    for key, value in {"optim.warmup_steps": o.warmup_steps, "optim.weight_decay": o.weight_decay,
                       "optim.min_lr": o.min_lr, "eval.every": cfg.eval.every}.items():
        if value < 0:
            raise ConfigError(f"{at(key)}: {key} must be ≥ 0, got {value}")
    length = at("train.total_steps", "train.epochs")
    if (t.total_steps is None) == (t.epochs is None):
        raise ConfigError(f"{length}: set exactly one of train.total_steps and train.epochs "
                          f"(got total_steps={t.total_steps}, epochs={t.epochs}; set the other to null)")
    if t.total_steps is not None and t.total_steps <= 0 or t.epochs is not None and t.epochs <= 0:
        raise ConfigError(f"{length}: the run length (train.total_steps / train.epochs) must be positive")
    if t.total_steps is not None and o.warmup_steps >= t.total_steps:
        raise ConfigError(f"{at('optim.warmup_steps', 'train.total_steps')}: optim.warmup_steps ({o.warmup_steps}) "
                          f"must be below train.total_steps ({t.total_steps}); e.g. optim.warmup_steps={t.total_steps // 10}")
    if o.min_lr > o.lr:
        raise ConfigError(f"{at('optim.min_lr', 'optim.lr')}: optim.min_lr ({o.min_lr}) is above optim.lr ({o.lr})")
    if o.grad_clip is not None and o.grad_clip <= 0:
        raise ConfigError(f"{at('optim.grad_clip')}: optim.grad_clip must be positive or null (no clipping), got {o.grad_clip}")
    if not all(0 <= b < 1 for b in o.betas):
        raise ConfigError(f"{at('optim.betas')}: optim.betas must lie in [0, 1), got {list(o.betas)}")
    check_stream_options(d, at)
    if cfg.eval.every and not cfg.eval.evaluators:
        raise ConfigError(f"{at('eval')}: eval.every is {cfg.eval.every} but eval.evaluators is empty; list some or set 0")
    _check_model(cfg, at("model", "data.image_size"), at("objective", "model", "data.image_size"))


def _check_model(cfg: PretrainConfig, model_where: str, objective_where: str) -> None:
    """Build backbone and objective on the meta device: every name and option is checked, nothing is allocated."""
    import torch

    from ..models import list_models

    key = "model.name" if cfg.model.name not in list_models() else "model.overrides"
    try:
        with torch.device("meta"):
            backbone = build_backbone(cfg)
    except (ConfigError, KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"{model_where}: {key}: {first_line(err)}") from None
    try:
        with torch.device("meta"):
            build_objective(cfg, backbone)
    except (ConfigError, KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"{objective_where}: objective: {first_line(err)}") from None


def model_overrides(cfg: PretrainConfig) -> dict[str, Any]:
    """The backbone options: recipe overrides, with `img_size` following `data.image_size` unless given."""
    return {"img_size": cfg.data.image_size, **cfg.model.overrides}


def build_backbone(cfg: PretrainConfig):
    """The recipe's backbone (`model.name` with `model_overrides`), freshly initialised."""
    from ..models import create_model

    return create_model(cfg.model.name, **model_overrides(cfg))


def build_objective(cfg: PretrainConfig, backbone=None):
    """The recipe's objective around `backbone` (default: `build_backbone(cfg)`): the one place a pretraining
    recipe becomes a model, for the pretrain command, the recipe check and restoring a checkpoint."""
    from ..objectives import build

    return build(cfg.objective.name, backbone if backbone is not None else build_backbone(cfg), **cfg.objective.kwargs)


def accumulation_steps(global_batch: int, batch_size: int, world_size: int, where: str = "recipe") -> int:
    """global_batch / (per-device batch × processes), or a ConfigError that says which numbers would fit."""
    per_step = batch_size * world_size
    if global_batch % per_step == 0:
        return global_batch // per_step
    g, b = global_batch, batch_size
    fits = [x for x in range(1, g // world_size + 1) if (g // world_size) % x == 0] if g % world_size == 0 else []
    below = max((x for x in fits if x < b), default=None)
    above = min((x for x in fits if x > b), default=None)
    options = [f"data.batch_size to {' or '.join(str(x) for x in (below, above) if x)}"] if fits else []
    lower, upper = (g // per_step) * per_step, (g // per_step + 1) * per_step
    options.append(f"train.global_batch to {' or '.join(str(x) for x in (lower, upper) if x)}")
    raise ConfigError(
        f"{where}: train.global_batch {g} is not a multiple of data.batch_size {b} × {world_size} processes = "
        f"{per_step}; set {', or '.join(options)}"
    )
