"""Activations scaled to preserve variance.

gamma(g) = 1 / sqrt(Var[g(z)]),  z ~ N(0, 1),  so that Var[gamma * g(z)] = 1.
For ReLU the closed form is sqrt(2 / (1 - 1/pi)) ~ 1.7129.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "silu": F.silu,
}


def _numpy_act(name: str) -> Callable[[np.ndarray], np.ndarray]:
    from scipy.special import erf, expit

    if name == "relu":
        return lambda z: np.maximum(z, 0.0)
    if name == "gelu":
        return lambda z: 0.5 * z * (1.0 + erf(z / math.sqrt(2.0)))
    if name == "silu":
        return lambda z: z * expit(z)
    raise ValueError(f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}")


def get_activation_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}") from None


@functools.cache
def activation_gamma(name: str) -> float:
    """1 / std of act(z) for z ~ N(0,1), by adaptive Gauss-Kronrod quadrature (float64)."""
    from scipy import integrate

    g = _numpy_act(name)
    pdf = lambda z: math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)  # noqa: E731
    m1 = integrate.quad(lambda z: float(g(np.float64(z))) * pdf(z), -np.inf, np.inf, epsabs=1e-13, epsrel=1e-13)[0]
    m2 = integrate.quad(lambda z: float(g(np.float64(z))) ** 2 * pdf(z), -np.inf, np.inf, epsabs=1e-13, epsrel=1e-13)[0]
    return 1.0 / math.sqrt(m2 - m1 * m1)


class GammaAct(nn.Module):
    """y = gamma * act(x) * scale.

    `scale` carries a constant that precedes the next linear op (NF's 1/beta); both constants are
    plain Python floats so the fold step reads them exactly.
    """

    def __init__(self, act: str = "relu", scale: float = 1.0, use_gamma: bool = True):
        super().__init__()
        self.act_name = act
        self.fn = get_activation_fn(act)
        self.gamma = activation_gamma(act) if use_gamma else 1.0
        self.scale = float(scale)

    @property
    def multiplier(self) -> float:
        return self.gamma * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fn(x)
        m = self.multiplier
        return y if m == 1.0 else y * m

    def extra_repr(self) -> str:
        return f"{self.act_name}, gamma={self.gamma:.6f}, scale={self.scale:.6f}"
