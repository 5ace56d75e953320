"""The demo's `report.md`: measured figures first, then the pictures, then what they mean."""
from __future__ import annotations

from pathlib import Path

import yaml

from ..analysis.plots import plot_fewshot
from ..analysis.report import write_report

# The demo's goals (issue #28): paired with its own random init, at least this many points at 5 and 10 shots;
# and above least squares on the raw pixels at 10 shots.
GOALS = {"5": 5.0, "10": 5.0}
PIXEL_GOAL_SHOTS = "10"

TARGET_WHY = (
    "**Why per-patch normalised `pixels`.** `ssl-vit study` pretrained every target (3-bit mean colour, 4×4 "
    "downsampled colour, pixels, per-patch normalised pixels) at 50% and 15% corruption with 3 seeds each (150 "
    "steps of 128 images, half this demo's schedule), paired every arm with its own initial weights and selected "
    "on a held-out part of the training split, never test: normalised pixels won at both rates (74.0% and 74.3% "
    "10-shot on the held-out part; the next best, 4×4 colour at 50%, 69.7%), with a gain over random init of "
    "+12.6 points [95% CI +8.6, +16.6] at 10 shots. The two rates could not be told apart (+0.1 [−6.1, +6.3]), "
    "so the demo keeps the paper's 50%. docs/demo.md has the tables. The paper kept the mean colour for JFT's "
    "colour photos; these digits are grey, a grey patch uses 8 of the 512 3-bit colours, and the mean colour "
    "did not beat its own random init here at any shot count. Rerun with `objective.kwargs.target=mean_color` "
    "to compare."
)
COLOUR_TARGET = (
    "**Why the 3-bit mean colour.** The paper's target for colour images: each corrupted patch's mean colour, one "
    "of 512 classes. The digits' study chose per-patch normalised pixels, but on grey digits the mean colour has 8 "
    "classes to choose from. On these emoji, one pretraining seed of each target, compared on a held-out part of the "
    "training split (test unread), favoured the mean colour: 38.0% vs 34.3% at 10 shots (docs/demo.md). One seed "
    "is not a study: `ssl-vit study` on the colour set decides. Rerun with `objective.kwargs.target=pixels "
    "\"objective.kwargs.target_kwargs={normalize: true}\"` to compare."
)


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.1f}"


def _gain(a, b) -> str:
    return "–" if a is None or b is None else f"{a - b:+.1f}"


def _with_std(metrics: dict, key: str) -> str:
    std = metrics.get(f"{key}_std")
    return _fmt(metrics.get(key)) + (f" ± {std:.1f}" if std is not None and metrics.get(key) is not None else "")


def _rows(pretrained: dict, random_init: dict, pixels: dict) -> list[dict]:
    names = [(f"fewshot/{s}shot", f"few-shot, {s} per class") for s in ("1", "5", "10", "25")]
    names += [("linear/top1", "linear probe top-1"), ("knn/k20_top1", "kNN (k=20) top-1")]
    rows = []
    for key, label in names:
        a, b = pretrained.get(key), random_init.get(key)
        rows.append({
            "metric (%)": label,
            "pretrained": _with_std(pretrained, key),
            "random init": _with_std(random_init, key),
            "gain": _gain(a, b),
            "raw pixels + least squares": _with_std(pixels, key),
        })
    return rows


def _pixel_verdict(pretrained: dict, pixels: dict, steps: int) -> str:
    shots = PIXEL_GOAL_SHOTS
    a, p = pretrained.get(f"fewshot/{shots}shot"), pixels.get(f"fewshot/{shots}shot")
    if a is None or p is None:
        return f"- {shots}-shot against raw pixels + least squares: not measured."
    if a > p:
        return (f"- {shots}-shot against raw pixels + least squares: {a:.1f}% vs {p:.1f}% ({a - p:+.1f}) — meets the "
                "goal: the pretrained features hold more than a linear model reads off the pixels.")
    return (f"- {shots}-shot against raw pixels + least squares: {a:.1f}% vs {p:.1f}% ({a - p:+.1f}) — misses the "
            f"goal: at this budget ({steps} steps) the pretrained features do not beat the pixels themselves.")


