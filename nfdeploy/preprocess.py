"""Preprocessing as data: how an image file becomes the model's input, recorded beside every export.

    pixels = centre_crop(resize(convert(image, color), shorter side -> resize_size), crop_size)   uint8, C x H x W
    input  = (float32(pixels) / 255 - mean) / std                                              float32, per channel

`convert` is Pillow's mode conversion ("L": one luma channel, ITU-R 601-2; "RGB": three channels in R, G, B
order); `resize` is torch's bilinear or bicubic interpolation (align_corners=False, antialiased when shrinking),
rounded to uint8; a non-square image keeps its aspect ratio until the centre crop. This module is the one place
that does it: the datasets (training, parity, int8 calibration), `nfdeploy predict` and the uint8 graph's
reference all call it, and `preprocessing.json` in an export dir states it for a client in any language.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nfdeploy.errors import UserError, one_line

PREPROCESSING_JSON = "preprocessing.json"
PREPROCESSING_FORMAT = "nfdeploy-preprocessing-v1"
COLOR_CHANNELS = {"L": 1, "RGB": 3}
INTERPOLATIONS = ("bilinear", "bicubic")
PIXEL_DIVISOR = 255.0  # pixels are divided (not multiplied by 1/255: that rounds differently in float32)
_CHUNK = 4096  # images per resize chunk (bounds temporary memory)


class ImageReadError(UserError, ValueError):
    """An image file that cannot be read (missing, not an image, truncated); one line naming the file."""


def resize_uint8(
    images: torch.Tensor, resize_size: int, crop_size: int | None = None, interpolation: str = "bilinear"
) -> torch.Tensor:
    """uint8 N x C x H x W → uint8 N x C x crop x crop: shorter side to `resize_size` (aspect ratio kept; antialiased
    when shrinking), rounded and clamped to uint8, then the centre crop_size x crop_size (default resize_size)."""
    crop = crop_size or resize_size
    h, w = images.shape[-2:]
    scale = resize_size / min(h, w)
    nh, nw = max(resize_size, round(h * scale)), max(resize_size, round(w * scale))
    if (nh, nw) == (h, w):
        out = images
    else:
        shrink = nh < h or nw < w
        out = torch.empty((images.shape[0], images.shape[1], nh, nw), dtype=torch.uint8)
        for s in range(0, images.shape[0], _CHUNK):
            x = images[s : s + _CHUNK].to(torch.float32)
            y = F.interpolate(x, size=(nh, nw), mode=interpolation, align_corners=False, antialias=shrink)
            out[s : s + _CHUNK] = y.round_().clamp_(0, 255).to(torch.uint8)
    top, left = (nh - crop) // 2, (nw - crop) // 2
    return out[..., top : top + crop, left : left + crop].contiguous()


def image_pixels(
    image: Any, color: str, resize_size: int, crop_size: int | None = None, interpolation: str = "bilinear"
) -> np.ndarray:
    """uint8 C x crop x crop pixels of one Pillow image (any size and mode): convert, resize, centre crop."""
    arr = np.asarray(image.convert(color), dtype=np.uint8)
    chw = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    t = torch.from_numpy(np.array(chw, order="C"))[None]  # a writable copy: Pillow's buffer is read-only
    return resize_uint8(t, resize_size, crop_size, interpolation)[0].numpy()


def open_image(path: str | Path) -> Any:
    """The decoded Pillow image of a file; ImageReadError (one line, naming the file) when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageReadError(f"{path}: a directory, not an image") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated or damaged data (Pillow raises these)
        raise ImageReadError(f"{path}: unreadable image ({one_line(e, 160, with_type=False)})") from None


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input (the module docstring has the formula)."""

    color: str | None  # "L" or "RGB"; None: data that is not an image (synthetic channels), nothing to convert
    crop_size: int  # the model's input height = width
    resize_size: int  # the shorter side before the centre crop (== crop_size: no margin is cropped)
    mean: tuple[float, ...]  # per channel, in [0, 1] pixel units
    std: tuple[float, ...]
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.color is not None and self.color not in COLOR_CHANNELS:
            raise ValueError(f"color must be one of {list(COLOR_CHANNELS)}, got {self.color!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if len(self.mean) != len(self.std) or (self.color and len(self.mean) != COLOR_CHANNELS[self.color]):
            raise ValueError(f"mean {list(self.mean)} / std {list(self.std)} do not match color {self.color!r}")
        if not 0 < self.crop_size <= self.resize_size:
            raise ValueError(f"need 0 < crop_size <= resize_size, got {self.crop_size}, {self.resize_size}")

    @property
    def channels(self) -> int:
        return len(self.mean)

    def pixels(self, image: Any) -> np.ndarray:
        """uint8 C x crop x crop pixels of one Pillow image (any size and mode)."""
        if self.color is None:
            raise ValueError("this model's input is not an image (its data had no colour mode)")
        return image_pixels(image, self.color, self.resize_size, self.crop_size, self.interpolation)

    def read(self, path: str | Path) -> np.ndarray:
        """uint8 C x crop x crop pixels of an image file; ImageReadError (one line, naming the file) otherwise."""
        return self.pixels(open_image(path))

    def normalize(self, pixels: torch.Tensor | np.ndarray) -> torch.Tensor:
        """float32 (pixels / 255 - mean) / std per channel, of uint8 ... x C x H x W pixels."""
        x = torch.as_tensor(pixels).to(torch.float32) / PIXEL_DIVISOR
        c = x.shape[-3]
        if c != self.channels:
            raise ValueError(f"images have {c} channels, the preprocessing has {self.channels}")
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(c, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(c, 1, 1)
        return (x - mean) / std

    def to_dict(self) -> dict[str, Any]:
        """The record a client in any language can follow (preprocessing.json, manifest input.preprocessing)."""
        return {
            "format": PREPROCESSING_FORMAT,
            "color": self.color,
            "channel_order": {"L": "L (luma: 0.299 R + 0.587 G + 0.114 B)", "RGB": "R, G, B"}.get(self.color or ""),
            "layout": "N x C x H x W",
            "resize": {
                "shorter_side": self.resize_size,
                "interpolation": self.interpolation,
                "antialias": "when shrinking",
                "align_corners": False,
                "rounding": "round half to even, clamp to 0..255, uint8",
                "non_square": "the aspect ratio is kept; the centre crop_size x crop_size is taken after resizing",
            },
            "crop_size": self.crop_size,
            "pixel_divisor": PIXEL_DIVISOR,
            "mean": list(self.mean),
            "std": list(self.std),
            "formula": "input = (float32(pixels) / 255 - mean[c]) / std[c]",
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        if not isinstance(d, dict) or d.get("format") != PREPROCESSING_FORMAT:
            raise ValueError(f"not an nfdeploy preprocessing record ({PREPROCESSING_FORMAT})")
        return cls(
            color=d["color"],
            crop_size=int(d["crop_size"]),
            resize_size=int(d["resize"]["shorter_side"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            interpolation=d["resize"]["interpolation"],
        )

    @classmethod
    def read_json(cls, path: str | Path) -> Preprocessing:
        return cls.from_dict(json.loads(Path(path).read_text()))


def square_preprocessing(channels: int, size: int, mean: Any, std: Any) -> Preprocessing:
    """The preprocessing of nfdeploy's own datasets: shorter side to the input size, bilinear, no crop margin."""
    color = {1: "L", 3: "RGB"}.get(channels)
    return Preprocessing(color, size, size, tuple(float(m) for m in mean), tuple(float(s) for s in std))


__all__ = [
    "COLOR_CHANNELS",
    "INTERPOLATIONS",
    "PIXEL_DIVISOR",
    "PREPROCESSING_FORMAT",
    "PREPROCESSING_JSON",
    "ImageReadError",
    "Preprocessing",
    "image_pixels",
    "open_image",
    "resize_uint8",
    "square_preprocessing",
]
