"""Fold timm's NormFreeNet models into plain inference networks, by the rules of nfdeploy.fold.

Supported: every ``timm.models.nfnet.NormFreeNet`` of the families in SUPPORTED_PREFIXES
(nf_resnet*, nf_seresnet*, nf_ecaresnet*, nf_regnet_b*, nfnet_f*, dm_nfnet_f*, nfnet_l*,
eca_nfnet_l*).  What timm computes, read from its source (timm 1.0.x: models/nfnet.py,
layers/std_conv.py, layers/squeeze_excite.py, layers/eca.py), and where it folds, in float64:

    ScaledStdConv2d[Same]:  W_hat = (W - mean) / sqrt(var + eps) * gain * scale
                            (timm's form: F.batch_norm over each output channel's fan-in, biased
                            variance, eps *added to the variance*; scale = gamma / sqrt(fan_in),
                            where gamma is the activation gain unless gamma_in_act, then 1)
                            -> plain nn.Conv2d with bias
    'SAME' padding:         at one fixed input size, each dynamic pad is resolved statically:
                            symmetric -> the conv's padding; asymmetric -> nn.ZeroPad2d((l, r, t, b))
                            immediately before the conv (AvgPool2dSame likewise before its pool)
    block input:            act1(x) * beta [* gamma, GammaAct]  -> conv1.weight and the downsample
                            conv's weight (through DownsampleAvg's average pool, which is linear)
    GammaAct (gamma_in_act) before a conv:  -> that conv's weight
    mid-block attn (nf_regnet):  attn_gain * attn(y) -> the conv feeding attn is scaled by attn_gain
                            (weight and bias) and the gate's first linear map by 1/attn_gain
    block output:           c = alpha * skipinit_gain [* attn_gain for attn_last] -> conv3's weight
                            and bias; attn_last's gate reads c * y, so its first linear map (SE fc1,
                            ECA conv1d) absorbs 1/c (c == 0: the branch is exactly zero, gate left)
    final_act (GammaAct):   gamma -> through the global pool into head.fc.weight
    DropPath, Dropout:      identity at inference (listed in the report's "removed")

Where a scalar has no linear consumer (a GammaAct gain before a headless, num_classes=0 output)
it stays one explicit multiply (ExplicitScale), listed in the report's "explicit" with the reason.

timm is an optional dependency (``pip install 'nfdeploy[timm]'``), imported lazily.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nfdeploy.artifacts import ArtifactError, load_tensors
from nfdeploy.errors import MissingExtraError, require
from nfdeploy.fold import FoldedSE, FoldedShortcut, FoldReport, count_ops, plain_conv

SUPPORTED_PREFIXES: tuple[str, ...] = (
    "nf_resnet",
    "nf_seresnet",
    "nf_ecaresnet",
    "nf_regnet_b",
    "nfnet_f",
    "dm_nfnet_f",
    "nfnet_l",
    "eca_nfnet_l",
)
_FAMILIES = ", ".join(f"{p}*" for p in SUPPORTED_PREFIXES)


# ----------------------------------------------------------------------------------------------
# timm, lazily


def _import_timm():
    """timm, or MissingExtraError naming the extra (also when timm is installed but its import
    fails, e.g. a torchvision wheel built for another torch)."""
    try:
        return require("timm", "timm")
    except MissingExtraError:
        raise
    except Exception as e:  # noqa: BLE001 - any import-time failure is "timm is not usable here"
        first = (str(e).splitlines() or [""])[0]
        raise MissingExtraError(
            f"timm is installed but failed to import ({type(e).__name__}: {first}); "
            "install a timm/torchvision matching this torch: pip install 'nfdeploy[timm]'"
        ) from None


class _T:
    """The timm classes the fold recognises (resolved once timm is importable)."""

    def __init__(self):
        _import_timm()
        from timm.layers import AvgPool2dSame, ScaledStdConv2d, ScaledStdConv2dSame
        from timm.layers import activations as acts
        from timm.layers.adaptive_avgmax_pool import SelectAdaptivePool2d
        from timm.layers.classifier import ClassifierHead
        from timm.layers.eca import EcaModule
        from timm.layers.squeeze_excite import SEModule
        from timm.models import nfnet

        self.std_convs = (ScaledStdConv2d, ScaledStdConv2dSame)
        self.std_conv_same = ScaledStdConv2dSame
        self.avg_pool_same = AvgPool2dSame  # (NormFreeNet never builds MaxPool2dSame: its stems use nn.MaxPool2d)
        self.se, self.eca = SEModule, EcaModule
        self.head, self.select_pool = ClassifierHead, SelectAdaptivePool2d
        self.net, self.block, self.gamma_act, self.downsample = (
            nfnet.NormFreeNet,
            nfnet.NormFreeBlock,
            nfnet.GammaAct,
            nfnet.DownsampleAvg,
        )
        self.sigmoids = (nn.Sigmoid, acts.Sigmoid)
        # activation modules / functional forms -> the plain module class
        self.act_modules = {nn.ReLU: nn.ReLU, nn.SiLU: nn.SiLU, acts.Swish: nn.SiLU, acts.GELU: nn.GELU}
        self.act_fns = {F.relu: nn.ReLU, F.silu: nn.SiLU, acts.swish: nn.SiLU, acts.gelu: nn.GELU, F.gelu: nn.GELU}


# ----------------------------------------------------------------------------------------------
# Model creation


def _unsupported(name: str, what: str) -> ValueError:
    return ValueError(
        f"unsupported timm model {name!r} ({what}): nfdeploy folds timm's NormFreeNet models "
        f"(families {_FAMILIES}, and any other NormFreeNet config)"
    )


def create_timm_model(name: str, checkpoint: str | Path | None = None) -> nn.Module:
    """Build timm model `name` (random init, pretrained=False: nothing is downloaded), in eval mode,
    optionally loading `checkpoint`:

    - ``.safetensors``: read with safetensors (no code can run);
    - ``.pth`` / ``.pt`` / ``.bin``: read ONLY with ``torch.load(weights_only=True)``, PyTorch's
      restricted unpickler that accepts tensors and plain containers and refuses arbitrary objects
      (a pickle that needs anything else is rejected, never executed).

    The file may hold a plain state dict or a dict with a "state_dict" or "model" entry (a
    "module." prefix from DistributedDataParallel is stripped).  Unknown or unsupported name ->
    ValueError; unreadable file or keys/shapes that do not match the model -> ArtifactError."""
    try:
        timm = _import_timm()
    except MissingExtraError as e:
        raise MissingExtraError(f"cannot build timm model {name!r}: {e}") from None
    t = _T()
    if not timm.is_model(name):
        raise _unsupported(name, "timm has no model of that name")
    # What the model is decides, not its name: any NormFreeNet (timm's small test_nfnet too).
    model = timm.create_model(name, pretrained=False)
    if not isinstance(model, t.net):
        raise _unsupported(name, f"a {type(model).__name__}, not a NormFreeNet")
    if checkpoint is not None:
        _load_checkpoint(model, Path(checkpoint), name)
    return model.eval()


def _load_checkpoint(model: nn.Module, path: Path, name: str) -> None:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        state, _ = load_tensors(path)  # ArtifactError on missing/corrupt files
    elif suffix in (".pth", ".pt", ".bin"):
        if not path.is_file():
            raise ArtifactError(f"checkpoint not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - unpickling errors come in many types
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ArtifactError(f"cannot load checkpoint {path} with torch.load(weights_only=True): {first}") from None
    else:
        raise ArtifactError(
            f"checkpoint {path}: unknown format {suffix or '(no suffix)'!r} (expected .safetensors, .pth, .pt or .bin)"
        )
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ArtifactError(f"checkpoint {path} is not a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{len(lst)} {what} (e.g. {', '.join(lst[:3])})"
            for what, lst in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
            if lst
        ]
        raise ArtifactError(f"checkpoint {path} does not match timm model {name}: {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)


def timm_input_size(model: nn.Module) -> tuple[int, int, int]:
    """(C, H, W) the model is evaluated at: pretrained_cfg's test_input_size, else its input_size."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = cfg.get("test_input_size") or cfg.get("input_size")
    if not size or len(size) != 3:
        raise ValueError(f"{type(model).__name__} has no input size in its pretrained_cfg; pass input_size explicitly")
    return tuple(int(s) for s in size)  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------
