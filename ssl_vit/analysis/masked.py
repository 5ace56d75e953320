"""The masked-prediction picture: what the model saw and what it predicted for the corrupted patches.

One row per image, four panels:
  original   the image as the model got it;
  input      the corrupted input: [MASK]ed patches grey and hatched, replaced patches showing the pixels of
             the patch whose embedding replaced them (outlined cyan), kept patches outlined yellow;
  target     the target of every corrupted patch painted over its area (the quantised mean colour, the 4×4
             colour cells, or the pixels), the uncorrupted patches faded;
  prediction the model's prediction for the same patches, drawn the same way.
The drawing goes through the objective's `predict` and its target's `render`, so it works for all three
targets without knowing them: comparing the last two panels is comparing prediction with target.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from . import _mpl

MASKED, REPLACED, KEPT = 0, 1, 2  # `Corruption.kind` codes (ssl_vit.objectives.corruption)
GREY = 128
FADE = 0.35  # uncorrupted patches keep 35% of their contrast in the target and prediction panels


@dataclass
class MaskedPanels:
    """The four pictures as (B, H, W, 3) uint8 arrays, plus where the corrupted patches are and how."""

    original: np.ndarray
    corrupted: np.ndarray
    target: np.ndarray
    prediction: np.ndarray
    # The prediction's mean colour per corrupted patch, for targets that predict more than one colour per
    # patch (`pixels`, `downsampled_color`): the paper's mean-colour picture; None for `mean_color` itself.
    mean_colour: np.ndarray | None
    index: np.ndarray  # (B, K) patch positions, row-major over the grid
    kind: np.ndarray  # (B, K) 0 masked, 1 replaced, 2 kept
    grid_size: tuple[int, int]
    patch_size: int
    metrics: dict[str, float]


def _paint(background: torch.Tensor, index: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """(B, N, P, P, 3) patches with the (B, K) positions in `index` overwritten by (B, K, P, P, 3) `patches`."""
    b, k = index.shape
    slots = index.view(b, k, 1, 1, 1).expand(b, k, *patches.shape[2:])  # (B, K, P, P, 3)
    return background.scatter(1, slots, patches.to(background.dtype))


@torch.no_grad()
def masked_prediction_panels(
    objective, images: torch.Tensor, generator: torch.Generator | None = None
) -> MaskedPanels:
    """Run `objective.predict` on a uint8 batch (B, 3, H, W) and build the four panels.

    `objective` is a `MaskedPatchPrediction` (or anything with its `predict`, `target.render` and
    `backbone.patch_size`); it runs in eval mode (no drop-path) and is put back as it was.
    """
    was_training = objective.training
    objective.eval()
    try:
        out = objective.predict(images, generator=generator)
    finally:
        objective.train(was_training)
    corruption = out["corruption"]
    p = objective.backbone.patch_size
    gh, gw = images.shape[-2] // p, images.shape[-1] // p
    index = corruption.index.cpu()  # (B, K)
    kind = corruption.kind.cpu()  # (B, K)
    source = corruption.source.cpu()  # (B, K)

    pixels = images.cpu()
    patches = rearrange(pixels, "b c (gh p1) (gw p2) -> b (gh gw) p1 p2 c", p1=p, p2=p)  # (B, N, P, P, 3)
    b, n = patches.shape[:2]
    flat = patches.reshape(b * n, p, p, 3)  # (B·N, P, P, 3): `source` indexes this
    own = patches.gather(1, index.view(b, -1, 1, 1, 1).expand(-1, -1, p, p, 3))  # (B, K, P, P, 3)
    lent = flat[source.clamp_min(0)]  # (B, K, P, P, 3): the replacing patch's pixels
    shown = torch.where((kind == MASKED).view(b, -1, 1, 1, 1), torch.full_like(own, GREY), own)
    shown = torch.where((kind == REPLACED).view(b, -1, 1, 1, 1), lent, shown)  # (B, K, P, P, 3)
    corrupted = _paint(patches, index, shown)

    faded = (patches.float() * FADE + 255.0 * (1.0 - FADE)).round().to(torch.uint8)  # (B, N, P, P, 3)
    target = _paint(faded, index, objective.target.render(out["corrupted_targets"]).cpu())
    predicted = objective.target.render(out["predictions"]).cpu()  # (B, K, P, P, 3) uint8
    prediction = _paint(faded, index, predicted)
    means = predicted.float().mean(dim=(2, 3), keepdim=True).round().to(torch.uint8)  # (B, K, 1, 1, 3)
    uniform = bool((predicted == means).all())  # mean_color already paints each patch in one colour
    mean_colour = None if uniform else _paint(faded, index, means.expand_as(predicted))

    def to_image(x: torch.Tensor) -> np.ndarray:
        return rearrange(x, "b (gh gw) p1 p2 c -> b (gh p1) (gw p2) c", gh=gh, gw=gw).numpy()  # (B, H, W, 3)

    return MaskedPanels(
        original=rearrange(pixels, "b c h w -> b h w c").numpy(),
        corrupted=to_image(corrupted),
        target=to_image(target),
        prediction=to_image(prediction),
        mean_colour=None if mean_colour is None else to_image(mean_colour),
        index=index.numpy(),
        kind=kind.numpy(),
        grid_size=(gh, gw),
        patch_size=p,
        metrics={k: float(v) for k, v in out.get("metrics", {}).items()},
    )


def _outline_patches(ax, panels: MaskedPanels, row: int) -> None:
    """Hatch the masked patches and outline the replaced and kept ones on the corrupted-input panel."""
    from matplotlib.patches import Rectangle

    p, gw = panels.patch_size, panels.grid_size[1]
    style = {
        MASKED: dict(fill=False, hatch="////", edgecolor="white", linewidth=0.0),
        REPLACED: dict(fill=False, edgecolor="cyan", linewidth=1.0),
        KEPT: dict(fill=False, edgecolor="yellow", linewidth=1.0),
    }
    for pos, kind in zip(panels.index[row], panels.kind[row]):
        r, c = divmod(int(pos), gw)
        ax.add_patch(Rectangle((c * p - 0.5, r * p - 0.5), p, p, **style[int(kind)]))


def plot_masked_prediction(panels: MaskedPanels, path: str | Path, *, title: str | None = None) -> Path:
    """One row per image: original | corrupted input | target | prediction (| its mean colour per patch)."""
    from matplotlib.patches import Patch

    rows = len(panels.original)
    names = ("original", "corrupted input", "target", "prediction")
    columns = [panels.original, panels.corrupted, panels.target, panels.prediction]
    if panels.mean_colour is not None:
        names += ("predicted mean colour",)
        columns.append(panels.mean_colour)
    fig = _mpl.new_figure(2.25 * len(columns), 2.3 * rows + 0.6)
    axes = fig.subplots(rows, len(columns), squeeze=False)
    for r in range(rows):
        pictures = [column[r] for column in columns]
        for c, (ax, picture) in enumerate(zip(axes[r], pictures)):
            ax.imshow(picture, interpolation="nearest")
            ax.set_axis_off()
            if r == 0:
                ax.set_title(names[c], fontsize=10)
        _outline_patches(axes[r][1], panels, r)
    fig.legend(
        handles=[
            Patch(facecolor=(GREY / 255,) * 3, hatch="////", edgecolor="white", label="masked ([MASK] embedding)"),
            Patch(fill=False, edgecolor="cyan", label="replaced (another patch's embedding)"),
            Patch(fill=False, edgecolor="yellow", label="kept (unchanged, still predicted)"),
        ],
        loc="outside lower center",
        ncol=3,
        fontsize=8,
        frameon=False,
    )
    if title or panels.metrics:
        shown = ", ".join(f"{k} {v:.3f}" for k, v in panels.metrics.items() if k.startswith(("acc", "mse", "loss")))
        fig.suptitle(" — ".join(t for t in (title, shown) if t), fontsize=10)
    return _mpl.save(fig, path)
