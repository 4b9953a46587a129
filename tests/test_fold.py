"""Folding is checked, not assumed: folded vs unfolded outputs on randomised models and real digits."""

from __future__ import annotations

import json
import math
import zlib

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from nfdeploy.fold import FoldedNet, count_ops, fold_model, randomize_, unfolded_equivalence
from nfdeploy.metrics import compare_outputs
from nfdeploy.models import create_model, list_models
from nfdeploy.nn import GammaAct, ScaledStdConv2d, activation_gamma
from nfdeploy.nn.layers import DropPath, SqueezeExcite
from nfdeploy.precision import PRECISIONS

TOL64_MAX_REL = PRECISIONS["fp64"].rel_l2  # float64 folded vs unfolded, here as max |diff| / max |ref| (stricter)
TOL32_REL_L2 = PRECISIONS["fp32"].rel_l2  # float32 folded vs float64 unfolded
ALLOWED_NF_OPS = {"Conv2d", "ReLU", "GELU", "SiLU", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "Linear", "Sigmoid"}


def _model(name: str, seed: int = 0, **overrides) -> nn.Module:
    return randomize_(create_model(name, **overrides), seed).double().eval()


def _input(model, batch: int = 2, size: int | None = None, seed: int = 0) -> torch.Tensor:
    cfg = model.cfg
    size = size or (32 if cfg.stem == "small" else 64)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, cfg.in_chans, size, size, generator=g, dtype=torch.float64)


def _check(model, x) -> tuple[FoldedNet, dict, dict]:
    f64, _ = fold_model(model, torch.float64)
    f32, _ = fold_model(model, torch.float32)
    e64 = unfolded_equivalence(model, f64, x)
    with torch.no_grad():  # one float64 reference for both (the unfolded forward is the slow part)
        e32 = compare_outputs(model(x), f32(x.float()))
    assert e64["max_rel"] <= TOL64_MAX_REL, e64
    assert e32["rel_l2"] <= TOL32_REL_L2, e32
    assert next(f32.parameters()).dtype == torch.float32
    return f64, e64, e32


def _check_structure(model, folded) -> None:
    leaves = [m for m in folded.modules() if not list(m.children())]
    assert not any(isinstance(m, (ScaledStdConv2d, GammaAct, SqueezeExcite, DropPath, nn.Dropout)) for m in leaves)
    assert all(type(m) is nn.Conv2d for m in leaves if isinstance(m, nn.Conv2d))
    ops = count_ops(folded)
    n_blocks = len(model.blocks)
    if model.cfg.norm == "nf":
        assert set(ops) <= ALLOWED_NF_OPS, ops
        assert "BatchNorm2d" not in ops
    else:  # only the residual-stream BNs survive: one per block (norm1) + final_norm, except that
        # with a conv-only stem, block 0's norm1 reads the stem conv alone and folds into it
        assert set(ops) <= ALLOWED_NF_OPS | {"BatchNorm2d"}, ops
        assert ops["BatchNorm2d"] == n_blocks + 1 - (model.cfg.stem == "small")
        assert all(not m.training for m in folded.modules() if isinstance(m, nn.BatchNorm2d))
    n_src_convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert ops["Conv2d"] == n_src_convs


@pytest.mark.parametrize("name", list_models())
def test_every_config_folds_exactly(name):
    model = _model(name, seed=zlib.crc32(name.encode()) % 1000)
    x = _input(model, batch=1)  # batch sizes > 1 are covered by the digits test
    folded, _, _ = _check(model, x)
    _check_structure(model, folded)


@pytest.mark.parametrize("downsample", ["avg", "stride"])
@pytest.mark.parametrize("name", ["nf_resnet_c20", "nf_resnet_c26b", "bn_resnet_c26b"])
def test_downsample_variants(name, downsample):
    model = _model(name, seed=3, downsample=downsample)
    _check(model, _input(model, size=33))  # odd size: ceil-mode pooling and strided convs at edges


