"""Fold an NFResNet (or its BatchNorm twin) into a plain inference network.

Every constant of the eval-mode model moves into a neighbouring linear op, in float64:

    WS conv:            W <- gain * (W - mean) / sqrt(max(fan_in * var, eps))
    scalar m before:    y = W (m x) + b            ->  W <- m W             (act1: gamma/beta, inner: gamma)
    scalar c after:     c (W x + b)                ->  W <- c W,  b <- c b  (alpha * skip_gain [* SE gain])
    BN after a conv:    s (W x + b - mu) + beta_bn ->  W <- s W,  b <- s (b - mu) + beta_bn,
                                                       s = weight / sqrt(running_var + eps)
    SE gate reading c y:  fc1(pool(y)) = (fc1.W / c) pool(c y)  (c == 0: branch is zero, gate unchanged)

Dropout and DropPath are identity.  BatchNorms on the residual stream (between an Add and an
activation) have no adjacent linear op and stay explicit; the report says so.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nfdeploy.metrics import compare_outputs
from nfdeploy.models.nf_resnet import NFResNet, ResidualBlock
from nfdeploy.nn import GammaAct, ScaledStdConv2d, standardize_weight
from nfdeploy.nn.layers import SqueezeExcite

_ACT_MODULES = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}
_RESIDUAL_BN_REASON = (
    "BatchNorm on the residual stream (between an Add and a nonlinear activation): "
    "its input also feeds the identity path and no linear op is adjacent, so it "
    "cannot fold into any conv"
)


# ----------------------------------------------------------------------------------------------
# Folded modules: only convs, activations, pools, Linear, residual add (and the twin's residual BNs).


class FoldedShortcut(nn.Module):
    """Transition shortcut: [average pool] then 1x1 conv."""

    def __init__(self, pool: nn.Module, conv: nn.Conv2d):
        super().__init__()
        self.pool, self.conv = pool, conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


class FoldedSE(nn.Module):
    """Gain-1 squeeze-excite gate: y = x * sigmoid(fc2(relu(fc1(avgpool(x)))))."""

    def __init__(self, fc1: nn.Conv2d, fc2: nn.Conv2d):
        super().__init__()
        self.pool, self.fc1, self.relu, self.fc2, self.sigmoid = (
            nn.AdaptiveAvgPool2d(1),
            fc1,
            nn.ReLU(),
            fc2,
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.pool(x)))))


class FoldedBlock(nn.Module):
    """out = shortcut(act(norm1(x)) or x) + [se](conv_n(act(...conv_0(act(norm1(x))))))."""

    def __init__(
        self,
        norm1: nn.Module,
        act1: nn.Module,
        shortcut: FoldedShortcut | None,
        convs: list[nn.Conv2d],
        acts: list[nn.Module],
        se: FoldedSE | None,
    ):
        super().__init__()
        self.norm1, self.act1, self.shortcut = norm1, act1, shortcut
        self.convs, self.acts, self.se = nn.ModuleList(convs), nn.ModuleList(acts), se

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.norm1(x))
        sc = x if self.shortcut is None else self.shortcut(out)
        out = self.convs[0](out)
        for act, conv in zip(self.acts, self.convs[1:]):
            out = conv(act(out))
        if self.se is not None:
            out = self.se(out)
        return out.add_(sc)  # `out` is this block's own fresh tensor: in place saves a pass on CPU


class FoldedNet(nn.Module):
    """stem -> blocks -> [final_norm] -> act -> global average pool -> Linear.

    Module names mirror NFResNet's, so a report's "blocks.3.convs.0.weight" names a parameter of both."""

    def __init__(
        self, stem: nn.Sequential, blocks: list[FoldedBlock], final_norm: nn.Module, final_act: nn.Module, fc: nn.Linear
    ):
        super().__init__()
        self.stem, self.blocks = stem, nn.Sequential(*blocks)
        self.final_norm, self.final_act, self.pool, self.fc = final_norm, final_act, nn.AdaptiveAvgPool2d(1), fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final_act(self.final_norm(self.blocks(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))


# ----------------------------------------------------------------------------------------------
# Report


@dataclass
class FoldReport:
    """What folded where.  Entries: folded = {"constant", "kind", "value", "into": [param names]},
    explicit = {"op", "where", "reason"}, removed = {"module", "reason"}."""

    norm: str
    dtype: str
    stem: dict[str, list] = field(default_factory=lambda: {"folded": [], "explicit": []})
    blocks: list[dict[str, Any]] = field(default_factory=list)
    head: dict[str, list] = field(default_factory=lambda: {"folded": [], "explicit": []})
    removed: list[dict[str, str]] = field(default_factory=list)
    ops: dict[str, int] = field(default_factory=dict)  # leaf module types of the folded net
    image_input: dict[str, Any] | None = None  # --image-input: how the uint8 graph normalizes, and why

    def _sections(self) -> list[dict[str, Any]]:
        return [self.stem, *self.blocks, self.head]

    @property
    def totals(self) -> dict[str, int]:
        folded = [e for s in self._sections() for e in s["folded"]]
        kinds = Counter(e["kind"] for e in folded)
        return {
            "blocks": len(self.blocks),
            "folded": len(folded),
            "weight_standardizations": kinds["weight_standardization"],
            "batchnorms_folded": kinds["batchnorm"],
            "scalars_folded": kinds["scalar"],
            "explicit": sum(len(s["explicit"]) for s in self._sections()),
            "removed": len(self.removed),
        }

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(
            {
                "norm": self.norm,
                "dtype": self.dtype,
                "stem": self.stem,
                "blocks": self.blocks,
                "head": self.head,
                "removed": self.removed,
                "ops": self.ops,
                "totals": self.totals,
                **({"image_input": self.image_input} if self.image_input else {}),
            }
        )


def count_ops(module: nn.Module) -> dict[str, int]:
    """Leaf module type name -> count (Identity excluded: it is no op)."""
    return dict(
        Counter(type(m).__name__ for m in module.modules() if not list(m.children()) and not isinstance(m, nn.Identity))
    )


# ----------------------------------------------------------------------------------------------
# Folding


class _Conv:
    """A conv's float64 weight/bias being folded; `build` emits the plain nn.Conv2d."""

    def __init__(self, src: nn.Conv2d, name: str, section: dict):
        self.src, self.name = src, name
        # Private float64 copies: the folds below work in place and must not touch `src`.
        w = src.weight.detach()
        if isinstance(src, ScaledStdConv2d):
            w = standardize_weight(w.double(), src.gain.detach().double(), src.eps)
            section["folded"].append(
                {
                    "constant": "WS(weight, gain)",
                    "kind": "weight_standardization",
                    "value": None,
                    "into": [f"{name}.weight"],
                }
            )
        else:
            w = w.to(torch.float64, copy=True)
        self.weight = w
        self.bias = None if src.bias is None else src.bias.detach().to(torch.float64, copy=True)

    def scale_in(self, m: float, label: str, section: dict) -> None:
        """Scalar multiplying the conv's input: weight only."""
        if m != 1.0:
            self.weight.mul_(m)
            section["folded"].append({"constant": label, "kind": "scalar", "value": m, "into": [f"{self.name}.weight"]})

    def scale_out(self, s: torch.Tensor) -> None:
        """Per-channel (or scalar) multiply of the conv's output: weight and bias."""
        s = s.double().reshape(-1)
        self.weight.mul_(s.view(-1, 1, 1, 1))
        if self.bias is not None:
            self.bias.mul_(s)

    def shift_out(self, b: torch.Tensor) -> None:
        self.bias = b.double() if self.bias is None else self.bias.add_(b.double())

    def build(self, dtype: torch.dtype) -> nn.Conv2d:
        return plain_conv(self.src, self.weight, self.bias, dtype)


