"""Test classes that no training sample carries: named, never silently scored.

A classifier fitted on the training features (few-shot, linear probe, kNN votes) can never predict a class it
saw no example of, so each test image of such a class counts as wrong whatever the backbone: the accuracy is
capped below 100% by the data, not by the features. That happens with a test split built from more class
folders than the training split, or a training subset that missed a rare class. Each feature-based evaluator
adds `test_only_class/NAME` (that class's test images) to its metrics and says so on the console;
`results.write_results` names the classes in results.json and results.md.
"""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .context import EvalContext
    from .features import Features

PREFIX = "test_only_class/"


def unseen_test_classes(ctx: "EvalContext", train: "Features", test: "Features", evaluator: str) -> dict[str, float]:
    """{`test_only_class/NAME`: test images of that class} for each class of `test` absent from `train`, printed
    on the main process as one line naming them and the share of the test set they are."""
    present = set(torch.unique(train.labels).tolist())
    counts = torch.bincount(test.labels)
    missing = [c for c in torch.unique(test.labels).tolist() if c not in present]
    if not missing:
        return {}
    names = _class_names(ctx)
    label = {c: names[c] if names is not None and 0 <= c < len(names) else f"class {c}" for c in missing}
    out = {f"{PREFIX}{label[c]}": float(counts[c]) for c in missing}
    if ctx.is_main:
        share = 100.0 * sum(int(counts[c]) for c in missing) / max(len(test), 1)
        listed = ", ".join(f"{label[c]!r} ({int(counts[c])} images)" for c in missing)
        print(f"{evaluator}: {len(missing)} test class{'es' * (len(missing) > 1)} that no training sample carries: "
              f"{listed}; no classifier can predict {'them' if len(missing) > 1 else 'it'}, so those {share:.1f}% of "
              "the test images count as wrong whatever the backbone", file=sys.stderr)
    return out


def _class_names(ctx: "EvalContext") -> list[str] | None:
    """The class list of the training data, when the context reads shards that list one."""
    if not ctx.data.train:
        return None  # features given directly: labels only
    names = ctx.shards("train").class_names
    return list(names) if names else None
