"""LARS (You et al. 2017) as MAE's linear probe uses it: layer-wise trust ratio on matrices, plain momentum
on everything else.

For a weight matrix the update direction d = g + wd·w is rescaled by η·‖w‖/‖d‖ (η the trust coefficient),
so each layer moves by a fixed fraction of its own norm regardless of the gradient's scale; this is what
lets MAE probe with batch 16384 and lr 6.4. Biases and norm parameters (ndim ≤ 1) skip decay and scaling.
"""
from __future__ import annotations

from typing import Iterable

import torch


class LARS(torch.optim.Optimizer):
    def __init__(
        self, params: Iterable, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9,
        trust_coefficient: float = 0.001,
    ):
        if lr < 0 or weight_decay < 0 or not 0 <= momentum < 1 or trust_coefficient <= 0:
            raise ValueError(f"invalid LARS settings lr={lr} wd={weight_decay} momentum={momentum} eta={trust_coefficient}")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if p.ndim > 1:
                    d = d.add(p, alpha=group["weight_decay"])
                    p_norm, d_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                    # A zero weight or zero update keeps the raw direction (trust ratio 1).
                    trust = torch.where((p_norm > 0) & (d_norm > 0), group["trust_coefficient"] * p_norm / d_norm, 1.0)
                    d = d.mul(trust)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(d)
                p.add_(mu, alpha=-group["lr"])
        return loss