def plain_conv(
    src: nn.Conv1d | nn.Conv2d,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    dtype: torch.dtype,
    padding: Any = None,
) -> nn.Conv1d | nn.Conv2d:
    """A plain conv of `src`'s geometry (padding: `src`'s unless given) holding `weight` and `bias` in `dtype`, as
    frozen parameters: the folded form of a re-parameterised conv."""
    plain = nn.Conv1d if isinstance(src, nn.Conv1d) else nn.Conv2d  # never src's own (re-parameterised) class
    conv = plain(
        src.in_channels,
        src.out_channels,
        src.kernel_size,
        src.stride,
        src.padding if padding is None else padding,
        src.dilation,
        src.groups,
        bias=bias is not None,
        padding_mode=src.padding_mode,
        device="meta",
    )
    conv.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
    if bias is not None:
        conv.bias = nn.Parameter(bias.to(dtype), requires_grad=False)
    return conv


def _act(ga: GammaAct, inplace: bool = False) -> nn.Module:
    """The plain activation (its scalar is folded elsewhere); in place only where the input is a
    fresh tensor nobody else reads (a conv output, a block output), never on the residual stream."""
    cls = _ACT_MODULES[ga.act_name]
    return cls(inplace=True) if inplace and cls is not nn.GELU else cls()


