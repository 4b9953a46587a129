"""Reusable layers: scaled weight-standardized convolution, gain-normalised activations, AGC."""

from nfdeploy.nn.activations import GammaAct, activation_gamma, get_activation_fn
from nfdeploy.nn.agc import adaptive_grad_clip_, unitwise_norm
from nfdeploy.nn.ws_conv import WS_EPS, ScaledStdConv2d, standardize_weight

__all__ = [
    "GammaAct",
    "activation_gamma",
    "get_activation_fn",
    "adaptive_grad_clip_",
    "unitwise_norm",
    "ScaledStdConv2d",
    "standardize_weight",
    "WS_EPS",
]
