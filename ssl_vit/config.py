"""The typed recipe schema: YAML files plus `key=value` overrides → a validated `PretrainConfig`.

A recipe is pure data. Loading it checks every key and type before anything is built, so a typo fails in a
second with one line that names the file, the key and the fix:

    recipes/pretrain/x.yaml: unknown key 'optim.warmup' (did you mean 'optim.warmup_steps'?)
    command line: train.global_batch: expected an integer, got 'lots' (str)

`base:` (or `include:`) names another recipe (relative to this one) whose values this one overrides, so a
ViT-S recipe is the ViT-B one plus three lines. Overrides are dotted keys whose values parse as YAML scalars:
`optim.lr=1e-3 data.train=/data/in1k:train optim.betas=[0.9,0.95]`.

The batch arithmetic depends on the number of processes, known only at launch: `accumulation_steps(cfg,
world_size)` checks it and says which per-device batch or global batch would fit.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .errors import ConfigError

COMMAND_LINE = "command line"


@dataclass
class ModelConfig:
    """A registered backbone (`ssl_vit.models.list_models()`) and `ViTConfig` overrides (img_size, drop_path_rate…).

    `init_from`: start from existing weights instead of the random init — an `ssl-vit export` (file or folder), a
    timm file (.safetensors / .pth), a Hugging Face ViT folder or an MAE `checkpoint-*.pth`; the architecture stays
    this section's, and the weights must fit it (pos_embed is resampled to the grid)."""

    name: str = "vit_base_patch16"
    overrides: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None


@dataclass
class ObjectiveConfig:
    """An objective name (`mpp`, `classification`) and its constructor options (target, corruption_rate, head…)."""

    name: str = "mpp"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """Where the images come from and how each worker turns them into uint8 batches."""

    train: str = ""  # a data spec: a shard directory (with `split`) or a brace-expanded URL list
    split: str = "train"
    val: str | None = None
    val_split: str = "validation"
    num_samples: int | None = None  # a URL list's sample count (directories know theirs): needed for train.epochs
    image_size: int = 224
    batch_size: int = 64  # per device, per micro-batch
    num_workers: int = 8  # loader processes per device
    shuffle_buffer: int = 10_000
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 4.0 / 3.0)
    hflip: bool = True
    max_bad_fraction: float = 0.01  # undecodable images tolerated before the stream stops with a DataError
    max_pixels: int | None = None  # width × height cap per image, refused before decoding (None: Pillow's bomb limit)
    shard_errors: Literal["stop", "skip"] = "stop"  # a shard unreadable after retries: stop, or skip it for the epoch


@dataclass
class OptimConfig:
    """AdamW with linear warmup, then cosine decay to `min_lr` (or a constant rate). Accumulation is derived."""

    name: Literal["adamw"] = "adamw"
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.1
    warmup_steps: int = 10_000
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr: float = 0.0
    grad_clip: float | None = 1.0  # global gradient norm; null disables


@dataclass
class TrainConfig:
    """Length, precision, logging and checkpointing of the run. A step is one optimizer update of `global_batch`."""

    global_batch: int = 4096
    total_steps: int | None = None
    epochs: float | None = None  # instead of total_steps; needs the sample count
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on a GPU that has it, else fp32
    compile: bool = False
    grad_checkpointing: bool = False
    log_every: int = 50
    checkpoint_every: int = 1000
    keep_last: int = 3
    max_nonfinite: int = 5  # non-finite losses in a row before the run stops
    log_with: list[str] = field(default_factory=list)  # Accelerate trackers, e.g. [tensorboard]