@pytest.mark.parametrize("act", ["gelu", "silu"])
@pytest.mark.parametrize("name", ["nf_resnet_c20", "nf_seresnet_c20", "bn_resnet_c26b"])
def test_activations(name, act):
    model = _model(name, seed=4, act=act)
    folded, _, _ = _check(model, _input(model))
    acts = {type(m) for m in folded.modules() if isinstance(m, (nn.ReLU, nn.GELU, nn.SiLU))}
    expected = {"gelu": nn.GELU, "silu": nn.SiLU}[act]
    assert expected in acts and acts <= {expected, nn.ReLU}  # ReLU only inside SE gates
    if name.startswith("nf"):
        assert folded.final_act.__class__ is expected


def test_se_with_zero_skip_gain():
    model = _model("nf_seresnet_c20", seed=5)
    with torch.no_grad():
        model.blocks[1].skip_gain.zero_()
        model.blocks[4].skip_gain.zero_()
    folded, report = fold_model(model, torch.float64)
    _check(model, _input(model))
    for i in (1, 4):
        fb, src = folded.blocks[i], model.blocks[i]
        assert torch.count_nonzero(fb.convs[-1].weight) == 0 and torch.count_nonzero(fb.convs[-1].bias) == 0
        assert torch.equal(fb.se.fc1.weight, src.se.fc1.weight)  # gate left unchanged, no 1/0
        assert "note" in next(e for e in report.blocks[i]["folded"] if e["constant"] == "attn_gain*alpha*skip_gain")
    assert all(torch.isfinite(p).all() for p in folded.parameters())


def test_default_init_all_zero_skip_gains():
    model = create_model("nf_resnet_c8").double().eval()  # skip gains are 0 at init
    _check(model, _input(model))


def test_dropout_and_drop_path_vanish():
    model = _model("nf_resnet_c20", seed=6, drop_rate=0.3, drop_path_rate=0.2).train()
    folded, report = fold_model(model, torch.float64)
    assert model.training  # eval semantics without touching the caller's mode
    assert {r["module"] for r in report.removed} == {"dropout"} | {f"blocks.{i}.drop_path" for i in range(1, 9)}
    e = unfolded_equivalence(model, folded, _input(model))  # compares against model.eval()
    assert e["max_rel"] <= TOL64_MAX_REL and model.training


def test_input_model_not_modified():
    model = _model("nf_seresnet_c20", seed=7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded, _ = fold_model(model, torch.float64)  # same dtype: a shared tensor would be easy to miss
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    src_ptrs = {t.data_ptr() for t in [*model.parameters(), *model.buffers()]}
    assert not src_ptrs & {t.data_ptr() for t in [*folded.parameters(), *folded.buffers()]}


@pytest.mark.parametrize("name", ["nf_seresnet_c20", "bn_resnet_c8"])
def test_in_place_ops_are_safe(name):
    """The folded net's in-place activations/adds leave the input alone and keep autograd exact."""
    model = _model(name, seed=12)
    folded, _ = fold_model(model, torch.float64)
    x = _input(model).requires_grad_(True)
    x0 = x.detach().clone()
    (g_ref,) = torch.autograd.grad(model(x).square().sum(), x)
    (g_fold,) = torch.autograd.grad(folded(x).square().sum(), x)
    assert torch.equal(x.detach(), x0)
    assert compare_outputs(g_ref, g_fold)["max_rel"] <= 1e-9


def test_tolerance_is_not_vacuous():
    """A relative 1e-8 error in a single folded constant must show up above the float64 tolerance."""
    model = _model("nf_resnet_c20", seed=8)
    x = _input(model)
    for path in ("blocks.4.convs.1", "blocks.3.shortcut.conv", "blocks.0.convs.0"):
        folded, _ = fold_model(model, torch.float64)
        with torch.no_grad():
            folded.get_submodule(path).weight.mul_(1 + 1e-8)
        assert unfolded_equivalence(model, folded, x)["max_rel"] > TOL64_MAX_REL, path


@pytest.mark.parametrize("name", ["nf_resnet_c20", "bn_resnet_c20"])
def test_real_digits(name):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images[:64], dtype=torch.float64).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x = (x - x.mean()) / x.std()
    model = _model(name, seed=9, in_chans=1)
    _, e64, e32 = _check(model, x)
    assert e32["cosine"] > 1 - 1e-9


