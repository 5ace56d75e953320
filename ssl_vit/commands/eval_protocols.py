"""What `ssl-vit eval PROTOCOL --help` says of each built-in evaluator, written out so `--help` imports no torch.

The evaluators' modules import torch (seconds), and help must answer at once. So each evaluator's
`ssl_vit.eval.registry.describe(name)` — its module's first paragraph and its constructor's options with their
defaults — is copied here, and tests/test_help.py holds this table equal to `describe` for every registered
evaluator: a changed default or a new evaluator fails that test, which prints the table to paste here.
"""
from __future__ import annotations

from typing import Any

EVALUATORS: dict[str, tuple[str, dict[str, Any]]] = {
    "fewshot": ("Few-shot linear evaluation on frozen features, under three named protocols.",
                {"shots": (1, 5, 10, 25), "seeds": 3, "val_per_class": 0, "train_holdout": 0.0, "l2_grid": None,
                 "fixed_l2": 1024.0, "bias": 100.0, "pool": None, "layers": None}),
    "finetune": ("Fine-tuning: the pretrained backbone plus a zero-initialised linear head, trained end to end.",
                 {"recipe": None, "overrides": (), "resume": "auto"}),
    "knn": ("Weighted k-nearest-neighbour classification on frozen features (DINO's protocol).",
            {"k": (10, 20, 200), "temperature": 0.07, "pool": None, "layers": None}),
    "linear": ("Linear probe: multinomial logistic regression on frozen features.",
               {"protocol": "lbfgs", "weight_decays": (1e-06, 1e-05, 0.0001, 0.001, 0.01), "holdout_fraction": 0.1,
                "max_iter": 500, "pool": None, "layers": None}),
}
