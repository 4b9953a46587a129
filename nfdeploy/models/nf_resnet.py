"""NF-ResNets (Brock et al. 2021a, arXiv 2101.08692) and their BatchNorm twins.

Residual stream of an NF stage (pre-activation blocks):

    h_{l+1} = h_l + alpha * s_l * f_l(gamma * act(h_l) / beta_l),   beta_l = sqrt(E[Var h_l])
    E[Var h_{l+1}] = E[Var h_l] + alpha^2           (reset to 1 after each stage's first block)

The first block of every stage is a *transition*: its shortcut is a 1x1 WS conv (after a 2x2
average pool when the stage downsamples) applied to the same beta-scaled activation, so the
stream's variance restarts at ~1.  s_l is the skip-init gain (a scalar, zero at init).

The BatchNorm twin (cfg.norm == "bn") has the same topology and widths: BatchNorm + act where NF
has gamma*act/beta, plain convs where NF has WS convs, no alpha/skip gain, SE gain 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import nn

from nfdeploy.nn import GammaAct, ScaledStdConv2d
from nfdeploy.nn.layers import DropPath, SqueezeExcite


@dataclass(frozen=True)
class NFResNetCfg:
    """Architecture of one NF-ResNet (or its BN twin)."""

    block: Literal["basic", "bottleneck"]
    depths: tuple[int, ...]
    channels: tuple[int, ...]  # block output channels per stage
    stem: Literal["imagenet", "small"] = "imagenet"  # 7x7/2 conv + 3x3/2 max-pool, or 3x3/1 conv
    stem_width: int = 64
    norm: Literal["nf", "bn"] = "nf"
    alpha: float = 0.2
    act: str = "relu"
    se_ratio: float = 0.0  # SE hidden width = channels * se_ratio; 0 disables SE
    attn_gain: float = 2.0
    bottleneck_ratio: float = 0.25
    drop_rate: float = 0.0  # dropout before the classifier
    drop_path_rate: float = 0.0  # stochastic depth, linearly increasing with block index
    num_classes: int = 1000
    in_chans: int = 3
    input_size: int = 224
    strides: tuple[int, ...] = field(default=())  # per stage; default (1, 2, 2, ...)
    # Downsampling shortcut: "avg" = 2x2 average pool then 1x1 conv (NFNets, timm); "stride" = strided
    # 1x1 conv (DeepMind's NF-ResNet).  On spatially white inputs the pool divides the shortcut's
    # variance by ~4, so only "stride" keeps the analytic Var = 1 + k alpha^2 exactly at init.
    downsample: Literal["avg", "stride"] = "avg"

    def stage_strides(self) -> tuple[int, ...]:
        return self.strides or (1,) + (2,) * (len(self.depths) - 1)

    @classmethod
    def from_dict(cls, d: dict) -> NFResNetCfg:
        """From `asdict(cfg)` as read back from JSON (lists become tuples again)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def twin(self) -> NFResNetCfg:
        """The same topology and widths with the other normalisation (nf <-> bn)."""
        return replace(self, norm="bn" if self.norm == "nf" else "nf")


