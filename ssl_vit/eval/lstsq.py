"""Closed-form regularised least squares for the whole L2 sweep at the price of one eigendecomposition.

big_vision's few-shot solver (`evaluators/fewshot_lsr.py`): standardise the features with the few-shot
set's own mean and std, append a constant bias column, regress targets 2·onehot − 1, predict the argmax.
With X the (N, D+1) inputs and Y the (N, C) targets, the ridge solution for strength λ is

    (A) N >= D+1:  w = (XᵀX + λI)⁻¹ XᵀY = Q diag(1/(e+λ)) Qᵀ XᵀY,   XᵀX = Q diag(e) Qᵀ
    (B) N <  D+1:  w = Xᵀ(XXᵀ + λI)⁻¹ Y = XᵀQ diag(1/(e+λ)) QᵀY,   XXᵀ = Q diag(e) Qᵀ

so `fit` decomposes the smaller Gram matrix once and `weights(λ)` is two small matmuls per λ.

The same decomposition gives ridge's hat matrix H(λ) = X(XᵀX + λI)⁻¹Xᵀ = Q diag(e/(e+λ)) Qᵀ (case B; in case A
its diagonal is Σⱼ (XQ)ᵢⱼ² / (eⱼ+λ)), hence, with no refit, the two label-only ways to choose λ from the
fitting set itself:

    leave-one-out:  rᵢ = (yᵢ − ŷᵢ) / (1 − Hᵢᵢ)          (the residual of the fit without sample i, exactly)
    GCV:            n · ‖Y − Ŷ‖² / (n − tr H)²          (LOO with every Hᵢᵢ replaced by their mean)

GCV covers 1 shot per class, where leaving the only example out leaves its class with no example at all.
Both treat the standardisation as fixed: it uses the fitting set's features, never its labels.

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
    inputs: torch.Tensor | None = None  # (N, D+1) the augmented fitting set, for the hat matrix
    targets: torch.Tensor | None = None  # (N, C) its ±1 targets
    hat_basis: torch.Tensor | None = None  # (N, M): diag H(λ) = Σⱼ hat_basis² · hat_scale(λ)

    @classmethod
    def fit(cls, x: torch.Tensor, labels: torch.Tensor, num_classes: int, bias: float = BIAS_CONSTANT) -> "LeastSquares":
        x = x.double()
        mean = x.mean(dim=0, keepdim=True)  # (1, D)
        std = x.std(dim=0, unbiased=False, keepdim=True) + STD_EPS  # (1, D)
        xa = augment(x, mean, std, bias)  # (N, D+1)
        y = 2.0 * F.one_hot(labels.long(), num_classes).double() - 1.0  # (N, C) in {-1, +1}
        return cls.from_inputs(xa, y, mean, std, bias)

    @classmethod
    def from_inputs(cls, xa: torch.Tensor, y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                    bias: float = BIAS_CONSTANT) -> "LeastSquares":
        """The sweep on already augmented (N, D+1) inputs and (N, C) targets (what `fit` computes first)."""
        xa, y = xa.double(), y.double()
        if xa.shape[0] >= xa.shape[1]:
            eigs, q = torch.linalg.eigh(xa.T @ xa)  # (D+1,), (D+1, D+1)
            lhs, rhs, hat_basis = q, q.T @ (xa.T @ y), xa @ q  # hat_basis (N, D+1)
        else:
            eigs, q = torch.linalg.eigh(xa @ xa.T)  # (N,), (N, N)
            lhs, rhs, hat_basis = xa.T @ q, q.T @ y, q  # hat_basis (N, N)
        return cls(mean, std, eigs.clamp_min(0.0), lhs, rhs, bias, xa, y, hat_basis)

    def weights(self, l2: float) -> torch.Tensor:
        """(D+1, C) ridge weights for strength `l2`; the last row multiplies the bias column."""
        scale = 1.0 / (self.eigs + l2)  # (M,)
        return (self.lhs * scale[None, :]) @ self.rhs

    def hat_diagonal(self, l2: float) -> torch.Tensor:
        """(N,) the diagonal of H(λ): how much each fitting sample's own target pulls its prediction."""
        if self.inputs.shape[0] >= self.inputs.shape[1]:  # basis XQ: H = XQ diag(1/(e+λ)) (XQ)ᵀ
            scale = 1.0 / (self.eigs + l2)
        else:  # basis Q: H = Q diag(e/(e+λ)) Qᵀ
            scale = self.eigs / (self.eigs + l2)
        return (self.hat_basis.square() * scale[None, :]).sum(dim=1)

    def residuals(self, l2: float) -> torch.Tensor:
        """(N, C) targets minus fitted values on the fitting set."""
        return self.targets - self.inputs @ self.weights(l2)

    def loo_error(self, l2: float) -> float:
        """Mean squared leave-one-out residual (per sample and output), in closed form."""
        loo = self.residuals(l2) / (1.0 - self.hat_diagonal(l2)).clamp_min(1e-12)[:, None]  # (N, C)
        return loo.square().mean().item()

    def gcv_error(self, l2: float) -> float:
        """Generalised cross-validation: mean squared residual / (1 − tr H / n)²."""
        n = self.inputs.shape[0]
        trace = (self.eigs / (self.eigs + l2)).sum()  # tr H: the nonzero spectrum is shared by XXᵀ and XᵀX
        return (self.residuals(l2).square().mean() / (1.0 - trace / n).clamp_min(1e-12) ** 2).item()

    def predict(self, x: torch.Tensor, l2: float) -> torch.Tensor:
        """(N, D) raw features -> (N, C) scores, standardised with the *fitting* set's statistics."""
        xa = augment(x.to(self.mean.device), self.mean, self.std, self.bias)
        return xa @ self.weights(l2)

    def accuracy(self, x: torch.Tensor, labels: torch.Tensor, l2: float) -> float:
        """Top-1 accuracy in percent."""
        pred = self.predict(x, l2).argmax(dim=1).cpu()
        return 100.0 * (pred == labels.cpu()).double().mean().item()
