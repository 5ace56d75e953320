"""Evaluation of frozen and fine-tuned backbones; evaluators are plug-ins (`build(name, **cfg).run(ctx)`).

Feature-based protocols (few-shot, linear probe, kNN) share features extracted once per checkpoint and
cached on disk; fine-tuning trains the backbone with the pretraining trainer. See `registry.py`.
"""
from . import fewshot, finetune, knn, linear  # noqa: F401  (importing registers the evaluators)
from .context import EvalContext, features_context
from .features import Features, extract_features
from .registry import build, names, register

__all__ = ["EvalContext", "Features", "build", "extract_features", "features_context", "names", "register"]
