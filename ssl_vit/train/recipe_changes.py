"""What a resume may change: every recipe key is either changeable or fixed, decided here and nowhere else.

A resumed run continues the same training. Keys that say *how* it continues may change — the new values take
effect at the resumed step (the trainer puts them into the optimizer and the schedule after loading the
checkpoint), the change is printed once and recorded in `resumes.jsonl`. Keys that say *what* is being
trained — the model, the objective, the data and its order — may not: a resume that changes one is refused
with one line naming the key and both values (start a new run, or fine-tune, instead).

Every key of the pretraining and fine-tuning schemas appears below (a test checks it), so a new key is a
decision, not an accident. A key nobody classified counts as fixed.

The data is compared by identity, not spelling (`data/identity.py`): when the checkpoint records the shards it
was trained on and they are the shards the new recipe names, `data.train` and `data.split` may be spelled
otherwise (a relative path, a trailing slash, a symlinked mount, `DIR:split` for `DIR` + `data.split`); the new
spelling is recorded like any change. A checkpoint of an earlier version, which records no shards, compares the
spelling.
"""
from __future__ import annotations

from typing import Any

from ..errors import ConfigError

CHANGEABLE = (
    # the optimizer and its schedule: new values take effect at the resumed step
    "optim.lr", "optim.min_lr", "optim.weight_decay", "optim.betas", "optim.eps", "optim.momentum",
    "optim.layer_decay", "optim.warmup_steps", "optim.schedule", "optim.grad_clip",
    # length: the schedule is recomputed for the new length (the cosine stretches from the resumed step)
    "train.total_steps", "train.epochs", "data.num_samples",
    # logging, checkpointing, evaluation, where the run writes
    "train.log_every", "train.checkpoint_every", "train.keep_last", "train.record_samples", "train.max_nonfinite", "train.log_with",
    "train.project", "train.run_name", "train.collective_timeout_s",
    # read only when fp16 training starts without a saved scale (a resume continues the saved one)
    "train.fp16_loss_scale",
    "eval", "val_every", "data.val", "data.val_split", "data.crop_pct", "output_dir",
    # read only when a run starts from step 0 (a resume has its own weights)
    "model.init_from",
    # how the same global batch is computed: exact reproduction needs the old values, like the process count
    "train.precision", "train.compile", "train.grad_checkpointing", "data.batch_size", "data.num_workers",
    # how bad data is handled (which samples count as bad, whether a bad shard stops the run)
    "data.max_bad_fraction", "data.max_pixels", "data.shard_errors", "data.check_unique_keys",
    "data.follow_symlinks",  # whether the same shards may be reached through links out of their folder
    # how long a remote shard may take (the same bytes arrive, or the read fails)
    "data.remote_min_rate", "data.remote_rate_window_s", "data.remote_shard_deadline_s", "data.remote_cache_gb",
)
DATA_KEYS = ("data.train", "data.split")  # spellings of the data: free once its identity is proven the same
FIXED = (
    "model", "objective",  # what is trained
    "data.train", "data.split", "data.image_size", "data.num_classes", "holdout_fraction",  # on which data
    "data.shuffle_buffer", "data.crop_scale", "data.crop_ratio", "data.hflip",  # in which order and views
    "train.global_batch", "train.seed", "optim.name",  # what a step is
)


def rule(key: str) -> str:
    """"changeable" or "fixed" for a dotted key: the longest listed prefix decides; unlisted keys are fixed."""
    best, verdict = -1, "fixed"
    for names, kind in ((CHANGEABLE, "changeable"), (FIXED, "fixed")):
        for name in names:
            if (key == name or key.startswith(name + ".")) and len(name) > best:
                best, verdict = len(name), kind
    return verdict


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """Dotted keys → values (an empty mapping adds none); lists and tuples compare as lists (a YAML round trip
    turns tuples into lists)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def recipe_changes(saved: dict, new: dict, checkpoint: str, *, same_data: bool = False) -> dict[str, tuple[Any, Any]]:
    """The changeable keys whose values differ, as {key: (old, new)}; a changed fixed key raises ConfigError.
    `same_data`: the caller proved the data the same by identity, so `DATA_KEYS` may differ in spelling."""
    old_flat, new_flat = flatten(saved), flatten(new)
    changes = {k: (old_flat.get(k), new_flat.get(k)) for k in sorted(old_flat.keys() | new_flat.keys())
               if _normal(old_flat.get(k)) != _normal(new_flat.get(k))}
    for key, (old, value) in changes.items():
        if rule(key) == "fixed" and not (same_data and key in DATA_KEYS):
            raise ConfigError(
                f"--resume: {key} is {value!r} but the checkpoint {checkpoint} was trained with {old!r}; a resume "
                f"may not change the model, objective or data ({key}). Resume with {key}={_yaml(old)}, or start a "
                "new run in another output_dir"
            )
    return changes


def describe(changes: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k}: {_yaml(old)} → {_yaml(new)}" for k, (old, new) in changes.items())


def _normal(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)  # 1e-3 from YAML and 0.001 from the command line are the same rate
    return value


def _yaml(value: Any) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
