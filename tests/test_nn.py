"""Layers: activation gains, scaled weight standardization, AGC."""

import math

import pytest
import torch

from nfdeploy.nn import (
    GammaAct,
    ScaledStdConv2d,
    activation_gamma,
    adaptive_grad_clip_,
    standardize_weight,
    unitwise_norm,
)


def test_relu_gamma_matches_closed_form():
    closed = math.sqrt(2.0 / (1.0 - 1.0 / math.pi))
    assert abs(activation_gamma("relu") - closed) < 1e-12


@pytest.mark.parametrize("act,ref", [("gelu", 1.7009), ("silu", 1.7872)])
def test_gamma_known_values(act, ref):
    assert abs(activation_gamma(act) - ref) < 1e-4


@pytest.mark.parametrize("act", ["relu", "gelu", "silu"])
def test_gamma_normalises_variance_empirically(act):
    z = torch.randn(4_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = GammaAct(act)(z)
    assert abs(float(y.var()) - 1.0) < 5e-3


def test_unknown_activation_is_rejected():
    with pytest.raises(ValueError, match="unknown activation"):
        GammaAct("tanhh")


def test_standardized_weight_statistics():
    conv = ScaledStdConv2d(8, 16, 3)
    with torch.no_grad():
        conv.weight.mul_(7.0).add_(3.0)
        conv.gain.uniform_(0.5, 2.0)
    w = conv.standardized_weight().double()
    fan_in = 8 * 9
    per_out = w.flatten(1)
    assert per_out.mean(1).abs().max() < 1e-6
    # sum_j W_hat_ij^2 = gain_i^2  (unit fan-in-scaled variance)
    assert torch.allclose((per_out**2).sum(1), conv.gain.double() ** 2, rtol=1e-5)
    assert torch.allclose(per_out.var(1, correction=0) * fan_in, conv.gain.double() ** 2, rtol=1e-5)


def test_ws_eps_clamps_only_degenerate_filters():
    w = torch.zeros(2, 1, 3, 3, dtype=torch.float64)
    w[0] = torch.randn(1, 3, 3, dtype=torch.float64)
    out = standardize_weight(w, None)
    assert torch.isfinite(out).all() and torch.equal(out[1], torch.zeros_like(out[1]))
    # For a non-degenerate filter the clamp is inactive: exactly (W - mean) / sqrt(N var).
    ref = (w[0] - w[0].mean()) / torch.sqrt(w[0].var(correction=0) * 9)
    assert torch.allclose(out[0], ref, rtol=0, atol=1e-15)


def test_ws_conv_preserves_variance_of_unit_inputs():
    torch.manual_seed(0)
    conv = ScaledStdConv2d(64, 64, 1)
    x = torch.randn(64, 64, 8, 8)
    with torch.no_grad():
        assert abs(float(conv(x).var()) - 1.0) < 0.05


def test_agc_clips_unitwise_to_lambda():
    p = torch.nn.Parameter(torch.randn(4, 3, 3, 3))
    p.grad = torch.randn_like(p) * 10
    p.grad[0] *= 1e-4  # this unit is under the threshold and must stay untouched
    g0 = p.grad[0].clone()
    n = adaptive_grad_clip_([p], clip=0.01, eps=1e-3)
    ratio = (unitwise_norm(p.grad) / unitwise_norm(p.detach()).clamp(min=1e-3)).flatten()
    assert int(n) == 3
    assert torch.equal(p.grad[0], g0)
    assert torch.all(ratio <= 0.01 * (1 + 1e-5))
    assert torch.allclose(ratio[1:], torch.full((3,), 0.01), rtol=1e-5)


def test_agc_scalar_and_eps():
    p = torch.nn.Parameter(torch.zeros(()))  # a zero-init skip gain: eps keeps it trainable
    p.grad = torch.tensor(5.0)
    adaptive_grad_clip_([p], clip=0.01, eps=1e-3)
    assert abs(float(p.grad) - 1e-5) < 1e-9
