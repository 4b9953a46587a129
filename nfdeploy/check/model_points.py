"""The measuring points of a model, in its own module names, and their capture through forward hooks.

Points, in forward order: "stem", every block of the residual stream ("blocks.N" for NFResNet /
FoldedNet, "stages.i.j" for timm's NormFreeNet / FoldedTimmNet) and FEATURES, the pre-logits
features (the input of the classifier). The unfolded and the folded model give the same names; the
ONNX side finds the same points in an exported graph (nfdeploy.export.onnx_graph.block_values).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from nfdeploy.errors import UserError

FEATURES = "features"  # the pre-logits point: the input of the classifier


class BlockStructureError(UserError, ValueError):
    """A model or an ONNX graph whose block structure cannot be read; one line."""


def block_points(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """[(point name, module)] in forward order: "stem", each residual block under its module path, and
    FEATURES (taken as the classifier's input)."""
    if not isinstance(getattr(model, "stem", None), nn.Module):
        raise BlockStructureError(
            f"{type(model).__name__} has no `stem`: per-block forensics reads NF-ResNet and timm NormFreeNet models"
        )
    points: list[tuple[str, nn.Module]] = [("stem", model.stem)]
    if isinstance(getattr(model, "blocks", None), nn.Sequential):
        points += [(f"blocks.{i}", b) for i, b in enumerate(model.blocks)]
    elif isinstance(getattr(model, "stages", None), nn.Sequential):
        points += [(f"stages.{i}.{j}", b) for i, s in enumerate(model.stages) for j, b in enumerate(s)]
    else:
        raise BlockStructureError(f"{type(model).__name__} has neither `blocks` nor `stages`")
    points.append((FEATURES, model.get_submodule(classifier_path(model))))
    return points


def classifier_path(model: nn.Module) -> str:
    """The module path of the classifier: "fc" (nfdeploy's models) or "head.fc" (timm)."""
    if isinstance(getattr(model, "fc", None), nn.Module):
        return "fc"
    if isinstance(getattr(getattr(model, "head", None), "fc", None), nn.Module):
        return "head.fc"
    raise BlockStructureError(f"{type(model).__name__} has no classifier `fc` / `head.fc`")


@contextmanager
def capture_points(model: nn.Module) -> Iterator[dict[str, list[np.ndarray]]]:
    """Forward hooks on every point: each call appends a float64 copy (block outputs, the classifier's
    input for FEATURES). The copy is taken as the module returns, before a later in-place op can touch it.
    Hooks do not change what eager torch computes."""
    got: dict[str, list[np.ndarray]] = {}
    handles = []
    for name, module in block_points(model):
        got[name] = []

        def keep(t: torch.Tensor, name: str = name) -> None:
            got[name].append(t.detach().to("cpu", torch.float64).numpy().copy())

        if name == FEATURES:
            handles.append(module.register_forward_pre_hook(lambda m, args, keep=keep: keep(args[0])))
        else:
            handles.append(module.register_forward_hook(lambda m, args, out, keep=keep: keep(out)))
    try:
        yield got
    finally:
        for h in handles:
            h.remove()


def module_ops(model: nn.Module, path: str) -> dict[str, int]:
    """Leaf module types under `path` of a torch model (the ops of a block in torch terms)."""
    sub = model.get_submodule(path)
    leaves = [m for m in sub.modules() if not list(m.children())] or [sub]
    return dict(Counter(type(m).__name__ for m in leaves))


__all__ = ["FEATURES", "BlockStructureError", "block_points", "capture_points", "classifier_path", "module_ops"]