@dataclass
class EvalConfig:
    """Evaluations during pretraining (ssl_vit.eval.periodic): every `every` steps (0: never) run the listed
    evaluators, e.g. `[{name: fewshot, shots: [5]}, {name: knn}]`, on labelled data. Unset data keys come
    from `data`: `train`/`split` as the labelled pool, `val`/`val_split` as the test set."""

    every: int = 0
    evaluators: list[dict[str, Any]] = field(default_factory=list)
    train: str | None = None
    test: str | None = None
    train_split: str | None = None
    test_split: str | None = None
    image_size: int | None = None
    batch_size: int | None = None
    num_workers: int | None = None
    crop_pct: float | None = None


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "runs/pretrain"

    def to_dict(self) -> dict:
        """Plain YAML-safe data (tuples become lists), the form saved in the run directory."""
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ------------------------------------------------------------------------------------------------ loading
def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> PretrainConfig:
    """Read a recipe (following `base:`), apply `key=value` overrides, check types and values."""
    raw: dict = _read_recipe(Path(path), seen=()) if path is not None else {}
    where = str(path) if path is not None else COMMAND_LINE
    sources = _key_sources(raw, where)
    for item in overrides:
        key, value = parse_override(item)
        _check_key(key)
        _set_dotted(raw, key, value)
        sources[key] = COMMAND_LINE
    cfg = from_dict(raw, where, sources)
    validate(cfg, where, sources)
    check_output_dir(cfg.output_dir, "output_dir", sources.get("output_dir", where))
    return cfg


def config_from_mapping(data: dict, where: str = "checkpoint") -> PretrainConfig:
    """Rebuild a config from its saved dict (a run directory's `config.yaml`, a checkpoint's `config`)."""
    cfg = from_dict(data, where, {})
    validate(cfg, where)
    return cfg


def parse_override(item: str) -> tuple[str, Any]:
    """`optim.lr=1e-3` → ("optim.lr", 0.001); values parse as YAML (`null`, `[0.9, 0.95]`, `true`)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{COMMAND_LINE}: '{item}' is not a key=value override (e.g. optim.lr=1e-3)")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"{COMMAND_LINE}: the value of '{key}' is not valid YAML ({_first_line(err)})") from None
    return key.strip(), value


def read_yaml_mapping(path: str | Path, what: str = "recipe", sections: str = "model:, data:, ...") -> dict:
    """A YAML file holding a mapping (every recipe kind reads through here): one clear line when it is not."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {_first_line(err)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a {what} is a mapping of sections ({sections}), got {type(data).__name__}")
    return data


