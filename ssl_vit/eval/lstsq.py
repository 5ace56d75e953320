"""Closed-form regularised least squares for the whole L2 sweep at the price of one eigendecomposition.

big_vision's few-shot solver (`evaluators/fewshot_lsr.py`): standardise the features with the few-shot
set's own mean and std, append a constant bias column, regress targets 2·onehot − 1, predict the argmax.
With X the (N, D+1) inputs and Y the (N, C) targets, the ridge solution for strength λ is

    (A) N >= D+1:  w = (XᵀX + λI)⁻¹ XᵀY = Q diag(1/(e+λ)) Qᵀ XᵀY,   XᵀX = Q diag(e) Qᵀ
    (B) N <  D+1:  w = Xᵀ(XXᵀ + λI)⁻¹ Y = XᵀQ diag(1/(e+λ)) QᵀY,   XXᵀ = Q diag(e) Qᵀ

so `fit` decomposes the smaller Gram matrix once and `weights(λ)` is two small matmuls per λ.

The bias is regularised like every other weight, as in big_vision, but its column holds a large constant
(100): the penalty on the effective bias b = 100·w_b is λ·b²/10⁴, i.e. the bias is almost free. This is
exactly scikit-learn's `Ridge(alpha=λ, fit_intercept=False)` on the same augmented inputs.
All of it runs in float64: with 1-shot sets XᵀX is rank-deficient and λ = 2⁻⁶ is small.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

BIAS_CONSTANT = 100.0
STD_EPS = 1e-5  # big_vision's: keeps constant features (std 0) finite


def augment(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, bias: float = BIAS_CONSTANT) -> torch.Tensor:
    """(N, D) features -> (N, D+1) float64: standardised, then the constant bias column."""
    z = (x.double() - mean) / std
    return torch.cat([z, torch.full((z.shape[0], 1), bias, dtype=z.dtype, device=z.device)], dim=1)


@dataclass
class LeastSquares:
    """The fitted sweep: `weights(l2)` and `predict(x, l2)` for any l2 without refitting."""

    mean: torch.Tensor  # (1, D)
    std: torch.Tensor  # (1, D)
    eigs: torch.Tensor  # (M,), M = min(N, D+1)
    lhs: torch.Tensor  # (D+1, M)
    rhs: torch.Tensor  # (M, C)
    bias: float = BIAS_CONSTANT

    @classmethod
    def fit(cls, x: torch.Tensor, labels: torch.Tensor, num_classes: int, bias: float = BIAS_CONSTANT) -> "LeastSquares":
        x = x.double()
        mean = x.mean(dim=0, keepdim=True)  # (1, D)
        std = x.std(dim=0, unbiased=False, keepdim=True) + STD_EPS  # (1, D)
        xa = augment(x, mean, std, bias)  # (N, D+1)
        y = 2.0 * F.one_hot(labels.long(), num_classes).double() - 1.0  # (N, C) in {-1, +1}
        if xa.shape[0] >= xa.shape[1]:
            eigs, q = torch.linalg.eigh(xa.T @ xa)  # (D+1,), (D+1, D+1)
            lhs, rhs = q, q.T @ (xa.T @ y)
        else:
            eigs, q = torch.linalg.eigh(xa @ xa.T)  # (N,), (N, N)
            lhs, rhs = xa.T @ q, q.T @ y
        return cls(mean, std, eigs.clamp_min(0.0), lhs, rhs, bias)

    def weights(self, l2: float) -> torch.Tensor:
        """(D+1, C) ridge weights for strength `l2`; the last row multiplies the bias column."""
        scale = 1.0 / (self.eigs + l2)  # (M,)
        return (self.lhs * scale[None, :]) @ self.rhs

    def predict(self, x: torch.Tensor, l2: float) -> torch.Tensor:
        """(N, D) raw features -> (N, C) scores, standardised with the *fitting* set's statistics."""
        xa = augment(x.to(self.mean.device), self.mean, self.std, self.bias)
        return xa @ self.weights(l2)

    def accuracy(self, x: torch.Tensor, labels: torch.Tensor, l2: float) -> float:
        """Top-1 accuracy in percent."""
        pred = self.predict(x, l2).argmax(dim=1).cpu()
        return 100.0 * (pred == labels.cpu()).double().mean().item()