# Folded modules (plus fold.FoldedSE and fold.FoldedShortcut)


class ExplicitScale(nn.Module):
    """y = x * scale: a scalar no linear op could absorb (the fold report says where and why)."""

    def __init__(self, scale: float, dtype: torch.dtype):
        super().__init__()
        self.register_buffer("scale", torch.tensor(scale, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class FoldedECA(nn.Module):
    """Gain-1 ECA gate: y = x * sigmoid(conv1d(avgpool(x) over channels))."""

    def __init__(self, conv: nn.Conv1d):
        super().__init__()
        self.pool, self.conv, self.sigmoid = nn.AdaptiveAvgPool2d(1), conv, nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[0], x.shape[1]
        y = self.sigmoid(self.conv(self.pool(x).view(n, 1, c)))
        return x * y.view(n, c, 1, 1)


class FoldedTimmBlock(nn.Module):
    """timm's NormFreeBlock with every constant folded:
    out = [downsample](act1(x) or x) + [attn_last](conv3(act3([attn](conv2[b](...conv1(act1(x)))))))."""

    def __init__(
        self,
        act1: nn.Module,
        downsample: FoldedShortcut | None,
        conv1: nn.Module,
        act2: nn.Module,
        conv2: nn.Module,
        act2b: nn.Module | None,
        conv2b: nn.Module | None,
        attn: nn.Module | None,
        act3: nn.Module,
        conv3: nn.Module,
        attn_last: nn.Module | None,
    ):
        super().__init__()
        self.act1, self.downsample, self.conv1, self.act2, self.conv2 = act1, downsample, conv1, act2, conv2
        self.act2b, self.conv2b, self.attn, self.act3, self.conv3, self.attn_last = (
            act2b,
            conv2b,
            attn,
            act3,
            conv3,
            attn_last,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(x)  # not in place: x is the residual stream
        sc = x if self.downsample is None else self.downsample(out)
        out = self.conv2(self.act2(self.conv1(out)))
        if self.conv2b is not None:
            out = self.conv2b(self.act2b(out))
        if self.attn is not None:
            out = self.attn(out)
        out = self.conv3(self.act3(out))
        if self.attn_last is not None:
            out = self.attn_last(out)
        return out.add_(sc)  # `out` is this block's own fresh tensor


class FoldedTimmNet(nn.Module):
    """stem -> stages -> [final_conv] -> final_act -> global pool -> [explicit scale] -> fc.

    Module names mirror timm's NormFreeNet ("stages.2.1.conv2"); a conv that needed an asymmetric
    'SAME' pad is nn.Sequential(ZeroPad2d, Conv2d) under the same name.  If any pad depended on the
    input size, `fixed_input_size` is that (H, W) and other sizes are refused."""

    def __init__(
        self,
        stem: nn.Sequential,
        stages: nn.Sequential,
        final_conv: nn.Module,
        final_act: nn.Module,
        pool: nn.Module,
        scale: nn.Module,
        fc: nn.Module,
        fixed_input_size: tuple[int, int] | None,
    ):
        super().__init__()
        self.stem, self.stages, self.final_conv, self.final_act = stem, stages, final_conv, final_act
        self.pool, self.scale, self.fc = pool, scale, fc
        self.fixed_input_size = fixed_input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fixed_input_size is not None and tuple(x.shape[-2:]) != self.fixed_input_size:
            raise ValueError(
                f"this folded model resolved 'SAME' padding for input size {self.fixed_input_size}, "
                f"got {tuple(x.shape[-2:])}; fold again at that size"
            )
        x = self.final_act(self.final_conv(self.stages(self.stem(x))))
        return self.fc(self.scale(self.pool(x).flatten(1)))


# ----------------------------------------------------------------------------------------------
# Folding


def _same_pads(in_hw: tuple[int, int], kernel, stride, dilation) -> tuple[int, int, int, int]:
    """timm's pad_same: (left, right, top, bottom) for TF 'SAME' at input size in_hw."""

    def one(x: int, k: int, s: int, d: int) -> int:
        return max((math.ceil(x / s) - 1) * s + (k - 1) * d + 1 - x, 0)

    ph, pw = (one(in_hw[i], kernel[i], stride[i], dilation[i]) for i in range(2))
    return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2


class _Fold:
    """State of one fold: the timm classes, recorded input sizes, target dtype, report."""

    def __init__(
        self,
        t: _T,
        sizes: dict[str, tuple[int, int]],
        input_size: tuple[int, int] | None,
        dtype: torch.dtype,
        report: FoldReport,
    ):
        self.t, self.sizes, self.input_size, self.dtype, self.report = t, sizes, input_size, dtype, report
        self.size_dependent = False

    # --- activations

    def act(self, m: nn.Module, name: str, inplace: bool) -> tuple[nn.Module, float]:
        """(plain activation module, scalar multiplying its output)."""
        t = self.t
        if isinstance(m, t.gamma_act):
            cls, mult = t.act_fns.get(m.act_fn), float(m.gamma)
        else:
            cls, mult = t.act_modules.get(type(m)), 1.0
            if type(m) is nn.GELU and m.approximate != "none":
                cls = None
        if cls is None:
            raise TypeError(f"{name}: cannot fold activation {m!r}")
        return (cls(inplace=True) if inplace and cls is not nn.GELU else cls()), mult

    # --- convs

    def conv(self, src: nn.Module, name: str, section: dict) -> _TimmConv:
        pads = None
        if isinstance(src, self.t.std_conv_same) and src.same_pad:
            pads = self._pads(src, name, section)
        return _TimmConv(src, name, section, pads, self.t)

    def _pads(self, m: nn.Module, name: str, section: dict) -> tuple[int, int, int, int]:
        if name not in self.sizes:
            raise RuntimeError(f"{name}: input size not recorded (module not reached by the sizing pass)")
        self.size_dependent = True
        hw = self.sizes[name]
        dilation = getattr(m, "dilation", (1, 1))
        pads = _same_pads(hw, m.kernel_size, m.stride, dilation)
        section["folded"].append(
            {
                "constant": f"SAME padding at input {hw[0]}x{hw[1]} (model input "
                f"{self.input_size[0]}x{self.input_size[1]})",
                "kind": "same_padding",
                "value": list(pads),
                "into": [name],
            }
        )
        return pads

    # --- pools

    def pool(self, m: nn.Module, name: str, section: dict) -> nn.Module:
        t = self.t
        if isinstance(m, nn.Identity):
            return nn.Identity()
        if isinstance(m, t.avg_pool_same):
            pads = self._pads(m, name, section)
            p = nn.AvgPool2d(m.kernel_size, m.stride, 0, m.ceil_mode, m.count_include_pad)
            return nn.Sequential(nn.ZeroPad2d(pads), p) if any(pads) else p
        if type(m) in (nn.AvgPool2d, nn.MaxPool2d):
            return copy.deepcopy(m)
        raise TypeError(f"{name}: cannot fold pool {m!r}")

    # --- attention gates

    def attn(self, m: nn.Module, name: str, c: float, label: str, section: dict) -> nn.Module:
        """The gate reads c * y where timm's read y: its first linear map absorbs 1/c."""
        t = self.t
        comp = c not in (0.0, 1.0)  # c == 0: the gate multiplies zero, any gate value is exact
        if isinstance(m, t.se):
            if (
                m.add_maxpool
                or not isinstance(m.bn, nn.Identity)
                or type(m.act) is not nn.ReLU
                or not isinstance(m.gate, t.sigmoids)
            ):
                raise TypeError(f"{name}: cannot fold SE variant {m!r}")
            fc1 = _TimmConv(m.fc1, f"{name}.fc1", section, None, t)
            fc2 = _TimmConv(m.fc2, f"{name}.fc2", section, None, t)
            if comp:
                fc1.scale_in(1.0 / c, f"1/({label})", section)
            return FoldedSE(fc1.build(self.dtype), fc2.build(self.dtype))
        if isinstance(m, t.eca):
            if m.conv2 is not None or not isinstance(m.gate, t.sigmoids) or type(m.conv) is not nn.Conv1d:
                raise TypeError(f"{name}: cannot fold ECA variant {m!r}")
            w = m.conv.weight.detach().to(torch.float64, copy=True)
            b = None if m.conv.bias is None else m.conv.bias.detach().to(torch.float64, copy=True)
            if comp:
                w.mul_(1.0 / c)
                section["folded"].append(
                    {"constant": f"1/({label})", "kind": "scalar", "value": 1.0 / c, "into": [f"{name}.conv.weight"]}
                )
            return FoldedECA(plain_conv(m.conv, w, b, self.dtype))
        raise TypeError(f"{name}: cannot fold attention module {type(m).__name__}")

    def removed(self, m: nn.Module | None, name: str, reason: str) -> None:
        if m is not None and not isinstance(m, nn.Identity) and getattr(m, "p", getattr(m, "drop_prob", 1.0)) != 0:
            self.report.removed.append({"module": name, "reason": reason})


class _TimmConv:
    """A conv's float64 weight/bias being folded; `build` emits nn.Conv2d (after a ZeroPad2d where an
    asymmetric 'SAME' pad was resolved)."""

    def __init__(self, src: nn.Module, name: str, section: dict, pads: tuple[int, int, int, int] | None, t: _T):
        if not isinstance(src, t.std_convs) and type(src) is not nn.Conv2d:
            raise TypeError(f"{name}: cannot fold {type(src).__name__}")
        if isinstance(src.padding, str) or src.padding_mode != "zeros":
            raise TypeError(f"{name}: cannot fold padding {src.padding!r} / padding_mode {src.padding_mode!r}")
        self.src, self.name = src, name
        self.padding: tuple[int, int] = tuple(src.padding)  # type: ignore[assignment]
        self.pad: tuple[int, int, int, int] | None = None
        if pads is not None:
            left, right, top, bottom = pads
            if left == right and top == bottom:
                self.padding = (top, left)
            else:
                self.pad, self.padding = pads, (0, 0)
        w = src.weight.detach().to(torch.float64, copy=True)
        if isinstance(src, t.std_convs):
            # timm: F.batch_norm(W.reshape(1, out, -1), training=True, weight=gain*scale, eps=eps), i.e.
            # per output channel (W - mean) / sqrt(biased var + eps) * gain * scale.
            w2 = w.view(src.out_channels, -1)  # a view of our private copy: updated in place below
            var, mean = torch.var_mean(w2, dim=1, correction=0, keepdim=True)
            g = src.gain.detach().double().reshape(-1, 1) * float(src.scale)
            w2.sub_(mean).mul_(g * torch.rsqrt(var + float(src.eps)))
            gamma = float(src.scale) * math.sqrt(src.weight[0].numel())
            section["folded"].append(
                {
                    "constant": "WS(weight, gain * gamma / sqrt(fan_in), eps in variance)",
                    "kind": "weight_standardization",
                    "value": gamma,
                    "eps": float(src.eps),
                    "into": [f"{self.pname()}.weight"],
                }
            )
        self.weight = w
        self.bias = None if src.bias is None else src.bias.detach().to(torch.float64, copy=True)

    def pname(self) -> str:
        """Name of the emitted nn.Conv2d in the folded net (".1" after a ZeroPad2d)."""
        return self.name if self.pad is None else f"{self.name}.1"

    def scale_in(self, m: float, label: str, section: dict) -> None:
        """Scalar multiplying the conv's input: weight only."""
        if m != 1.0:
            self.weight.mul_(m)
            section["folded"].append(
                {"constant": label, "kind": "scalar", "value": m, "into": [f"{self.pname()}.weight"]}
            )

    def scale_out(self, c: float, label: str, section: dict, note: str | None = None) -> None:
        """Scalar multiplying the conv's output: weight and bias."""
        if c != 1.0:
            self.weight.mul_(c)
            if self.bias is not None:
                self.bias.mul_(c)
            entry = {
                "constant": label,
                "kind": "scalar",
                "value": c,
                "into": [f"{self.pname()}.weight"] + ([f"{self.pname()}.bias"] if self.bias is not None else []),
            }
            if note:
                entry["note"] = note
            section["folded"].append(entry)

    def build(self, dtype: torch.dtype) -> nn.Module:
        conv = plain_conv(self.src, self.weight, self.bias, dtype, padding=self.padding)
        return conv if self.pad is None else nn.Sequential(nn.ZeroPad2d(self.pad), conv)


def _fold_block(f: _Fold, b: nn.Module, name: str, idx: int) -> FoldedTimmBlock:
    t, dtype = f.t, f.dtype
    if not isinstance(b, t.block):
        raise TypeError(f"{name}: cannot fold {type(b).__name__}")
    sec: dict[str, Any] = {
        "block": idx,
        "name": name,
        "transition": b.downsample is not None,
        "folded": [],
        "explicit": [],
    }
    act1, g1 = f.act(b.act1, f"{name}.act1", inplace=False)
    m1 = g1 * float(b.beta)
    label1 = "beta*gamma" if g1 != 1.0 else "beta"
    conv1 = f.conv(b.conv1, f"{name}.conv1", sec)
    conv1.scale_in(m1, label1, sec)
    downsample = None
    if b.downsample is not None:
        if not isinstance(b.downsample, t.downsample):
            raise TypeError(f"{name}.downsample: cannot fold {type(b.downsample).__name__}")
        pool = f.pool(b.downsample.pool, f"{name}.downsample.pool", sec)
        dconv = f.conv(b.downsample.conv, f"{name}.downsample.conv", sec)
        dconv.scale_in(m1, label1, sec)  # act1's scalar passes through the (linear) average pool
        downsample = FoldedShortcut(pool, dconv.build(dtype))
    act2, g2 = f.act(b.act2, f"{name}.act2", inplace=True)
    conv2 = f.conv(b.conv2, f"{name}.conv2", sec)
    conv2.scale_in(g2, "gamma", sec)
    act2b = conv2b = None
    if b.conv2b is not None:
        act2b, g2b = f.act(b.act2b, f"{name}.act2b", inplace=True)
        conv2b = f.conv(b.conv2b, f"{name}.conv2b", sec)
        conv2b.scale_in(g2b, "gamma", sec)
    attn = None
    if b.attn is not None:  # RegNet style: attn_gain * attn(conv2[b] output), then act3
        feeding = conv2b if conv2b is not None else conv2
        ga = float(b.attn_gain)
        feeding.scale_out(
            ga, "attn_gain", sec, note=None if ga != 0.0 else "attn input is exactly zero; gate left unchanged"
        )
        attn = f.attn(b.attn, f"{name}.attn", ga, "attn_gain", sec)
    act3, g3 = f.act(b.act3, f"{name}.act3", inplace=True)
    conv3 = f.conv(b.conv3, f"{name}.conv3", sec)
    conv3.scale_in(g3, "gamma", sec)
    # Output scalar c = [attn_gain *] skipinit_gain * alpha into conv3 (weight and bias); the
    # attn_last gate reads conv3's output, so its first linear map absorbs 1/c.
    parts, c = [], 1.0
    if b.attn_last is not None:
        parts.append("attn_gain")
        c *= float(b.attn_gain)
    if b.skipinit_gain is not None:
        parts.append("skipinit_gain")
        c *= float(b.skipinit_gain.detach().double())
    parts.append("alpha")
    c *= float(b.alpha)
    label = "*".join(parts)
    note = "branch output is exactly zero; gate left unchanged" if c == 0.0 and b.attn_last is not None else None
    conv3.scale_out(c, label, sec, note)
    attn_last = None if b.attn_last is None else f.attn(b.attn_last, f"{name}.attn_last", c, label, sec)
    f.removed(b.drop_path, f"{name}.drop_path", "stochastic depth is identity at inference")
    f.report.blocks.append(sec)
    return FoldedTimmBlock(
        act1,
        downsample,
        conv1.build(dtype),
        act2,
        conv2.build(dtype),
        act2b,
        None if conv2b is None else conv2b.build(dtype),
        attn,
        act3,
        conv3.build(dtype),
        attn_last,
    )


def _fold_stem(f: _Fold, stem: nn.Sequential) -> nn.Sequential:
    """Convs, activations between them (a GammaAct's gain into the next conv) and pools."""
    t, sec = f.t, f.report.stem
    mods: OrderedDict[str, nn.Module] = OrderedDict()
    pending, label = 1.0, ""
    for k, m in stem.named_children():
        name = f"stem.{k}"
        if isinstance(m, t.std_convs) or type(m) is nn.Conv2d:
            conv = f.conv(m, name, sec)
            conv.scale_in(pending, label, sec)
            pending = 1.0
            mods[k] = conv.build(f.dtype)
        elif isinstance(m, t.avg_pool_same) or type(m) in (nn.AvgPool2d, nn.MaxPool2d):
            if pending <= 0 and isinstance(m, nn.MaxPool2d):
                raise TypeError(f"{name}: a non-positive scalar cannot pass through a max pool")
            mods[k] = f.pool(m, name, sec)  # linear (avg) or positively homogeneous (max): the scalar passes
        elif isinstance(m, nn.Identity):
            continue
        else:
            mods[k], g = f.act(m, name, inplace=True)
            pending, label = pending * g, "gamma"
    if pending != 1.0:  # only a (nonlinear) block input follows: cannot fold
        mods["scale"] = ExplicitScale(pending, f.dtype)
        sec["explicit"].append(
            {
                "op": "Mul",
                "where": "stem.scale",
                "reason": "activation gain at the stem's end: "
                "its consumers are the first block's nonlinear act1 and its identity shortcut",
            }
        )
    return nn.Sequential(OrderedDict(mods))


def _sizing_pass(model: nn.Module, t: _T, hw: tuple[int, int]) -> dict[str, tuple[int, int]]:
    """Input (H, W) of every size-dependent module ('SAME' convs and pools) at model input hw.
    Shapes only: runs under FakeTensorMode (no arithmetic), or for real at batch 1 if that fails."""
    targets = {n: m for n, m in model.named_modules() if isinstance(m, (t.std_conv_same, t.avg_pool_same))}
    sizes: dict[str, tuple[int, int]] = {}
    if not targets:
        return sizes
    hooks = [
        m.register_forward_pre_hook(
            lambda mod, args, n=n: sizes.__setitem__(n, tuple(int(s) for s in args[0].shape[-2:]))
        )
        for n, m in targets.items()
    ]
    p = next(model.parameters())
    in_chans = getattr(model, "in_chans", 3)
    was_training = model.training
    model.eval()
    try:
        try:
            from torch._subclasses.fake_tensor import FakeTensorMode

            with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad():
                model(torch.empty(1, in_chans, *hw, dtype=p.dtype))
        except Exception:  # noqa: BLE001 - private API: fall back to a real (batch 1) pass
            sizes.clear()
            with torch.no_grad():
                model(torch.zeros(1, in_chans, *hw, dtype=p.dtype, device=p.device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return sizes


def _fold_head(
    f: _Fold, t: _T, h: nn.Module, gf: float, dtype: torch.dtype, head: dict[str, Any]
) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(global pool, explicit scale or Identity, classifier) of the folded net: the final activation's gain gf
    passes through the pool into the classifier's weight, or stays an explicit Mul without a classifier."""
    if (
        not isinstance(h, t.head)
        or not isinstance(h.global_pool, t.select_pool)
        or not isinstance(h.flatten, nn.Identity)
    ):
        raise TypeError(f"head: cannot fold {h!r}")
    ptype = h.global_pool.pool_type.lower()
    if ptype in ("avg", "fast", "fastavg"):
        pool: nn.Module = nn.AdaptiveAvgPool2d(1)
    elif ptype in ("max", "fastmax") and gf > 0:
        pool = nn.AdaptiveMaxPool2d(1)  # positively homogeneous: gamma > 0 passes through
    else:
        raise TypeError(f"head.global_pool: cannot fold pool type {ptype!r}")
    f.removed(h.drop, "head.drop", "dropout is identity at inference")
    scale: nn.Module = nn.Identity()
    if isinstance(h.fc, nn.Linear):
        w = h.fc.weight.detach().double() * gf  # final_act's gain passes through the global pool
        if gf != 1.0:
            head["folded"].append({"constant": "gamma", "kind": "scalar", "value": gf, "into": ["fc.weight"]})
        fc: nn.Module = nn.Linear(h.fc.in_features, h.fc.out_features, bias=h.fc.bias is not None, device="meta")
        fc.weight = nn.Parameter(w.to(dtype), requires_grad=False)
        if h.fc.bias is not None:
            fc.bias = nn.Parameter(h.fc.bias.detach().to(dtype, copy=True), requires_grad=False)
    elif isinstance(h.fc, nn.Identity):
        fc = nn.Identity()
        if gf != 1.0:
            scale = ExplicitScale(gf, dtype)
            head["explicit"].append(
                {
                    "op": "Mul",
                    "where": "scale",
                    "reason": "final activation gain (gamma_in_act) "
                    "with no classifier (num_classes=0): no linear op consumes the pooled features",
                }
            )
    else:
        raise TypeError(f"head.fc: cannot fold {type(h.fc).__name__}")

    return pool, scale, fc


@torch.no_grad()
def fold_timm_model(
    model: nn.Module, input_size: tuple[int, int] | None = None, dtype: torch.dtype = torch.float32
) -> tuple[FoldedTimmNet, FoldReport]:
    """Return (plain inference net computing model.eval()'s function, report).  All folding in
    float64, the result cast to `dtype`; `model` is not modified.

    input_size (H, W) matters only for models with size-dependent 'SAME' padding (dm_nfnet_*):
    their pads are resolved at that size (default: timm_input_size(model)) and the folded net then
    accepts only that size.  Other models fold size-independently."""
    t = _T()
    if not isinstance(model, t.net):
        raise TypeError(f"fold_timm_model expects a timm NormFreeNet, got {type(model).__name__}")
    report = FoldReport(norm="nf", dtype=str(dtype).removeprefix("torch."))
    needs_size = any(
        isinstance(m, t.avg_pool_same) or isinstance(m, t.std_conv_same) and m.same_pad for m in model.modules()
    )
    hw: tuple[int, int] | None = None
    sizes: dict[str, tuple[int, int]] = {}
    if needs_size:
        hw = tuple(int(s) for s in (input_size if input_size is not None else timm_input_size(model)[1:]))  # type: ignore[assignment]
        if len(hw) != 2:
            raise ValueError(f"input_size must be (H, W), got {input_size!r}")
        sizes = _sizing_pass(model, t, hw)
    f = _Fold(t, sizes, hw, dtype, report)

    stem = _fold_stem(f, model.stem)
    stages = nn.Sequential(
        *[
            nn.Sequential(*[_fold_block(f, b, f"stages.{si}.{bi}", len(report.blocks)) for bi, b in enumerate(stage)])
            for si, stage in enumerate(model.stages)
        ]
    )

    head = report.head
    final_conv: nn.Module = nn.Identity()
    if not isinstance(model.final_conv, nn.Identity):
        final_conv = f.conv(model.final_conv, "final_conv", head).build(dtype)
    final_act, gf = f.act(model.final_act, "final_act", inplace=True)

    pool, scale, fc = _fold_head(f, t, model.head, gf, dtype, head)
    net = FoldedTimmNet(stem, stages, final_conv, final_act, pool, scale, fc, hw if f.size_dependent else None).eval()
    net.requires_grad_(False)
    report.ops = count_ops(net)
    return net, report


# ----------------------------------------------------------------------------------------------
# Checks


@torch.no_grad()
def randomize_timm_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Re-draw every constant the fold touches, so equivalence checks are not vacuous (timm's init
    zeroes skipinit gains and, without skipinit, conv3's gain):
    ScaledStdConv weights N(0, 1/fan_in) (small enough that eps = 1e-5 in the variance matters:
    a wrong eps form shows), gains U(0.5, 1.5), skipinit gains ±U(0.5, 1.5), all conv/linear
    biases N(0, 0.1), SE/ECA/head weights N(0, 1/fan_in)."""
    t = _T()
    g = torch.Generator().manual_seed(seed)

    def fill(x: torch.Tensor, kind: str, std: float = 0.1) -> None:
        if kind == "uniform":
            x.copy_(torch.rand(x.shape, generator=g, dtype=x.dtype).add_(0.5))
        else:
            x.copy_(torch.randn(x.shape, generator=g, dtype=x.dtype).mul_(std))

    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            fill(m.weight, "normal", 1.0 / math.sqrt(m.weight[0].numel()))
            if m.bias is not None:
                fill(m.bias, "normal")
            if isinstance(m, t.std_convs):
                fill(m.gain, "uniform")
        if isinstance(m, t.block) and m.skipinit_gain is not None:
            sign = 1.0 if torch.rand((), generator=g) < 0.5 else -1.0
            m.skipinit_gain.fill_(sign * (float(torch.rand((), generator=g, dtype=torch.float64)) + 0.5))
    return model


def is_plain(module: nn.Module) -> list[str]:
    """Names of leaf modules that are not plain inference ops (empty = plain)."""
    allowed = (
        nn.Conv2d,
        nn.Conv1d,
        nn.Linear,
        nn.ReLU,
        nn.GELU,
        nn.SiLU,
        nn.Sigmoid,
        nn.ZeroPad2d,
        nn.AvgPool2d,
        nn.MaxPool2d,
        nn.AdaptiveAvgPool2d,
        nn.AdaptiveMaxPool2d,
        nn.Identity,
        ExplicitScale,
    )
    return [
        n
        for n, m in module.named_modules()
        if not list(m.children()) and (type(m) not in allowed or type(m).__module__.startswith("timm"))
    ]


__all__ = [
    "ExplicitScale",
    "FoldedECA",
    "FoldedTimmBlock",
    "FoldedTimmNet",
    "SUPPORTED_PREFIXES",
    "create_timm_model",
    "fold_timm_model",
    "is_plain",
    "randomize_timm_",
    "timm_input_size",
]