def _read_recipe(path: Path, seen: tuple[Path, ...]) -> dict:
    if not path.is_file() and seen:
        raise ConfigError(f"{path}: recipe not found (included from {seen[-1]})")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: recipes include each other in a cycle ({' → '.join(map(str, seen))})")
    data = read_yaml_mapping(path)
    base = data.pop("base", None) or data.pop("include", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: expects a recipe path, got {base!r}")
    base_path = path.parent / base
    if not base_path.is_file() and not Path(base).is_absolute():
        from .recipe_files import shipped_recipe  # a copy of a shipped recipe names its base by file name

        try:
            base_path = shipped_recipe(base, kind=path.parent.name)
        except ConfigError:
            raise ConfigError(f"{path.parent / base}: recipe not found (included from {path}; "
                              "neither a file there nor a shipped recipe)") from None
    merged = _read_recipe(base_path, seen + (path.resolve(),))
    _deep_merge(merged, data)
    return merged


def _deep_merge(into: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def schema_keys(cls: type = None, prefix: str = "") -> list[str]:
    """Every dotted key of the schema (`optim.lr`, …); mapping fields (`model.overrides`) take any key below."""
    out = []
    for f in dataclasses.fields(cls or PretrainConfig):
        hint = typing.get_type_hints(cls or PretrainConfig)[f.name]
        if dataclasses.is_dataclass(hint):
            out += schema_keys(hint, f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


def _check_key(key: str) -> None:
    """An override's key must exist (or lie inside a mapping field), else name the closest valid key."""
    valid = schema_keys()
    sections = {k.split(".")[0] for k in valid}
    if key in valid or key in sections or any(key.startswith(k + ".") and k.split(".")[-1] in _MAPPING_FIELDS for k in valid):
        return
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else "; see --print-config for the valid keys"
    raise ConfigError(f"{COMMAND_LINE}: unknown key '{key}'{hint}")


_MAPPING_FIELDS = ("overrides", "kwargs")


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{COMMAND_LINE}: '{key}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def _key_sources(raw: dict, where: str, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        out[name] = where
        if isinstance(value, dict):
            out.update(_key_sources(value, where, name + "."))
    return out


# --------------------------------------------------------------------------------------------- type checks
def from_dict(raw: dict, where: str, sources: dict[str, str]) -> PretrainConfig:
    """Build the dataclasses, refusing unknown keys (with the closest valid name) and wrong types."""
    return build_section(PretrainConfig, raw, "", where, sources)


def build_section(cls: type, raw: Any, prefix: str, where: str, sources: dict[str, str]):
    """Build dataclass `cls` from `raw`, checking keys and types (errors name `where` or a key's own source);
    shared with the fine-tuning schema, which nests the same sections."""
    origin = sources.get(prefix.rstrip("."), where) if prefix else where
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: '{prefix.rstrip('.')}' is a section; expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if key not in fields:
            valid = [f"{prefix}{f}" for f in fields]
            close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else f"; valid keys here: {', '.join(sorted(valid))}"
            raise ConfigError(f"{sources.get(name, where)}: unknown key '{name}'{hint}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            values[key] = build_section(hint, value, name + ".", where, sources)
        else:
            values[key] = _coerce(value, hint, name, sources.get(name, where))
    return cls(**values)


def _coerce(value: Any, hint: Any, name: str, where: str) -> Any:
    """`value` as type `hint`, or a ConfigError naming key, expected type and what was given."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], name, where)
    if origin is Literal:
        if value in args:
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint_text = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{where}: {name}: expected one of {', '.join(map(str, args))}, got {value!r}{hint_text}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            _type_error(value, f"a list of {len(args)} numbers", name, where)
        return tuple(_coerce(v, a, f"{name}[{i}]", where) for i, (v, a) in enumerate(zip(value, args)))
    if origin is list:
        if value is None:
            return []
        if isinstance(value, str) and args[0] is str:
            return [value]  # `log_with: tensorboard` means a list of one
        if not isinstance(value, list):
            _type_error(value, "a list", name, where)
        return [_coerce(v, args[0], f"{name}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            _type_error(value, "a mapping", name, where)
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            _type_error(value, "true or false", name, where)
        return value
    if hint in (int, float) and isinstance(value, str):
        value = _number(value)  # PyYAML reads `1e5` (no dot) as a string
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)  # 1e5 in YAML is a float
            else:
                _type_error(value, "an integer", name, where)
        if name == "seed" or name.endswith(".seed"):
            check_seed(value, name, where)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _type_error(value, "a number", name, where)
        if not math.isfinite(value):  # YAML's .nan/.inf, or 1e999: no setting means it, and it fails steps later
            raise ConfigError(f"{where}: {name}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            _type_error(value, "a string", name, where)
        return value
    raise TypeError(f"config field {name} has an unsupported type {hint}")


SEED_RANGE = range(2**32)  # what numpy's, torch's and Python's generators all take


def check_seed(value: int, name: str, where: str) -> None:
    """A seed outside [0, 2**32) fails in numpy (negative) or is silently reduced elsewhere: refuse it here."""
    if value not in SEED_RANGE:
        raise ConfigError(f"{where}: {name} must be an integer in [0, 2**32), got {value}")


def check_output_dir(path: str, name: str, where: str) -> None:
    """An output directory that is a file (or lies under one) would fail at the first write, after the model
    was built and data opened: refuse it at start-up."""
    node = Path(path)
    while not node.exists() and node != node.parent:
        node = node.parent
    if node.exists() and not node.is_dir():
        what = "is a file" if node == Path(path) else f"lies under {node}, which is a file"
        raise ConfigError(f"{where}: {name} {path!r} {what}; choose a folder for the run")


def _number(text: str) -> Any:
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        return text


def _type_error(value: Any, expected: str, name: str, where: str) -> None:
    raise ConfigError(f"{where}: {name}: expected {expected}, got {value!r} ({type(value).__name__})")


# ---------------------------------------------------------------------------------------------- values
def validate(cfg: PretrainConfig, where: str, sources: dict[str, str] | None = None) -> None:
    """Value checks that need no data and no process count (those happen at launch).

    Each message names where the offending key was set: the recipe file or the command line (`sources`).
    """
    t, o, d = cfg.train, cfg.optim, cfg.data

    def at(*keys: str) -> str:
        given = sources or {}
        hits = [src for k, src in given.items() if any(k == key or k.startswith(key + ".") for key in keys)]
        return COMMAND_LINE if COMMAND_LINE in hits else where

    positive = {
        "train.global_batch": t.global_batch, "data.batch_size": d.batch_size, "data.image_size": d.image_size,
        "train.log_every": t.log_every, "train.checkpoint_every": t.checkpoint_every, "train.keep_last": t.keep_last,
        "train.max_nonfinite": t.max_nonfinite, "optim.lr": o.lr,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{at(key)}: {key} must be positive, got {value}")
    for key, value in {"data.num_workers": d.num_workers, "data.shuffle_buffer": d.shuffle_buffer,
                       "optim.warmup_steps": o.warmup_steps, "optim.weight_decay": o.weight_decay,
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
    lo, hi = d.crop_scale
    if not 0 < lo <= hi <= 1:
        raise ConfigError(f"{at('data.crop_scale')}: data.crop_scale must satisfy 0 < min ≤ max ≤ 1, got {list(d.crop_scale)}")
    if not 0 < d.crop_ratio[0] <= d.crop_ratio[1]:
        raise ConfigError(f"{at('data.crop_ratio')}: data.crop_ratio must satisfy 0 < min ≤ max, got {list(d.crop_ratio)}")
    if d.max_pixels is not None and d.max_pixels <= 0:
        raise ConfigError(f"{at('data.max_pixels')}: data.max_pixels must be a positive number of pixels or null, "
                          f"got {d.max_pixels}")
    if not 0 <= d.max_bad_fraction < 1:
        raise ConfigError(f"{at('data.max_bad_fraction')}: data.max_bad_fraction must be in [0, 1), got {d.max_bad_fraction}")
    if cfg.eval.every and not cfg.eval.evaluators:
        raise ConfigError(f"{at('eval')}: eval.every is {cfg.eval.every} but eval.evaluators is empty; list some or set 0")
    _check_model(cfg, at("model", "data.image_size"), at("objective", "model", "data.image_size"))


def _check_model(cfg: PretrainConfig, model_where: str, objective_where: str) -> None:
    """Build backbone and objective on the meta device: every name and option is checked, nothing is allocated."""
    import torch

    from .models import create_model, list_models
    from .objectives import build

    key = "model.name" if cfg.model.name not in list_models() else "model.overrides"
    try:
        with torch.device("meta"):
            backbone = create_model(cfg.model.name, **model_overrides(cfg))
    except (ConfigError, KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"{model_where}: {key}: {_first_line(err)}") from None
    try:
        with torch.device("meta"):
            build(cfg.objective.name, backbone, **cfg.objective.kwargs)
    except (ConfigError, KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"{objective_where}: objective: {_first_line(err)}") from None


def model_overrides(cfg: PretrainConfig) -> dict[str, Any]:
    """The backbone options: recipe overrides, with `img_size` following `data.image_size` unless given."""
    return {"img_size": cfg.data.image_size, **cfg.model.overrides}


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


# ------------------------------------------------------------------------------------------------ helpers
def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _first_line(err: BaseException) -> str:
    text = str(err.args[0]) if err.args else str(err)
    return " ".join(text.split())
