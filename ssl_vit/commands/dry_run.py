"""`ssl-vit pretrain --config RECIPE ... --dry-run`: what the run would do, without building a process group,
reading an image or allocating the model — on a login node, before queueing the job.

    $ ssl-vit pretrain --config vit_b16_mean_color data.train=/data/in1k:train --dry-run --processes 8
    recipe   /…/recipes/pretrain/vit_b16_mean_color.yaml (pretrain/vit_b16_mean_color) + 1 override
    data     /data/in1k:train: 1,281,167 images in 1,024 shards (1,251–1,252 per shard, 140.21 GB), 1,000 classes: …
    batch    128 per device × 8 processes × 4 accumulation = 4,096 images per step
    length   100,000 steps (train.total_steps) = 319.5 epochs of 313 steps; 409,600,000 images …
    run dir  runs/vit_b16_mean_color: a new run
    memory   vit_base_patch16 (…): peak 9.06 GiB per device …

Every number comes from the code the run itself uses (`resolve_spec`, `accumulation_steps`, `total_steps`,
`steps_per_epoch`, the checkpoint lookup, `ssl_vit.train.estimate`), so the plan cannot disagree with the run; a recipe
that would fail at launch (a batch that does not divide, missing shards) fails here with the same message.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..config import PretrainConfig, accumulation_steps
from ..data import ShardSet, steps_per_epoch
from ..train.estimate import describe, pretrain_step_memory
from ..recipe_files import recipe_names
from ..train import checkpoint as ckpt

SHOWN_CLASSES = 5


def planned_processes(requested: int | None) -> int:
    """`--processes`, else the launch's own count (`accelerate launch` sets WORLD_SIZE), else 1."""
    return requested if requested is not None else int(os.environ.get("WORLD_SIZE", "1"))


def plan(cfg: PretrainConfig, recipe: Path, overrides: list[str], shards: ShardSet, steps: int, processes: int,
         resume: str | None, overwrite: bool = False) -> list[tuple[str, str]]:
    """(label, text) rows of the dry run's report."""
    accumulation = accumulation_steps(cfg.train.global_batch, cfg.data.batch_size, processes, where=str(recipe))
    rows = [("recipe", _recipe_line(recipe, overrides)), ("data", _data_line(cfg, shards))]
    rows.append(("batch", f"{cfg.data.batch_size:,} per device × {processes} process{'es' * (processes != 1)} × "
                          f"{accumulation} accumulation = {cfg.train.global_batch:,} images per step"))
    rows.append(("length", _length_line(cfg, shards, steps)))
    rows.append(("run dir", _run_dir_line(Path(cfg.output_dir), resume, overwrite)))
    rows.append(("memory", describe(pretrain_step_memory(cfg)).replace("\n", "\n" + " " * 11)))
    return rows


def format_plan(rows: list[tuple[str, str]]) -> str:
    return "".join(f"{label:<9}  {text}\n" for label, text in rows)


def _recipe_line(recipe: Path, overrides: list[str]) -> str:
    name = next((n for n, p in recipe_names().items() if p.resolve() == recipe.resolve()), None)
    text = f"{recipe}" + (f" ({name})" if name else "")
    return text + (f" + {len(overrides)} override{'s' * (len(overrides) != 1)}: {' '.join(overrides)}" if overrides else "")


def _data_line(cfg: PretrainConfig, shards: ShardSet) -> str:
    spec = cfg.data.train if ":" in cfg.data.train or "{" in cfg.data.train else f"{cfg.data.train} (split {cfg.data.split})"
    count = f"{shards.num_samples:,} images" if shards.num_samples is not None else "an unknown number of images"
    text = f"{spec}: {count} in {len(shards.urls):,} shard{'s' * (len(shards.urls) != 1)}"
    details = []
    if shards.shard_lengths:
        low, high = min(shards.shard_lengths), max(shards.shard_lengths)
        details.append(f"{low:,} per shard" if low == high else f"{low:,}–{high:,} per shard")
    files = [Path(u.removeprefix("file:")) for u in shards.urls]
    if all(f.is_file() for f in files):
        details.append(_size_text(sum(f.stat().st_size for f in files)))
    if details:
        text += f" ({', '.join(details)})"
    if shards.class_names:
        shown = ", ".join(shards.class_names[:SHOWN_CLASSES]) + (", …" if shards.num_classes > SHOWN_CLASSES else "")
        text += f", {shards.num_classes:,} classes: {shown}"
    return text


def _size_text(size: int) -> str:
    """Bytes as people read them: 140.21 GB, 3.4 MB (decimal units, as `ls -h --si` and disk vendors)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{size} bytes"


def _length_line(cfg: PretrainConfig, shards: ShardSet, steps: int) -> str:
    source = "train.total_steps" if cfg.train.total_steps is not None else f"train.epochs {cfg.train.epochs:g}"
    text = f"{steps:,} steps ({source})"
    if shards.num_samples:
        per_epoch = steps_per_epoch(shards.num_samples, cfg.train.global_batch)
        text += f" = {steps / per_epoch:,.1f} epochs of {per_epoch:,} step{'s' * (per_epoch != 1)}"
    text += f"; {steps * cfg.train.global_batch:,} images"
    warmup = cfg.optim.warmup_steps
    return text + (f"; warmup {warmup:,} steps" if warmup else "") + f", checkpoint every {cfg.train.checkpoint_every:,}"


def _run_dir_line(run_dir: Path, resume: str | None, overwrite: bool) -> str:
    """What the trainer would do with this run directory, `--resume` and `--overwrite`: first its lock (a run
    another process is training in stops the run, named as the run would name it; a dead holder's lock would be
    taken over), then the run's own decision (`plan_start`). Both only read. The recipe is compared with the
    checkpoint's when the run starts."""
    from ..errors import UserError
    from ..train.run_dir import plan_start
    from ..train.run_lock import preview

    try:
        lock = preview(run_dir)
        start = plan_start(run_dir, resume, overwrite, None)
    except UserError as err:
        return f"{run_dir}: the run would stop: {err}"
    notes = "".join(f"; {note}" for note in (lock, start.note if start.replaces else None) if note)
    if start.checkpoint is None:
        return f"{run_dir}: a new run" + (" (--resume auto: no checkpoint there yet)" if resume == "auto" else "") + notes
    step = ckpt.checkpoint_step(start.checkpoint)
    at = f" at step {step:,}" if step is not None else ""
    return f"{run_dir}: resumes from {start.checkpoint}{at}{notes}"
