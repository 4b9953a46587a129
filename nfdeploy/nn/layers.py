"""Small layers shared by the NF model and its BatchNorm twin."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class DropPath(nn.Module):
    """Stochastic depth: zero a sample's residual branch with probability p, scale survivors by 1/(1-p).

    Identity in eval mode, so it vanishes at export."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class SqueezeExcite(nn.Module):
    """y = x * gain * sigmoid(W2 relu(W1 avgpool(x) + b1) + b2).

    NF nets use gain 2 so that the gate, ~0.5 at init, keeps the branch variance (Brock et al. 2021b)."""

    def __init__(self, channels: int, hidden: int, gain: float = 1.0):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=True)
        self.gain = float(gain)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return torch.sigmoid(self.fc2(F.relu(self.fc1(s))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gate(x)
        return x * g if self.gain == 1.0 else x * (g * self.gain)