def _fold_bn(conv: _Conv, bn: nn.BatchNorm2d, bn_name: str, section: dict) -> None:
    """conv -> BN(eval):  s = w / sqrt(var + eps);  W <- s W,  b <- s (b - mu) + beta."""
    if bn.running_var is None:
        raise ValueError(f"{bn_name}: BatchNorm without running stats has no inference constant to fold")
    var, mu = bn.running_var.detach().double(), bn.running_mean.detach().double()
    s = torch.rsqrt(var + bn.eps)
    if bn.affine:
        s = s * bn.weight.detach().double()
    conv.scale_out(s)
    conv.shift_out(-mu * s + (bn.bias.detach().double() if bn.affine else 0.0))
    section["folded"].append(
        {
            "constant": f"BatchNorm({bn_name})",
            "kind": "batchnorm",
            "value": None,
            "into": [f"{conv.name}.weight", f"{conv.name}.bias"],
        }
    )


def _explicit_bn(bn: nn.Module, name: str, section: dict, dtype: torch.dtype) -> nn.Module:
    if isinstance(bn, nn.Identity):
        return nn.Identity()
    if not isinstance(bn, nn.BatchNorm2d):
        raise TypeError(f"{name}: cannot fold {type(bn).__name__}")
    section["explicit"].append({"op": "BatchNormalization", "where": name, "reason": _RESIDUAL_BN_REASON})
    out = copy.deepcopy(bn).to(dtype).eval()
    out.requires_grad_(False)
    return out