def test_report_nf():
    model = _model("nf_seresnet_c20", seed=10)
    _, report = fold_model(model)
    d = json.loads(json.dumps(report.to_dict()))
    assert d["dtype"] == "float32" and d["norm"] == "nf" and len(d["blocks"]) == len(model.blocks)
    gamma = activation_gamma("relu")
    for i, (b, entry) in enumerate(zip(model.blocks, d["blocks"])):
        assert entry["block"] == i and entry["explicit"] == []
        by_const = {}
        for e in entry["folded"]:
            by_const.setdefault(e["constant"], []).append(e)
        act1 = by_const["1/beta*gamma"]
        assert all(math.isclose(e["value"], gamma / b.beta, rel_tol=1e-15) for e in act1)
        targets = {t for e in act1 for t in e["into"]}
        want = {f"blocks.{i}.convs.0.weight"} | ({f"blocks.{i}.shortcut.conv.weight"} if b.shortcut else set())
        assert targets == want
        c = 2.0 * 0.2 * float(b.skip_gain.detach())
        (out,) = by_const["attn_gain*alpha*skip_gain"]
        assert math.isclose(out["value"], c, rel_tol=1e-15)
        assert out["into"] == [f"blocks.{i}.convs.1.weight", f"blocks.{i}.convs.1.bias"]
        (inv,) = by_const["1/(attn_gain*alpha*skip_gain)"]
        assert inv["into"] == [f"blocks.{i}.se.fc1.weight"] and math.isclose(inv["value"] * c, 1.0, rel_tol=1e-15)
        assert by_const["gamma"][0]["into"] == [f"blocks.{i}.convs.1.weight"]
        assert len(by_const["WS(weight, gain)"]) == len(b.convs) + (b.shortcut is not None)
    assert d["head"]["folded"][0]["into"] == ["fc.weight"] and math.isclose(d["head"]["folded"][0]["value"], gamma)
    assert d["totals"]["explicit"] == 0 and d["totals"]["weight_standardizations"] == 22
    assert d["ops"] == count_ops(fold_model(model)[0])


def test_report_bn_twin():
    model = _model("bn_resnet_c26b", seed=11)
    _, report = fold_model(model)
    d = report.to_dict()
    n = len(model.blocks)
    # small stem: blocks.0.norm1 folds into the stem conv; every other norm1 stays explicit
    assert d["totals"]["explicit"] == n and d["totals"]["batchnorms_folded"] == 2 * n + 1
    assert d["stem"]["folded"][0]["into"] == ["stem.0.weight", "stem.0.bias"]
    assert d["stem"]["folded"][0]["constant"] == "BatchNorm(blocks.0.norm1)"
    assert d["totals"]["scalars_folded"] == 0 and d["totals"]["weight_standardizations"] == 0
    assert d["blocks"][0]["explicit"] == []
    for i, entry in enumerate(d["blocks"][1:], start=1):
        (bn,) = entry["explicit"]
        assert bn["op"] == "BatchNormalization" and bn["where"] == f"blocks.{i}.norm1" and "residual" in bn["reason"]
        assert [e["into"] for e in entry["folded"]] == [
            [f"blocks.{i}.convs.{k}.weight", f"blocks.{i}.convs.{k}.bias"] for k in range(2)
        ]
    assert d["head"]["explicit"][0]["where"] == "final_norm" and d["head"]["explicit"][0]["reason"]
