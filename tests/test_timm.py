"""Folding timm's NormFreeNet models (nfdeploy.interop.timm): real timm models, random init.

Tolerances (relative to the unfolded timm model run in float64, on the same random input):
  folded float64:  max|out - ref| / max|ref| <= 1e-10
  folded float32:  ||out - ref|| / ||ref||    <= 1e-5   (input cast to float32)
Inputs are small (64x64 / 65x65, batch 2) so the file stays within ~90 s on 2 CPU cores.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

SHIM = Path(__file__).resolve().parent / "torchvision_shim"
sys.path.insert(0, str(SHIM))
import sitecustomize  # noqa: E402,F401  (test-only torchvision shim: see its docstring)

timm = pytest.importorskip(
    "timm", reason="timm is not importable (install nfdeploy[timm]); the timm interop is untested"
)

from timm.layers import ScaledStdConv2d, ScaledStdConv2dSame  # noqa: E402

from nfdeploy.artifacts import ArtifactError, save_tensors  # noqa: E402
from nfdeploy.fold import count_ops  # noqa: E402
from nfdeploy.interop.timm import (  # noqa: E402
    SUPPORTED_PREFIXES,
    ExplicitScale,
    FoldedTimmNet,
    create_timm_model,
    fold_timm_model,
    is_plain,
    randomize_timm_,
    timm_input_size,
)
from nfdeploy.metrics import compare_outputs  # noqa: E402
from nfdeploy.precision import PRECISIONS  # noqa: E402

MAX_REL_F64 = PRECISIONS["fp64"].rel_l2  # applied to max |diff| / max |ref|: stricter than rel L2
REL_L2_F32 = PRECISIONS["fp32"].rel_l2


@pytest.fixture(autouse=True, scope="module")
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def _input(size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _check_structure(model: nn.Module, folded: nn.Module, report) -> None:
    assert isinstance(folded, FoldedTimmNet)
    assert is_plain(folded) == []
    assert not any(isinstance(m, (ScaledStdConv2d, ScaledStdConv2dSame)) for m in folded.modules())
    assert not any(type(m).__module__.startswith("timm") for m in folded.modules())
    # no scalar multiplies left, except ones the report lists
    n_scales = sum(isinstance(m, ExplicitScale) for m in folded.modules())
    assert n_scales == report.totals["explicit"]
    # report sanity
    n_ws = sum(isinstance(m, (ScaledStdConv2d, ScaledStdConv2dSame)) for m in model.modules())
    totals = report.totals
    assert totals["weight_standardizations"] == n_ws
    assert totals["blocks"] == sum(len(s) for s in model.stages)
    assert totals["scalars_folded"] >= 2 * totals["blocks"]  # at least beta and alpha in every block
    assert report.ops == count_ops(folded)
    assert report.norm == "nf"
    params = dict(folded.named_parameters())
    for sec in [report.stem, *report.blocks, report.head]:
        for e in sec["folded"]:
            if e["kind"] != "same_padding":
                assert all(name in params for name in e["into"]), e
    # every ZeroPad2d sits immediately before a conv (the exporter fuses it into the conv's pads)
    for m in folded.modules():
        if isinstance(m, nn.Sequential) and any(isinstance(c, nn.ZeroPad2d) for c in m):
            kids = list(m)
            assert (
                len(kids) == 2 and isinstance(kids[0], nn.ZeroPad2d) and isinstance(kids[1], (nn.Conv2d, nn.AvgPool2d))
            )


def _check_equivalence(model64: nn.Module, size: int) -> tuple[nn.Module, object]:
    """model64: the (randomised) timm model in float64, eval mode.  Fold at `size` into float64 and
    float32, compare against the unfolded model."""
    x = _input(size)
    with torch.no_grad():
        ref = model64(x)
    assert torch.isfinite(ref).all() and ref.abs().max() > 0
    f64, report = fold_timm_model(model64, (size, size), torch.float64)
    with torch.no_grad():
        err64 = compare_outputs(ref, f64(x))
    assert err64["max_rel"] <= MAX_REL_F64, err64
    del f64
    f32, report32 = fold_timm_model(model64, (size, size), torch.float32)
    assert report32.dtype == "float32" and all(p.dtype == torch.float32 for p in f32.parameters())
    with torch.no_grad():
        err32 = compare_outputs(ref, f32(x.float()))
    assert err32["rel_l2"] <= REL_L2_F32, err32
    _check_structure(model64, f32, report32)
    return f32, report32


def _timm64(name: str, seed: int = 0, **kwargs) -> nn.Module:
    model = timm.create_model(name, pretrained=False, **kwargs) if kwargs else create_timm_model(name)
    return randomize_timm_(model, seed).double().eval()


@pytest.mark.parametrize(
    "name", ["nf_resnet26", "nf_seresnet26", "nf_ecaresnet26", "nf_regnet_b0", "nfnet_f0", "nfnet_l0", "eca_nfnet_l0"]
)
def test_fold_matches_timm(name):
    model = _timm64(name)
    before = {k: v.clone() for k, v in model.state_dict().items()} if name == "nf_regnet_b0" else None
    folded, report = _check_equivalence(model, 64)
    assert folded.fixed_input_size is None  # no size-dependent padding in these models
    assert report.totals["explicit"] == 0
    kinds = {e["constant"] for s in report.blocks for e in s["folded"]}
    assert any("alpha" in k for k in kinds) and any("beta" in k for k in kinds)
    if name in ("nf_seresnet26", "nf_ecaresnet26", "nfnet_f0", "nfnet_l0", "eca_nfnet_l0"):
        assert "attn_gain*alpha" in kinds and "1/(attn_gain*alpha)" in kinds  # attn_last gate compensated
    if name == "nf_regnet_b0":  # mid-block SE: conv2 scaled by attn_gain, fc1 by its inverse
        assert "attn_gain" in kinds and "1/(attn_gain)" in kinds
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # model untouched
    x = _input(48, seed=5).float()  # no fixed size: any input size works
    with torch.no_grad():
        assert compare_outputs(model(x.double()), folded(x))["rel_l2"] <= REL_L2_F32


def test_fold_dm_nfnet_same_padding_odd_and_even():
    """dm_nfnet_f0: gamma in the activations, skipinit gains, TF 'SAME' padding resolved per size."""
    model = _timm64("dm_nfnet_f0")
    assert timm_input_size(model) == (3, 256, 256)
    for size in (65, 64):
        folded, report = _check_equivalence(model, size)
        assert folded.fixed_input_size == (size, size)
        pads = [e for sec in [report.stem, *report.blocks] for e in sec["folded"] if e["kind"] == "same_padding"]
        assert pads and all(e["constant"].endswith(f"(model input {size}x{size})") for e in pads)
        n_zeropad = report.ops.get("ZeroPad2d", 0)
        if size == 65:  # stride-2 3x3 convs need a symmetric pad at odd sizes: all in conv padding
            assert n_zeropad == 0
        else:  # ... and an asymmetric (0, 1, 0, 1) one at even sizes
            assert n_zeropad > 0 and [0, 1, 0, 1] in [e["value"] for e in pads]
        kinds = {e["constant"] for s in report.blocks for e in s["folded"]}
        assert "attn_gain*skipinit_gain*alpha" in kinds and "beta*gamma" in kinds
        with pytest.raises(ValueError, match="SAME"):
            folded(torch.zeros(1, 3, size + 1, size + 1))


def test_fold_small_variants_explicit_scale_zero_gain_and_avgpool_same():
    """Configurations the standard models do not reach: num_classes=0 with gamma_in_act (the final
    gamma has no linear consumer: one explicit, reported multiply), a zero skipinit gain (conv3
    zeroed, gate left), output_stride=16 (dilation; DownsampleAvg uses AvgPool2dSame), and
    dropout / stochastic depth (removed)."""
    small = dict(depths=(1, 1, 1, 1), channels=(32, 64, 96, 128), group_size=8)
    model = _timm64("dm_nfnet_f0", num_classes=0, **small)
    with torch.no_grad():
        model.stages[1][0].skipinit_gain.zero_()
    folded, report = _check_equivalence(model, 33)
    assert report.totals["explicit"] == 1 and report.head["explicit"][0]["op"] == "Mul"
    assert "num_classes=0" in report.head["explicit"][0]["reason"]
    zero = [e for e in report.blocks[1]["folded"] if e["value"] == 0.0]
    assert zero and "gate left unchanged" in zero[0]["note"]

    model = _timm64("nf_resnet26", output_stride=16, drop_rate=0.25, drop_path_rate=0.1)
    assert any(type(m).__name__ == "AvgPool2dSame" for m in model.modules())
    folded, report = _check_equivalence(model, 49)
    assert folded.fixed_input_size == (49, 49)
    removed = {r["module"] for r in report.removed}
    assert "head.drop" in removed and "stages.3.1.drop_path" in removed  # identity at inference
    assert report.ops.get("ZeroPad2d", 0) >= 1  # AvgPool2dSame(2, 1): pad (0, 1, 0, 1) before the pool


def test_a_model_is_accepted_for_what_it_is_not_its_name():
    """timm's small test_nfnet is a NormFreeNet under a name no family pattern matches: it folds exactly."""
    model = create_timm_model("test_nfnet").double().eval()
    randomize_timm_(model)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    folded, _ = fold_timm_model(model, input_size=(64, 64), dtype=torch.float64)
    assert compare_outputs(model(x), folded(x))["max_rel"] <= MAX_REL_F64
    for name, why in (
        ("resnet50", "not a NormFreeNet"),
        ("nf_resnet999", "no model of that name"),
        ("bogus", "no model of that name"),
    ):
        with pytest.raises(ValueError) as e:
            create_timm_model(name)
        msg = str(e.value)
        assert "\n" not in msg and name in msg and why in msg and all(p in msg for p in SUPPORTED_PREFIXES)
    with pytest.raises(TypeError):
        fold_timm_model(nn.Sequential(nn.Conv2d(3, 3, 1)))


