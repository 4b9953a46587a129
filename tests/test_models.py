"""NF-ResNet family, BN twins, registry and signal propagation."""

import pytest
import torch

from nfdeploy.models import create_model, get_config, list_models, twin_name
from nfdeploy.models.nf_resnet import ResidualBlock
from nfdeploy.models.spp import measure_spp, spp_report
from nfdeploy.nn import ScaledStdConv2d

NF_NAMES = ["nf_resnet18", "nf_resnet26", "nf_resnet34", "nf_resnet50", "nf_resnet101"]


def test_registry_has_named_configs_and_twins():
    names = list_models()
    for n in NF_NAMES + ["nf_resnet_c8", "nf_resnet_c20", "nf_resnet_c56"]:
        assert n in names and twin_name(n) in names
        assert get_config(twin_name(n)).norm == "bn"
    with pytest.raises(KeyError, match="unknown model"):
        get_config("nf_resnet9000")


@pytest.mark.parametrize("name,params_m", [("nf_resnet18", 11.7), ("nf_resnet50", 25.6), ("nf_resnet101", 44.5)])
def test_parameter_counts_match_resnet_sizes(name, params_m):
    n = sum(p.numel() for p in create_model(name).parameters()) / 1e6
    assert abs(n - params_m) / params_m < 0.03


def test_twin_has_identical_topology():
    nf, bn = create_model("nf_resnet50"), create_model("bn_resnet50")
    conv_shapes = lambda m: [tuple(c.weight.shape) for c in m.modules() if isinstance(c, torch.nn.Conv2d)]  # noqa: E731
    assert conv_shapes(nf) == conv_shapes(bn)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in nf.modules())
    assert not any(isinstance(m, ScaledStdConv2d) for m in bn.modules())


@pytest.mark.parametrize(
    "name,size",
    [
        ("nf_resnet_c20", 32),
        ("nf_resnet18", 64),
        ("nf_seresnet_c20", 32),
        ("bn_resnet_c20", 32),
        ("nf_resnet_c26b", 32),
    ],
)
def test_forward_backward_shapes(name, size):
    m = create_model(name, num_classes=7, in_chans=1, drop_rate=0.1, drop_path_rate=0.1)
    x = torch.randn(4, 1, size, size)
    y = m(x)
    assert y.shape == (4, 7)
    y.sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_skip_init_makes_blocks_identity_at_init():
    m = create_model("nf_resnet_c20").eval()
    x = torch.randn(2, 16, 32, 32)
    block = m.blocks[1]  # not a transition: shortcut is x itself
    assert torch.equal(block(x), x)


def test_betas_follow_the_variance_recurrence():
    m = create_model("nf_resnet50", alpha=0.2)
    blocks = [b for b in m.blocks if isinstance(b, ResidualBlock)]
    expected = 1.0
    for b in blocks:
        assert abs(b.beta - expected**0.5) < 1e-12
        expected = (1.0 if b.shortcut is not None else expected) + 0.04


def test_spp_nf_variance_follows_analytic_recurrence():
    """Deep NF config, skip gains 1: Var after block = 1 + k alpha^2 since the last transition,
    within 15%.  DeepMind's strided-conv shortcut keeps the reset exact; see the next test."""
    rows = measure_spp("nf_resnet101", batch=8, input_size=160, downsample="stride")  # worst block ~9% off
    assert len(rows) == 33
    ratios = [r["avg_var"] / r["expected_var"] for r in rows]
    assert max(abs(q - 1) for q in ratios) <= 0.15, ratios
    # and the squared mean stays small relative to the variance (no mean shift building up)
    assert all(r["avg_sq_mean"] < 0.2 * r["avg_var"] for r in rows)


def test_spp_avg_pool_shortcut_quarters_variance_on_white_noise():
    """The default NFNet-style shortcut averages 2x2 windows: at init it divides the shortcut's
    variance by between 1 (a smooth signal) and 4 (white noise) at each downsampling transition,
    so the analytic reset to 1 + alpha^2 does not hold there; the stride-1 first stage still
    follows the recurrence within 15%."""
    rows = measure_spp("nf_resnet101", batch=8, input_size=128)
    stage1 = rows[:3]
    assert max(abs(r["avg_var"] / r["expected_var"] - 1) for r in stage1) <= 0.15
    after_pool = rows[3]  # first block of stage 2: avg-pooled shortcut + alpha^2 * branch
    assert after_pool["transition"]
    assert 0.25 * 0.9 < after_pool["avg_var"] < 0.5 * after_pool["expected_var"]


def test_spp_bn_twin_contrast_and_report(tmp_path):
    rep = spp_report("nf_resnet_c20", tmp_path, batch=8)
    bn = [r for r in rep["rows"] if r["model"] == "bn_resnet_c20"]
    nf = [r for r in rep["rows"] if r["model"] == "nf_resnet_c20"]
    assert len(bn) == len(nf) == 9
    # Within a stage, the pre-activation BN ResNet's un-normalised stream gains ~1 of variance per
    # block (each branch is normalised to ~1); the NF stream gains ~alpha^2 = 0.04 of its scale.
    for first in (0, 3, 6):
        assert bn[first + 2]["avg_var"] / bn[first]["avg_var"] > 1.5
        assert nf[first + 2]["avg_var"] / nf[first]["avg_var"] < 1.15
    assert (tmp_path / "spp.csv").read_text().count("\n") == 19
    assert (tmp_path / "spp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_spp_cli(tmp_path):
    from conftest import run_cli

    proc = run_cli("spp", "nf_resnet_c20", "--out", str(tmp_path), "--batch", "4")
    assert proc.returncode == 0, proc.stderr
    assert "9 blocks" in proc.stdout and (tmp_path / "spp.csv").is_file() and (tmp_path / "spp.png").is_file()
    bad = run_cli("spp", "resnet50")
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: unknown NF model")
