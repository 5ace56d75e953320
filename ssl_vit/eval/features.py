"""Frozen-backbone features: what every feature-based protocol (few-shot, linear, kNN) consumes.

A feature is the [class] token after the final norm (`pool="cls"`), the mean of the patch tokens
(`pool="mean"`), or both concatenated (`pool="both"`), taken from the last block or from listed
intermediate blocks (each normalised by the final norm, concatenated in the order listed).
Extraction runs each rank over its own share of the eval stream, then gathers so that every rank holds the
full set, sorted by sample key (each key exactly once, asserted): the result does not depend on the number of processes.

Features must be finite: a backbone whose weights hold NaN (a diverged run's checkpoint) or whose activations
overflow under reduced precision gives NaN or inf features, which every protocol would turn into a meaningless
score (or a solver's traceback). Extraction stops at the first such batch with one line naming the backbone,
the split and what is wrong with it (`check_finite`), on every rank.

Gathering: ranks hold different numbers of samples (shards split unevenly) and collectives need equal shapes,
so Accelerate's `pad_across_processes` pads each rank's rows to the largest count and the padding is cut off
after the gather. Rows go in chunks to bound the device memory the collective needs (ImageNet's 1.28M x 768
floats are 3.9 GB). Keys travel as Python objects. Sorting by key makes the result independent of the process
count; a repeated key is an error (the eval stream pads nothing, so it can only come from broken shards).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Literal, Sequence

import torch
from accelerate.utils import gather_object
from data_tools.progress_bar import progress_bar

from ssl_vit.data.normalize import normalize_uint8
from ssl_vit.errors import CheckpointError, ConfigError, DataError
from ssl_vit.train.agreement import raise_on_every_rank

if TYPE_CHECKING:
    from accelerate import Accelerator

    from ssl_vit.models import VisionTransformer

CHUNK_ROWS = 65536
Pool = Literal["cls", "mean", "both"]
POOLS = ("cls", "mean", "both")


@dataclass
class Features:
    """x: (N, D) float32, labels: (N,) int64, keys: N sample keys, all in the same (key-sorted) order."""

    x: torch.Tensor
    labels: torch.Tensor
    keys: list[str]

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def dim(self) -> int:
        return self.x.shape[1]

    def subset(self, index: torch.Tensor) -> "Features":
        idx = index.tolist()
        return Features(self.x[index], self.labels[index], [self.keys[i] for i in idx])


def check_pool(pool: str, layers: Sequence[int] | None) -> None:
    if pool not in POOLS:
        raise ConfigError(f"pool must be one of {', '.join(POOLS)}, got '{pool}'")
    if layers is not None and not all(isinstance(i, int) for i in layers):
        raise ConfigError(f"layers must be a list of block indices (negative counts from the end), got {layers!r}")


def pool_tokens(tokens: torch.Tensor, pool: Pool, num_prefix_tokens: int) -> torch.Tensor:
    """(B, prefix + N, D) normalised tokens -> (B, D) or (B, 2D) for `both` ([class] first, then the mean)."""
    if pool in ("cls", "both") and num_prefix_tokens == 0:
        raise ConfigError("pool 'cls'/'both' needs a [class] token, but this backbone has none; use pool=mean")
    if pool == "cls":
        return tokens[:, 0]  # (B, D)
    mean = tokens[:, num_prefix_tokens:].mean(dim=1)  # (B, D): patch tokens only
    return mean if pool == "mean" else torch.cat([tokens[:, 0], mean], dim=1)  # (B, 2D)


@torch.no_grad()
def embed_images(
    backbone: "VisionTransformer", images: torch.Tensor, pool: Pool = "cls", layers: Sequence[int] | None = None
) -> torch.Tensor:
    """(B, 3, S, S) uint8 on the backbone's device -> (B, D') float32 pooled features."""
    x = normalize_uint8(images)
    if layers is None:
        pooled = [pool_tokens(backbone.forward_features(x), pool, backbone.num_prefix_tokens)]
    else:
        # forward_intermediates returns blocks in depth order; re-order to the order the user listed.
        depth = len(backbone.blocks)
        order = sorted({i % depth for i in layers})
        outs = backbone.forward_intermediates(x, layers=list(layers), norm=True)["layers"]
        by_block = dict(zip(order, outs))
        pooled = [pool_tokens(by_block[i % depth], pool, backbone.num_prefix_tokens) for i in layers]
    return torch.cat(pooled, dim=1).float()  # (B, D * len(layers) [* 2])


def extract_features(
    backbone: "VisionTransformer",
    batches: Iterable[dict],
    *,
    pool: Pool = "cls",
    layers: Sequence[int] | None = None,
    accelerator: "Accelerator | None" = None,
    total: int | None = None,
    desc: str = "features",
    source: str | None = None,
) -> Features:
    """Run the frozen backbone over this rank's batches, then gather all ranks' features (see module doc).

    `batches` yields `{"image": uint8 (B, 3, S, S), "label": (B,), "key": list[str]}` (the eval stream);
    `total` (samples over all ranks, `_info.json`'s count) sizes the progress bar and is asserted: the
    gathered set must hold exactly `total` distinct keys. `source` names the backbone and the data in messages
    (`--checkpoint X on SPEC (split 'train')`); `desc` stands in for it.
    """
    check_pool(pool, layers)
    device = accelerator.device if accelerator is not None else next(backbone.parameters()).device
    main = accelerator is None or accelerator.is_local_main_process
    was_training = backbone.training
    backbone.eval()
    xs, labels, keys = [], [], []
    world = accelerator.num_processes if accelerator is not None else 1
    bar = progress_bar(total=total, desc=desc, unit="img", disable=not main, dynamic_ncols=True)
    failure = None
    try:
        for batch in batches:
            images = batch["image"].to(device, non_blocking=True)
            if accelerator is not None:
                with accelerator.autocast():
                    feats = embed_images(backbone, images, pool, layers)
            else:
                feats = embed_images(backbone, images, pool, layers)
            check_finite(feats, batch["key"], backbone, source or desc,
                         accelerator.mixed_precision if accelerator is not None else "no")
            xs.append(feats.cpu())
            labels.append(torch.as_tensor(batch["label"]).long().cpu())
            keys.extend(str(k) for k in batch["key"])
            # Other ranks advance at about the same pace; never run past the known total.
            bar.update(min(len(images) * world, bar.total - bar.n) if bar.total else len(images) * world)
    except Exception as err:  # noqa: BLE001 — shared with the other ranks below, then raised on every rank
        failure = err
    finally:
        bar.close()
        backbone.train(was_training)
    if accelerator is not None and accelerator.num_processes > 1:
        raise_on_every_rank(failure, lambda report: gather_object([report]), "feature extraction")
    elif failure is not None:
        raise failure
    dim = xs[0].shape[1] if xs else _feature_dim(backbone, pool, layers)
    local = Features(
        torch.cat(xs) if xs else torch.zeros(0, dim),
        torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long),
        keys,
    )
    gathered = gather_features(local, accelerator)
    if total is not None and len(gathered) != total:
        raise DataError(f"evaluation read {len(gathered)} samples but _info.json promises {total}: every sample "
                        "must be read exactly once; run `ssl-vit-shards verify` on the shards")
    return gathered


def check_finite(feats: torch.Tensor, keys: Sequence, backbone: "VisionTransformer", source: str,
                 precision: str = "no") -> None:
    """One line when a batch's features hold NaN or inf, saying whether the weights are at fault (a broken
    checkpoint: which tensors) or the activations overflow (the precision)."""
    bad_rows = ~torch.isfinite(feats).all(dim=1)
    if not bool(bad_rows.any()):
        return
    example = str(keys[int(bad_rows.nonzero()[0])])
    broken = [(name, int((~torch.isfinite(p)).sum())) for name, p in backbone.named_parameters()
              if not bool(torch.isfinite(p).all())]
    if broken:
        count = sum(n for _, n in broken)
        why = (f"its weights hold {count:,} NaN or inf values in {len(broken)} tensor{'s' * (len(broken) != 1)} (first {broken[0][0]}): the "
               "checkpoint is broken (a run that diverged, or a damaged file); evaluate an earlier checkpoint")
    elif precision in ("fp16", "bf16"):
        why = (f"its weights are finite, but its activations overflow under {precision}; evaluate with "
               "precision=fp32")
    else:
        why = "its weights are finite, but its activations overflow even in fp32: the checkpoint is unusable"
    raise CheckpointError(f"{source}: the features are not finite (NaN or inf) for {int(bad_rows.sum())} of the "
                          f"{len(feats)} images of a batch (e.g. sample {example!r}); {why}")


def _feature_dim(backbone: "VisionTransformer", pool: Pool, layers: Sequence[int] | None) -> int:
    """Feature width without running the model (a rank can receive no samples at all)."""
    return backbone.embed_dim * (2 if pool == "both" else 1) * (len(layers) if layers is not None else 1)


def sort_unique(features: Features) -> Features:
    """Order by key, asserting that every key occurs once: the eval stream reads every sample exactly once and
    pads nothing, so a repeated key means shards that break `_info.json`'s promise (a sample stored twice, or a
    shard listed twice). Dropping it would score a different set than `_info.json` counts, without a word."""
    order = sorted(range(len(features.keys)), key=features.keys.__getitem__)
    for j in range(1, len(order)):
        if features.keys[order[j]] == features.keys[order[j - 1]]:
            raise DataError(
                f"sample key {features.keys[order[j]]!r} occurs more than once in the evaluation data: every sample "
                "must be read exactly once. Run `ssl-vit-shards verify` on the shards, rebuild them, and check that "
                "the data spec names each shard once")
    index = torch.tensor(order, dtype=torch.long)
    return Features(features.x[index], features.labels[index], [features.keys[i] for i in order])


def gather_features(local: Features, accelerator: "Accelerator | None") -> Features:
    """All ranks' features on every rank (CPU tensors), sorted by key, each key once (see module doc)."""
    if accelerator is None or accelerator.num_processes == 1:
        return sort_unique(local)
    device, world = accelerator.device, accelerator.num_processes
    counts = accelerator.gather(torch.tensor([len(local)], device=device)).tolist()
    n_max, dim = max(counts), local.x.shape[1]
    x = accelerator.pad_across_processes(local.x.float().to(device), dim=0)  # (n_max, D), zero rows appended
    labels = accelerator.pad_across_processes(local.labels.to(device), dim=0, pad_index=-1)  # (n_max,)
    x_parts: list[list[torch.Tensor]] = [[] for _ in range(world)]
    for start in range(0, n_max, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, n_max)
        gathered = accelerator.gather(x[start:stop].contiguous()).cpu().view(world, stop - start, dim)  # (world, rows, D)
        for r in range(world):
            x_parts[r].append(gathered[r, : max(0, min(counts[r], stop) - start)])
    all_labels = accelerator.gather(labels).cpu().view(world, n_max)  # (world, n_max)
    keys = gather_object(list(local.keys))  # rank 0's keys, then rank 1's, ...
    merged = Features(
        torch.cat([torch.cat(p) if p else torch.zeros(0, dim) for p in x_parts]),
        torch.cat([all_labels[r, : counts[r]] for r in range(world)]),
        keys,
    )
    return sort_unique(merged)