def _conv(cfg: NFResNetCfg, cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    if cfg.norm == "nf":
        return ScaledStdConv2d(cin, cout, k, stride=stride, padding=k // 2, bias=True)
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)


class Shortcut(nn.Module):
    """Transition shortcut: [2x2 average pool] then 1x1 conv (or a strided 1x1 conv)."""

    def __init__(self, cfg: NFResNetCfg, cin: int, cout: int, stride: int):
        super().__init__()
        if cfg.downsample not in ("avg", "stride"):
            raise ValueError(f"downsample must be 'avg' or 'stride', got {cfg.downsample!r}")
        pool = stride > 1 and cfg.downsample == "avg"
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False) if pool else nn.Identity()
        self.conv = _conv(cfg, cin, cout, 1, 1 if pool else stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


class ResidualBlock(nn.Module):
    """Pre-activation residual block (basic: 3x3-3x3, bottleneck: 1x1-3x3-1x1, stride in the 3x3).

    NF: out = shortcut + alpha * skip_gain * branch(gamma * act(x) / beta)
    BN: out = shortcut + branch(act(BN(x)))
    """

    def __init__(
        self,
        cfg: NFResNetCfg,
        cin: int,
        cout: int,
        stride: int,
        transition: bool,
        beta: float = 1.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        nf = cfg.norm == "nf"
        self.nf = nf
        self.alpha = cfg.alpha if nf else 1.0
        self.beta = beta
        self.expected_var_out = float("nan")  # set by NFResNet for NF blocks
        self.norm1 = nn.Identity() if nf else nn.BatchNorm2d(cin)
        self.act1 = GammaAct(cfg.act, scale=1.0 / beta if nf else 1.0, use_gamma=nf)
        self.shortcut = Shortcut(cfg, cin, cout, stride) if transition else None
        if cfg.block == "basic":
            widths, kernels, strides = [cout, cout], [3, 3], [stride, 1]
        else:
            mid = max(1, int(round(cout * cfg.bottleneck_ratio)))
            widths, kernels, strides = [mid, mid, cout], [1, 3, 1], [1, stride, 1]
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()  # norm + act *before* convs[1:]
        self.acts = nn.ModuleList()
        c = cin
        for i, (w, k, s) in enumerate(zip(widths, kernels, strides)):
            if i > 0:
                self.norms.append(nn.Identity() if nf else nn.BatchNorm2d(c))
                self.acts.append(GammaAct(cfg.act, use_gamma=nf))
            self.convs.append(_conv(cfg, c, w, k, s))
            c = w
        hidden = max(1, int(round(cout * cfg.se_ratio))) if cfg.se_ratio > 0 else 0
        self.se = SqueezeExcite(cout, hidden, gain=cfg.attn_gain if nf else 1.0) if hidden else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        # Skip-init gain: a scalar, zero at init, so every block starts as the identity.
        self.skip_gain = nn.Parameter(torch.zeros(())) if nf else None

    def branch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (shortcut, residual branch output before alpha/skip gain)."""
        out = self.act1(self.norm1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.convs[0](out)
        for norm, act, conv in zip(self.norms, self.acts, self.convs[1:]):
            out = conv(act(norm(out)))
        if self.se is not None:
            out = self.se(out)
        return shortcut, self.drop_path(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut, out = self.branch(x)
        if self.skip_gain is not None:
            out = out * (self.alpha * self.skip_gain)
        return shortcut + out


class NFResNet(nn.Module):
    """Stem -> stages of ResidualBlocks -> final act -> global average pool -> dropout -> Linear."""

    def __init__(self, cfg: NFResNetCfg):
        super().__init__()
        if len(cfg.depths) != len(cfg.channels):
            raise ValueError(f"depths {cfg.depths} and channels {cfg.channels} differ in length")
        if cfg.norm not in ("nf", "bn"):
            raise ValueError(f"norm must be 'nf' or 'bn', got {cfg.norm!r}")
        self.cfg = cfg
        nf = cfg.norm == "nf"
        if cfg.stem == "imagenet":
            self.stem = nn.Sequential(
                _conv(cfg, cfg.in_chans, cfg.stem_width, 7, 2), nn.MaxPool2d(3, stride=2, padding=1)
            )
        elif cfg.stem == "small":
            self.stem = nn.Sequential(_conv(cfg, cfg.in_chans, cfg.stem_width, 3, 1))
        else:
            raise ValueError(f"stem must be 'imagenet' or 'small', got {cfg.stem!r}")
        blocks: list[ResidualBlock] = []
        total = sum(cfg.depths)
        expected_var = 1.0
        cin = cfg.stem_width
        for cout, depth, stride in zip(cfg.channels, cfg.depths, cfg.stage_strides()):
            for j in range(depth):
                transition = j == 0
                dp = cfg.drop_path_rate * len(blocks) / max(total - 1, 1)
                block = ResidualBlock(
                    cfg, cin, cout, stride if transition else 1, transition, beta=math.sqrt(expected_var), drop_path=dp
                )
                if transition:
                    expected_var = 1.0
                expected_var += cfg.alpha**2
                block.expected_var_out = expected_var if nf else float("nan")
                blocks.append(block)
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.num_features = cin
        self.final_norm = nn.Identity() if nf else nn.BatchNorm2d(cin)
        self.final_act = GammaAct(cfg.act, use_gamma=nf)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(cfg.drop_rate) if cfg.drop_rate > 0 else nn.Identity()
        self.fc = nn.Linear(cin, cfg.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and not isinstance(m, ScaledStdConv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.fc.weight, 0.0, 0.01)
        nn.init.zeros_(self.fc.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.final_act(self.final_norm(x))).flatten(1)
        return self.fc(self.dropout(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.no_grad()
    def signal_propagation(self, x: torch.Tensor) -> list[dict[str, float]]:
        """Per residual block, DeepMind's statistics of the residual stream after the block:
        avg_sq_mean = mean_c (mean_{n,h,w} h)^2,  avg_var = mean_c Var_{n,h,w}(h), plus the
        residual branch's avg_var and the analytic expectation (NF only)."""
        stats = []
        h = self.stem(x)
        for i, block in enumerate(self.blocks):
            shortcut, branch = block.branch(h)
            h = block(h)
            stats.append(
                {
                    "block": i,
                    "transition": block.shortcut is not None,
                    "avg_sq_mean": float(h.mean(dim=(0, 2, 3)).pow(2).mean()),
                    "avg_var": float(h.var(dim=(0, 2, 3), correction=0).mean()),
                    "branch_avg_var": float(branch.var(dim=(0, 2, 3), correction=0).mean()),
                    "expected_var": block.expected_var_out,
                }
            )
        return stats