def _fold_block(
    b: ResidualBlock, i: int, report: FoldReport, dtype: torch.dtype, norm1_folded: bool = False
) -> FoldedBlock:
    p = f"blocks.{i}"
    sec: dict[str, Any] = {"block": i, "transition": b.shortcut is not None, "folded": [], "explicit": []}
    norm1 = nn.Identity() if norm1_folded else _explicit_bn(b.norm1, f"{p}.norm1", sec, dtype)
    convs = [_Conv(c, f"{p}.convs.{k}", sec) for k, c in enumerate(b.convs)]
    m1 = b.act1.multiplier
    label1 = "1/beta*gamma" if b.nf else "act1.multiplier"  # the twin's multipliers are 1: no entry
    # act1's scalar reaches convs[0] directly and the shortcut conv through the (linear) average pool.
    convs[0].scale_in(m1, label1, sec)
    shortcut = None
    if b.shortcut is not None:
        sconv = _Conv(b.shortcut.conv, f"{p}.shortcut.conv", sec)
        sconv.scale_in(m1, label1, sec)
        shortcut = FoldedShortcut(copy.deepcopy(b.shortcut.pool), sconv.build(dtype))
    for k, (norm, act) in enumerate(zip(b.norms, b.acts)):
        if isinstance(norm, nn.BatchNorm2d):  # reads convs[k]'s output
            _fold_bn(convs[k], norm, f"{p}.norms.{k}", sec)
        elif not isinstance(norm, nn.Identity):
            raise TypeError(f"{p}.norms.{k}: cannot fold {type(norm).__name__}")
        convs[k + 1].scale_in(act.multiplier, "gamma" if b.nf else "act.multiplier", sec)
    last = convs[-1]
    # Output scalar c = [SE gain *] alpha * skip_gain folds into the last conv; the SE gate reads
    # the last conv's output, so its first linear map absorbs 1/c.
    skip = 1.0 if b.skip_gain is None else float(b.skip_gain.detach().double()) * b.alpha
    se_gain = b.se.gain if isinstance(b.se, SqueezeExcite) else 1.0
    c = se_gain * skip
    label = ("attn_gain*" if se_gain != 1.0 else "") + ("alpha*skip_gain" if b.skip_gain is not None else "") or "c"
    if c != 1.0:
        last.scale_out(torch.tensor(c, dtype=torch.float64))
        entry = {
            "constant": label,
            "kind": "scalar",
            "value": c,
            "into": [f"{last.name}.weight"] + ([f"{last.name}.bias"] if last.bias is not None else []),
        }
        if c == 0.0 and b.se is not None:
            entry["note"] = "branch output is exactly zero; SE gate left unchanged"
        sec["folded"].append(entry)
    se = None
    if b.se is not None:
        fc1, fc2 = _Conv(b.se.fc1, f"{p}.se.fc1", sec), _Conv(b.se.fc2, f"{p}.se.fc2", sec)
        if c not in (0.0, 1.0):  # c == 0: the gate multiplies zero, any gate value is exact
            fc1.scale_in(1.0 / c, f"1/({label})", sec)
        se = FoldedSE(fc1.build(dtype), fc2.build(dtype))
    if not isinstance(b.drop_path, nn.Identity):
        report.removed.append({"module": f"{p}.drop_path", "reason": "stochastic depth is identity at inference"})
    report.blocks.append(sec)
    return FoldedBlock(
        norm1, _act(b.act1), shortcut, [c_.build(dtype) for c_ in convs], [_act(a, inplace=True) for a in b.acts], se
    )


@torch.no_grad()
def fold_model(model: NFResNet, dtype: torch.dtype = torch.float32) -> tuple[FoldedNet, FoldReport]:
    """Return (plain inference net computing model.eval()'s function, report).  All folding in
    float64, the result cast to `dtype`; `model` is not modified."""
    cfg = model.cfg
    report = FoldReport(norm=cfg.norm, dtype=str(dtype).removeprefix("torch."))
    # The twin's first norm1 reads the stem conv's output directly (no pool between them) and, in a
    # transition block, nothing else reads that output (the shortcut takes act(norm1(x))): it is an
    # ordinary conv -> BN pair and folds into the stem conv.
    b0 = model.blocks[0]
    stem_bn = isinstance(b0.norm1, nn.BatchNorm2d) and b0.shortcut is not None and isinstance(model.stem[-1], nn.Conv2d)
    stem_mods = []
    for k, m in enumerate(model.stem):
        if isinstance(m, nn.Conv2d):
            conv = _Conv(m, f"stem.{k}", report.stem)
            if stem_bn and k == len(model.stem) - 1:
                _fold_bn(conv, b0.norm1, "blocks.0.norm1", report.stem)
            stem_mods.append(conv.build(dtype))
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            stem_mods.append(copy.deepcopy(m))
        else:
            raise TypeError(f"stem.{k}: cannot fold {type(m).__name__}")
    blocks = [_fold_block(b, i, report, dtype, norm1_folded=stem_bn and i == 0) for i, b in enumerate(model.blocks)]
    final_norm = _explicit_bn(model.final_norm, "final_norm", report.head, dtype)
    # final_act's scalar passes through the global average pool (linear) into fc.weight.
    m = model.final_act.multiplier
    w = model.fc.weight.detach().double() * m
    if m != 1.0:
        report.head["folded"].append(
            {
                "constant": "gamma" if cfg.norm == "nf" else "final_act.multiplier",
                "kind": "scalar",
                "value": m,
                "into": ["fc.weight"],
            }
        )
    fc = nn.Linear(model.fc.in_features, model.fc.out_features, bias=model.fc.bias is not None, device="meta")
    fc.weight = nn.Parameter(w.to(dtype), requires_grad=False)
    if model.fc.bias is not None:
        fc.bias = nn.Parameter(model.fc.bias.detach().to(dtype, copy=True), requires_grad=False)
    if not isinstance(model.dropout, nn.Identity):
        report.removed.append({"module": "dropout", "reason": "dropout is identity at inference"})
    # final_act may run in place: it reads a block's (or final_norm's, or the stem's) fresh output.
    final_act = _act(model.final_act, inplace=True)
    net = FoldedNet(nn.Sequential(*stem_mods), blocks, final_norm, final_act, fc).eval()
    report.ops = count_ops(net)
    return net, report


