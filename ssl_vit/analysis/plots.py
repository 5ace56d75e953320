"""Curves: training loss and target accuracy from a run's `metrics.jsonl`; few-shot accuracy against shots.

The trainer writes one JSON object per logged step (`step`, `loss`, `lr`, and the objective's metrics such
as `acc`, `acc_masked`, ...). Raw values are drawn faint and an exponential moving average on top, as
TensorBoard does, so short noisy runs stay readable.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import DataError
from . import _mpl


# ----------------------------------------------------------------------------------------- training curves
def read_metrics(path: str | Path) -> list[dict]:
    """The records of a `metrics.jsonl`, in file order.

    A last line that does not parse is dropped (the run may be writing it right now); a bad line anywhere
    else means a damaged file and raises `DataError` naming the line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such metrics file; pass a run directory that holds metrics.jsonl")
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):
                break
            raise DataError(f"{path}, line {number}: not valid JSON ({err.msg}); the file is damaged") from err
        if isinstance(record, dict):
            records.append(record)
    return records


def smooth(values: Sequence[float], weight: float = 0.9) -> np.ndarray:
    """Debiased exponential moving average (TensorBoard's smoothing); NaNs are skipped, not propagated."""
    out = np.empty(len(values))
    ema, norm = 0.0, 0.0
    for i, v in enumerate(values):
        if math.isfinite(v):
            ema = weight * ema + (1.0 - weight) * v
            norm = weight * norm + (1.0 - weight)
        out[i] = ema / norm if norm > 0 else math.nan
    return out


def series(records: Sequence[Mapping], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the records that hold a numeric `key` and a `step`."""
    pairs = [
        (float(r["step"]), float(r[key]))
        for r in records
        if "step" in r and isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)
    ]
    steps, values = zip(*pairs) if pairs else ((), ())
    return np.asarray(steps), np.asarray(values)


def accuracy_keys(records: Sequence[Mapping], prefix: str = "acc") -> list[str]:
    """The metrics named `prefix` or `prefix_*` (`acc`, `acc_masked`, ...; `mse_masked`, ...), first-seen order."""
    keys: dict[str, None] = {}
    for r in records:
        for k in r:
            if k == prefix or k.startswith(prefix + "_"):
                keys[k] = None
    return list(keys)


def default_weight(num_points: int) -> float:
    """An EMA weight whose window is ~5% of the curve: smooth enough for long runs, no lag on short ones."""
    window = max(1.0, num_points / 20)
    return min(0.98, 1.0 - 1.0 / window)


def _draw_smoothed(ax, steps: np.ndarray, values: np.ndarray, label: str, color, weight: float | None) -> None:
    ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
    w = default_weight(len(values)) if weight is None else weight
    ax.plot(steps, smooth(values, w), color=color, linewidth=1.6, label=label)


def plot_training_curves(
    records: Sequence[Mapping], path: str | Path, *, weight: float | None = None, title: str | None = None
) -> Path:
    """Loss (left) and every accuracy metric (right) against the step; for a regression target (`pixels`),
    which has no accuracy, the right panel shows its per-kind errors (`mse_masked`, ...) instead.

    `weight` is the EMA smoothing weight (None: a window of ~5% of the logged points)."""
    steps, loss = series(records, "loss")
    if len(steps) == 0:
        raise DataError("no records with both 'step' and 'loss' in the metrics; has the run logged a step yet?")
    acc_keys = [k for k in accuracy_keys(records) if len(series(records, k)[0])]
    regression = not acc_keys
    if regression:
        acc_keys = [k for k in accuracy_keys(records, "mse") if len(series(records, k)[0])]
    fig = _mpl.new_figure(10 if acc_keys else 5, 3.8)
    axes = fig.subplots(1, 2 if acc_keys else 1, squeeze=False)[0]
    _draw_smoothed(axes[0], steps, loss, "loss", "C0", weight)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("training loss")
    axes[0].set_title("Loss")
    if np.all(loss[np.isfinite(loss)] > 0) and loss.max() / max(loss.min(), 1e-12) > 20:
        axes[0].set_yscale("log")  # losses spanning decades read better on a log axis
    if acc_keys:
        for i, key in enumerate(acc_keys):
            s, v = series(records, key)
            _draw_smoothed(axes[1], s, v, key, f"C{i}", weight)
        axes[1].set_xlabel("step")
        axes[1].set_ylabel("mean squared error" if regression else "target accuracy")
        axes[1].set_title(f"Prediction {'error' if regression else 'accuracy'} on corrupted patches")
        axes[1].legend(fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    return _mpl.save(fig, path)


# ---------------------------------------------------------------------------------------------- few-shot
_FLAT_KEY = re.compile(r"^fewshot/(\d+)shot(_std)?$")


def fewshot_curve(results: Mapping) -> tuple[list[int], list[float], list[float] | None]:
    """(shots, mean accuracies, stds or None) from a results dict, sorted by shots.

    Accepts `{"fewshot": {"1": 0.4, ...}}` (values may also be `{"mean": m, "std": s}`) with an optional
    `{"fewshot_std": {"1": s, ...}}`, or the evaluators' flat form `{"fewshot/1shot": m, "fewshot/1shot_std": s}`.
    """
    means: dict[int, float] = {}
    stds: dict[int, float] = {}
    nested = results.get("fewshot")
    if isinstance(nested, Mapping):
        for shots, value in nested.items():
            if isinstance(value, Mapping):
                means[int(shots)] = float(value["mean"])
                if value.get("std") is not None:
                    stds[int(shots)] = float(value["std"])
            else:
                means[int(shots)] = float(value)
        for shots, value in (results.get("fewshot_std") or {}).items():
            stds[int(shots)] = float(value)
    for key, value in results.items():
        match = _FLAT_KEY.match(str(key))
        if match:
            (stds if match.group(2) else means)[int(match.group(1))] = float(value)
    if not means:
        raise DataError(
            f"no few-shot results found (keys: {', '.join(map(str, results)) or 'none'}); "
            "expected 'fewshot': {shots: accuracy} or 'fewshot/<n>shot' entries"
        )
    shots = sorted(means)
    return shots, [means[s] for s in shots], [stds.get(s, 0.0) for s in shots] if stds else None


def plot_fewshot(
    curves: Mapping[str, Mapping], path: str | Path, *, title: str = "Few-shot linear probe"
) -> Path:
    """Few-shot accuracy against shots (log axis), one line per results dict, e.g.
    `{"pretrained (MPP)": results_a, "random init": results_b}`; error bars where stds are given."""
    if not curves:
        raise ValueError("plot_fewshot needs at least one results dict")
    fig = _mpl.new_figure(5, 3.8)
    ax = fig.add_subplot()
    all_shots: set[int] = set()
    percent = False
    for i, (label, results) in enumerate(curves.items()):
        shots, means, stds = fewshot_curve(results)
        all_shots.update(shots)
        percent |= max(means) > 1.0  # the evaluators report percent; hand-made dicts may hold fractions
        ax.errorbar(shots, means, yerr=stds, marker="o", capsize=3, color=f"C{i}", label=label)
    ax.set_xscale("log")
    ax.set_xticks(sorted(all_shots), [str(s) for s in sorted(all_shots)])
    ax.minorticks_off()
    ax.set_xlabel("examples per class (shots)")
    ax.set_ylabel("top-1 accuracy (%)" if percent else "top-1 accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    return _mpl.save(fig, path)