def test_checkpoints(tmp_path):
    name = "nf_regnet_b0"
    src = randomize_timm_(create_timm_model(name), seed=3)
    sd = src.state_dict()
    x = _input(32).float()
    with torch.no_grad():
        ref = src(x)

    st = tmp_path / "w.safetensors"
    save_tensors(st, sd)
    loaded = create_timm_model(name, st)
    assert not loaded.training
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in sd.items())
    with torch.no_grad():
        assert torch.equal(loaded(x), ref)

    pth = tmp_path / "w.pth"  # wrapped, DDP-prefixed, pickled: read with weights_only=True
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, pth)
    loaded = create_timm_model(name, pth)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in sd.items())

    with pytest.raises(ArtifactError, match="does not match timm model nf_regnet_b1") as e:
        create_timm_model("nf_regnet_b1", st)  # wrong architecture
    assert "\n" not in str(e.value)
    part = dict(sd)
    part.pop("head.fc.weight")
    save_tensors(tmp_path / "part.safetensors", part)
    with pytest.raises(ArtifactError, match="1 missing keys"):
        create_timm_model(name, tmp_path / "part.safetensors")

    evil = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "obj": _Unpicklable()}, evil)
    with pytest.raises(ArtifactError, match="weights_only=True") as e:
        create_timm_model(name, evil)
    assert "\n" not in str(e.value)
    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ArtifactError):
        create_timm_model(name, tmp_path / "garbage.safetensors")
    with pytest.raises(ArtifactError, match="unknown format"):
        create_timm_model(name, tmp_path / "w.ckpt")
    with pytest.raises(ArtifactError, match="not found"):
        create_timm_model(name, tmp_path / "missing.pth")


class _Unpicklable:
    """Any class the restricted unpickler does not allow."""


def test_shim_reaches_subprocesses():
    """A subprocess with the shim folder on PYTHONPATH imports timm and the interop (the shim is
    test-only: product code imports timm through nfdeploy.errors.require)."""
    import os

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SHIM), os.environ.get("PYTHONPATH")]))}
    code = (
        "import nfdeploy.interop.timm as t; m = t.create_timm_model('nf_regnet_b0'); "
        "print(type(m).__name__, t.timm_input_size(m))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "NormFreeNet (3, 256, 256)"
