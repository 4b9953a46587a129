"""What the int8 studies quantize and measure on, where random weights leave no dataset to use: a model's
float32 graph with randomised weights, and tiles of two natural photographs (scikit-learn's sample images,
china.jpg and flower.jpg, 427 x 640) normalised with ImageNet's mean and std. Natural images, not noise:
their activations have the ranges and correlations that calibration is made for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nfdeploy.export.onnx_graph import export_module
from nfdeploy.fold import fold_model, randomize_
from nfdeploy.models import create_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def photo_tiles(size: int = 224) -> np.ndarray:
    """size² tiles of scikit-learn's sample photos at a stride of size // 2 (so they overlap by half), as float32
    (N, 3, size, size), ImageNet-normalised: (pixel / 255 - mean) / std per channel."""
    from sklearn.datasets import load_sample_images

    tiles = []
    for img in load_sample_images().images:  # 427 x 640 x 3 uint8
        h, w, _ = img.shape
        for top in range(0, h - size + 1, size // 2):
            for left in range(0, w - size + 1, size // 2):
                tiles.append(img[top : top + size, left : left + size])
    x = np.stack(tiles).astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    mean = np.array(IMAGENET_MEAN, np.float32).reshape(1, 3, 1, 1)
    std = np.array(IMAGENET_STD, np.float32).reshape(1, 3, 1, 1)
    return ((x - mean) / std).astype(np.float32)


def export_randomised(name: str, path: str | Path, size: int = 224) -> Path:
    """nfdeploy model `name` with randomize_(seed 0) weights, folded in float64, written as a float32 ONNX graph
    (opset 18) for a size² input at `path`."""
    torch.manual_seed(0)
    net, _ = fold_model(randomize_(create_model(name).eval(), seed=0).double(), dtype=torch.float32)
    export_module(net, Path(path), (3, size, size), opset=18)
    return Path(path)


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "export_randomised", "photo_tiles"]
