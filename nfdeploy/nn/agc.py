"""Adaptive Gradient Clipping (Brock et al. 2021b), unit-wise.

For each unit i (an output row of a weight; a whole vector/scalar otherwise):
    if ||G_i|| / max(||W_i||, eps) > lambda:  G_i <- lambda * max(||W_i||, eps) / ||G_i|| * G_i
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def unitwise_norm(x: torch.Tensor) -> torch.Tensor:
    if x.ndim <= 1:
        return x.norm(2)
    return x.norm(2, dim=tuple(range(1, x.ndim)), keepdim=True)


@torch.no_grad()
def adaptive_grad_clip_(parameters: Iterable[torch.Tensor], clip: float = 0.01, eps: float = 1e-3) -> torch.Tensor:
    """Clip gradients in place; returns how many units were clipped (a tensor, so no device sync).

    Call on unscaled gradients (after GradScaler.unscale_) and, in data-parallel training, after
    the all-reduce, so every replica clips the same averaged gradient."""
    clipped = torch.zeros((), dtype=torch.long)
    for p in parameters:
        if p.grad is None:
            continue
        g = p.grad
        max_norm = unitwise_norm(p).clamp_(min=eps).mul_(clip)
        g_norm = unitwise_norm(g)
        too_big = g_norm > max_norm
        factor = max_norm / g_norm.clamp(min=1e-6)
        g.copy_(torch.where(too_big, g * factor, g))
        clipped = clipped.to(g.device) + too_big.sum()
    return clipped
