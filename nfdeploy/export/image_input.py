"""The image-input graph: uint8 pixels in (the export's preprocessing.json says how an image becomes them), the
preprocessing's normalization as the graph's first operations, the folded network after them.

    explicit:  x = (float32(pixels) / 255 - mean_c) / std_c; logits = net(x)       (the order Python's path computes)
    fold:      the first conv reads (pixels - 255 mean_c) with W'[:, c] = W[:, c] / (255 std_c)   (exact: scaling is
               linear and a zero pad stays zero); its bias absorbs the mean too, b' = b - sum W'[:, c] 255 mean_c,
               only where nothing pads in front of it: padding the normalized image with 0 is padding the raw image
               with 255 mean_c, which a bias cannot express at the borders, so there one explicit Sub stays.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from nfdeploy.preprocess import PIXEL_DIVISOR, Preprocessing

IMAGE_INPUT_FILE = "model.uint8.onnx"
NORMALIZATIONS = ("fold", "explicit")


class PixelNormalize(nn.Module):
    """uint8 pixels → (float32(pixels) / 255 - mean) / std, per channel: Preprocessing.normalize as graph ops."""

    def __init__(self, prep: Preprocessing):
        super().__init__()
        c = prep.channels
        self.register_buffer("mean", torch.tensor(prep.mean, dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(prep.std, dtype=torch.float32).view(1, c, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels.to(torch.float32) / PIXEL_DIVISOR - self.mean) / self.std


class PixelCenter(nn.Module):
    """uint8 pixels → float32(pixels) - 255 mean, per channel (the part of the normalization a padded conv cannot
    absorb); `center` None: the cast alone."""

    def __init__(self, center: torch.Tensor | None):
        super().__init__()
        self.register_buffer("center", None if center is None else center.to(torch.float32).view(1, -1, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.to(torch.float32)
        return x if self.center is None else x - self.center


def first_conv(net: nn.Module) -> tuple[nn.Conv2d, bool] | None:
    """The conv that reads the network's input, and whether anything pads in front of or inside it; None when the
    stem does not start with a conv (behind zero pads only)."""
    stem = getattr(net, "stem", None)
    padded = False
    for m in stem if isinstance(stem, nn.Sequential) else ():
        if isinstance(m, nn.ZeroPad2d):
            padded = padded or any(int(p) for p in m.padding)
            continue
        if isinstance(m, nn.Conv2d):
            pads = isinstance(m.padding, str) or any(int(p) for p in m.padding)
            return m, padded or pads
        return None
    return None


def image_input_net(folded64: nn.Module, prep: Preprocessing, mode: str) -> tuple[nn.Module, dict[str, Any]]:
    """The float32 image-input network of a float64 folded net, and the record of how it normalizes (folded into
    the first conv as far as that is exact, or explicit; the record says which and why)."""
    if mode not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {mode!r}")
    net = copy.deepcopy(folded64)
    found = first_conv(net) if mode == "fold" else None
    if found is None:
        why = "asked for (--image-norm explicit)" if mode == "explicit" else "the network does not start with a conv"
        return nn.Sequential(PixelNormalize(prep), net.float()).eval(), {
            "normalization": "explicit", "explicit": ["Cast", "Div 255", "Sub mean", "Div std"], "why": why
        }  # fmt: skip
    conv, padded = found
    scale = torch.tensor([1.0 / (PIXEL_DIVISOR * s) for s in prep.std], dtype=torch.float64)
    center = torch.tensor([PIXEL_DIVISOR * m for m in prep.mean], dtype=torch.float64)
    with torch.no_grad():
        conv.weight.mul_(scale.view(1, -1, 1, 1))
        if not padded:
            shift = (conv.weight * center.view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
            bias = -shift if conv.bias is None else conv.bias - shift
            conv.bias = nn.Parameter(bias, requires_grad=False)
    record = {
        "normalization": "folded",
        "folded": ["1/(255 std) into the first conv's weight"] + ([] if padded else ["255 mean into its bias"]),
        "explicit": ["Cast"] + (["Sub 255 mean"] if padded else []),
        "why": "the first conv zero-pads: a zero pad of the normalized image is a pad of the raw image with 255 "
        "mean, which its bias cannot express at the borders"
        if padded
        else "nothing pads in front of the first conv: the whole normalization folds",
    }
    return nn.Sequential(PixelCenter(center if padded else None), net.float()).eval(), record


__all__ = ["IMAGE_INPUT_FILE", "NORMALIZATIONS", "PixelCenter", "PixelNormalize", "first_conv", "image_input_net"]
