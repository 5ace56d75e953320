"""MAE's linear probe (He et al. 2022, A.2): train a BatchNorm + linear head with LARS on augmented images
passed through the frozen backbone online, then score it on the centre-cropped test set.

Unlike the feature-cache probe, every epoch sees new random-resized crops, so features cannot be cached.
The BatchNorm has no affine parameters: it only whitens the features, which the paper found important
because MAE features are not normalised; it is folded into the linear layer at test time (running stats).
Learning rate = base_lr × global batch / 256, linear warmup then cosine, per step. Each rank trains on
its own share of the train stream; the head is wrapped for data-parallel gradient averaging.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from data_tools.progress_bar import progress_bar

from ssl_vit.errors import ConfigError
from ssl_vit.config import OptimConfig
from ssl_vit.train.optim import build_scheduler

from .context import EvalContext
from .features import Pool, embed_images
from .lars import LARS


def mae_linear_probe(
    ctx: EvalContext,
    *,
    pool: Pool | None = None,
    layers: list[int] | None = None,
    epochs: int = 90,
    warmup_epochs: int = 10,
    base_lr: float = 0.1,
    batch_size: int | None = None,
    image_size: int | None = None,
    weight_decay: float = 0.0,
    trust_coefficient: float = 0.001,
    num_classes: int | None = None,
) -> dict[str, float]:
    from ssl_vit.data.stream import TrainStreamOptions, build_train_stream, steps_per_epoch
    from ssl_vit.train.agreement import HostAgreement
    from ssl_vit.train.feed import DataFeed, batch_tensors

    pool = pool or ctx.pool
    layers = ctx.layers if layers is None else layers
    accelerator = ctx.accelerator
    shards = ctx.shards("train")
    num_classes = num_classes or ctx.num_classes()
    if not num_classes:
        raise ConfigError(f"{ctx.data.train}: the shards do not list class_names; pass linear.num_classes=N")
    if warmup_epochs >= epochs:
        raise ConfigError(f"linear.warmup_epochs ({warmup_epochs}) must be below linear.epochs ({epochs})")
    batch_size = batch_size or ctx.data.batch_size
    global_batch = batch_size * ctx.world_size
    per_epoch = steps_per_epoch(shards.num_samples, global_batch)
    total, warmup = epochs * per_epoch, warmup_epochs * per_epoch
    backbone = ctx.backbone().requires_grad_(False).eval()
    with torch.no_grad():  # the feature width, from one dummy image
        size = image_size or ctx.data.image_size
        dim = embed_images(backbone, torch.zeros(1, 3, size, size, dtype=torch.uint8, device=ctx.device), pool, layers).shape[1]
    head = nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), nn.Linear(dim, num_classes)).to(ctx.device)
    nn.init.trunc_normal_(head[1].weight, std=0.01)
    nn.init.zeros_(head[1].bias)
    lr = base_lr * global_batch / 256
    optimizer = LARS(head.parameters(), lr=lr, weight_decay=weight_decay, trust_coefficient=trust_coefficient)
    # the trainer's warmup + cosine schedule (to 0), stepped once per optimizer step
    scheduler = build_scheduler(optimizer, OptimConfig(lr=lr, warmup_steps=warmup, schedule="cosine", min_lr=0.0), total)
    model = accelerator.prepare_model(head) if accelerator is not None else head
    options = TrainStreamOptions(batch_size=batch_size, image_size=size, num_workers=ctx.data.num_workers,
                                 shuffle_buffer=1000, max_bad_fraction=0.05)  # what it has always read with
    # The trainer's feed: a stream failure on one rank stops every rank, and every key is checked once in the split.
    feed = DataFeed(lambda start: build_train_stream(shards, options, seed=ctx.seed, rank=ctx.rank,
                                                     world_size=ctx.world_size, start_step=start),
                    batch_size=batch_size)
    agreement = HostAgreement()
    losses: list[torch.Tensor] = []
    bar = progress_bar(total=total, desc="linear (mae)", disable=not ctx.is_main, dynamic_ncols=True)
    try:
        feed.open(0)
        for _ in range(total):
            batch, _ = feed.next(agreement)
            images, labels, weight = batch_tensors(batch, ctx.device)  # weight 0: an empty micro-batch's stand-in
            feats = embed_images(backbone, images, pool, layers)  # (B, D) under no_grad: the backbone stays frozen
            loss = F.cross_entropy(model(feats), labels) * weight
            optimizer.zero_grad(set_to_none=True)
            loss.backward() if accelerator is None else accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            losses.append(loss.detach())
            bar.update(1)
        feed.check_keys(agreement)  # a repeated key raises on every rank
    finally:
        bar.close()
        feed.close()
        agreement.close()
    head.eval()
    counts = torch.zeros(3, device=ctx.device)  # correct top-1, correct top-5, seen
    with ctx.eval_batches("test", size) as test:
        for batch in test:
            logits = head(embed_images(backbone, batch["image"].to(ctx.device), pool, layers))  # (B, C)
            labels = batch["label"].to(ctx.device)
            top = logits.topk(min(5, num_classes), dim=1).indices  # (B, 5)
            counts += torch.stack([(top[:, 0] == labels).sum(), (top == labels[:, None]).any(1).sum(),
                                   torch.tensor(len(labels), device=ctx.device)]).float()
    if accelerator is not None:
        counts = accelerator.reduce(counts, reduction="sum")  # each test sample was seen by exactly one rank
    tail = torch.stack(losses[-per_epoch:]).mean().item() if losses else float("nan")
    return {
        "linear/top1": 100.0 * counts[0].item() / counts[2].item(),
        "linear/top5": 100.0 * counts[1].item() / counts[2].item(),
        "linear/train_loss": tail,
    }

