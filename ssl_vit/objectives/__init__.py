"""Objectives wrap a backbone and return `(loss, metrics)`: masked patch prediction and supervised classification."""
from . import targets
from .classification import ImageClassification
from .corruption import Corruption
from .mpp import MaskedPatchPrediction
from .registry import build, list_objectives

__all__ = ["Corruption", "ImageClassification", "MaskedPatchPrediction", "build", "list_objectives", "targets"]