def _verdicts(pretrained: dict, random_init: dict) -> list[str]:
    lines = []
    for shots, goal in GOALS.items():
        a, b = pretrained.get(f"fewshot/{shots}shot"), random_init.get(f"fewshot/{shots}shot")
        if a is None or b is None:
            lines.append(f"- {shots}-shot: not measured.")
            continue
        met = "meets" if a - b >= goal else "misses"
        lines.append(f"- {shots}-shot: pretrained {a:.1f}% vs random init {b:.1f}%, {a - b:+.1f} points — {met} "
                     f"the goal of +{goal:.0f}.")
    lin_a, lin_b = pretrained.get("linear/top1"), random_init.get("linear/top1")
    knn_a, knn_b = pretrained.get("knn/k20_top1"), random_init.get("knn/k20_top1")
    if lin_a is not None and lin_b is not None:
        lines.append(f"- linear probe: {lin_a:.1f}% vs {lin_b:.1f}% ({lin_a - lin_b:+.1f}).")
    if knn_a is not None and knn_b is not None:
        if knn_a > knn_b:
            lines.append(f"- kNN (k=20): {knn_a:.1f}% vs {knn_b:.1f}% ({knn_a - knn_b:+.1f}): the pretrained features "
                         "are better for cosine nearest neighbours too.")
        else:
            lines.append(f"- kNN (k=20): {knn_a:.1f}% vs {knn_b:.1f}% ({knn_a - knn_b:+.1f}): the pretrained features "
                         "are not better for cosine nearest neighbours; MPP does not train the feature space for "
                         "cosine similarity, and this report does not claim a gain the data do not show.")
    return lines


def write_demo_report(work: Path, *, pretrained: dict, random_init: dict, pixels: dict, data, pretrain_dir: Path,
                      analysis_dir: Path, quick: bool) -> Path:
    """`work/report.md`; `data` is the `DemoData` the demo built (None for the user's own shards)."""
    config = yaml.safe_load((pretrain_dir / "config.yaml").read_text())
    target = config["objective"]["kwargs"].get("target", "mean_color")
    normalised = bool((config["objective"]["kwargs"].get("target_kwargs") or {}).get("normalize"))
    steps = config["train"]["total_steps"]
    batch = config["train"]["global_batch"]
    figures = {"Few-shot accuracy against shots": plot_fewshot(
        {"pretrained (MPP)": pretrained, "random init": random_init, "raw pixels": pixels}, work / "fewshot.png",
        title="Few-shot least squares: frozen features and raw pixels")}
    for name, file in (("Training loss and target error/accuracy", "training_curves.png"),
                       ("Figure 7 (as in the ViT paper)", "figure7.png"),
                       ("Masked prediction", "masked_prediction.png"),
                       ("Position embedding similarity", "position_similarity.png")):
        if (analysis_dir / file).is_file():
            figures[name] = analysis_dir / file
    notes = [
        "**What ran.** " + (
            "A QUICK run (a few steps, for tests): the figures below prove the pipeline runs, not that it learns. "
            if quick else "") +
        f"A `{config['model']['name']}` ViT pretrained with masked patch prediction for {steps} steps of "
        f"{batch} images (target `{target}`{' per-patch normalised' if normalised else ''}, {int(config['objective']['kwargs'].get('corruption_rate', 0.5) * 100)}% "
        "of patches corrupted: 80% [MASK], 10% another patch, 10% kept), labels unused. Evaluated on frozen, "
        "mean-pooled patch features against the same architecture at its own random initialisation (same seed).",
        "**Measured against the goals.**\n" + "\n".join(
            [*_verdicts(pretrained, random_init), _pixel_verdict(pretrained, pixels, steps)]),
        _target_note(data, target, normalised),
        "**How to read the figures.** Few-shot: closed-form least squares onto {-1, 1}^10 from k labelled "
        "images per class, L2 chosen on those k alone (leave-one-out; GCV at 1 shot), mean ± std over draws; "
        "big_vision's fixed-L2 protocol (the paper's code) is in `eval/comparison.md` as `_fixed_l2`. Figure 7: principal components of the "
        "patch-embedding filters, cosine similarity of position embeddings, mean attention distance per head "
        "(`analysis/analysis.md` explains each). Masked prediction: original, corrupted input (grey = [MASK], "
        "outlined = replaced or kept), target and prediction for the corrupted patches; for `pixels` the "
        "prediction is the patch itself, and the last panel shows its mean colour — the paper's mean-colour "
        "picture.",
        "Files: `summary.json` (the headline figures), `eval/comparison.md` (every metric), "
        "`analysis/analysis.md`, `pretrain/metrics.jsonl`.",
    ]
    if data is not None:
        notes.insert(1, f"**Data.** {data.title}. Licence: {data.licence}.")
    return write_report(work, title=f"ssl_vit demo: masked patch prediction on {data.title if data else 'your shards'}",
                        summary={"model": config["model"]["name"], "target": target, "steps": steps,
                                 "global batch": batch, "data": config["data"]["train"]},
                        figures=figures, tables=[{"title": "Pretrained vs random init vs raw pixels (test split)",
                                                  "rows": _rows(pretrained, random_init, pixels)}],
                        notes=notes, filename="report.md")


def _target_note(data, target: str, normalised: bool) -> str:
    """Why this target, where a measurement says why (the digits' study; the colour runs); else just its name."""
    if data is not None and data.name == "emoji" and target == "mean_color":
        return COLOUR_TARGET
    if (data is None or data.name == "digits") and (target, normalised) == ("pixels", True):
        return TARGET_WHY
    return f"**Target.** `{target}`, as configured."
