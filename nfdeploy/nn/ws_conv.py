"""Scaled Weight Standardization (Brock et al. 2021a).

    W_hat[i] = gain_i * (W[i] - mean_i) / sqrt(max(fan_in * var_i, eps))

mean_i and var_i (biased) run over output channel i's fan-in.  This is DeepMind's eps form: it
clamps N*var instead of adding eps to var (timm's ScaledStdConv2d computes
(W - mean) / sqrt(var + eps) / sqrt(fan_in)).  We use the clamp because for any non-degenerate
filter (fan_in * var >= 1e-4; Kaiming init gives ~1) it is *exactly* the mathematical W_hat, so
the folded static weight has no eps bias to reproduce, and a collapsed filter still cannot divide
by zero.  The activation gain gamma is not applied here; it lives in GammaAct and folds into the
weight of the consuming conv.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

WS_EPS = 1e-4


def standardize_weight(weight: torch.Tensor, gain: torch.Tensor | None, eps: float = WS_EPS) -> torch.Tensor:
    """Return the scaled, standardized weight (same dtype as `weight`)."""
    fan_in = weight[0].numel()
    var, mean = torch.var_mean(weight, dim=tuple(range(1, weight.ndim)), keepdim=True, correction=0)
    scale = torch.rsqrt(torch.clamp(var * fan_in, min=eps))
    if gain is not None:
        scale = scale * gain.view(-1, *([1] * (weight.ndim - 1)))
    return (weight - mean) * scale


class ScaledStdConv2d(nn.Conv2d):
    """Conv2d whose weight is re-standardized on every forward; `gain` is per output channel."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        bias: bool = True,
        eps: float = WS_EPS,
    ):
        if padding is None:
            padding = kernel_size // 2
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, groups=groups, bias=bias
        )
        self.gain = nn.Parameter(torch.ones(out_channels))
        self.eps = eps
        # Weights drawn N(0,1): standardization removes any scale, this keeps var*fan_in far from eps.
        nn.init.normal_(self.weight, 0.0, 1.0 / math.sqrt(self.weight[0].numel()))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def standardized_weight(self) -> torch.Tensor:
        return standardize_weight(self.weight, self.gain, self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.standardized_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)