# ----------------------------------------------------------------------------------------------
# Checks


def _dtype_of(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


@torch.no_grad()
def unfolded_equivalence(model: nn.Module, folded: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Run model (in eval mode, restored afterwards) and folded on x, each cast to its own
    parameter dtype, and compare the outputs (see compare_outputs)."""
    was_training = model.training
    model.eval()
    try:
        ref = model(x.to(_dtype_of(model)))
    finally:
        model.train(was_training)
    return compare_outputs(ref, folded(x.to(_dtype_of(folded))))


@torch.no_grad()
def randomize_(model: NFResNet, seed: int = 0) -> NFResNet:
    """Randomise every constant the fold touches, so equivalence checks are not vacuous:
    skip gains ±U(0.5, 1.5), WS gains U(0.5, 1.5), biases N(0, 0.1), BN running stats and affine,
    SE and fc weights N(0, 1/fan_in)."""
    g = torch.Generator().manual_seed(seed)

    def fill(t: torch.Tensor, kind: str, std: float = 0.1) -> None:
        if kind == "uniform":
            v = torch.rand(t.shape, generator=g, dtype=torch.float64) + 0.5
        else:
            v = torch.randn(t.shape, generator=g, dtype=torch.float64) * std
        t.copy_(v.to(t.dtype))

    for name, m in model.named_modules():
        if isinstance(m, ScaledStdConv2d):
            fill(m.gain, "uniform")
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if m.bias is not None:
                fill(m.bias, "normal")
            if not isinstance(m, ScaledStdConv2d) and (".se." in f".{name}." or isinstance(m, nn.Linear)):
                fill(m.weight, "normal", 1.0 / math.sqrt(m.weight[0].numel()))
        elif isinstance(m, nn.BatchNorm2d):
            fill(m.running_mean, "normal", 0.5)
            fill(m.running_var, "uniform")
            fill(m.weight, "uniform")
            fill(m.bias, "normal")
        elif isinstance(m, ResidualBlock) and m.skip_gain is not None:
            sign = 1.0 if torch.rand((), generator=g) < 0.5 else -1.0
            m.skip_gain.fill_(sign * (float(torch.rand((), generator=g, dtype=torch.float64)) + 0.5))
    return model


__all__ = [
    "FoldReport",
    "FoldedBlock",
    "FoldedNet",
    "FoldedSE",
    "FoldedShortcut",
    "count_ops",
    "fold_model",
    "plain_conv",
    "randomize_",
    "unfolded_equivalence",
]
