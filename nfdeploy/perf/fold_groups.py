"""The fold's speed contrast, as groups of backends timed side by side on one backend type: the unfolded
model, the folded model and the folded twin (backends.bn_twin with the other norm, random constants: its
speed does not depend on their values). Not `nfdeploy compare` (saved outputs across machines)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from nfdeploy.check.backends import ExportSource, bn_twin
from nfdeploy.errors import one_line, require
from nfdeploy.export.onnx_graph import export_module
from nfdeploy.fold import fold_model
from nfdeploy.perf.result import NotTimed
from nfdeploy.runtime.base import Backend, BackendSpec, BackendUnavailable, name_matches
from nfdeploy.runtime.ort import OrtBackend
from nfdeploy.runtime.torch_backend import TorchBackend
from nfdeploy.status import Status


def source_norm(source: ExportSource) -> str:
    """The norm of the export's model ("nf" or "bn"): the manifest's, else its model_config's."""
    return source.manifest.norm or (source.manifest.source.model_config or {}).get("norm", "nf")


def folded_twin(source: ExportSource) -> torch.nn.Module:
    """The export's model with the other norm, random constants, folded (in float64, to float32)."""
    twin = bn_twin(source, norm="other", randomized=True)
    return fold_model(twin.double(), dtype=torch.float32)[0]


def comparison_backends(
    source: ExportSource, device: str = "cpu", *, tmp_dir: str | Path, only: Sequence[str] | None = None
) -> tuple[dict[str, Backend], list[NotTimed]]:
    """Unfolded model, folded model and folded twin on each backend type of `device`, none active.

    Returns ({"GROUP/VARIANT": backend}, the members skipped, with their reasons); GROUP is e.g. "torch-cpu-fp32",
    VARIANT "nf-unfolded", "nf-folded" or "bn-folded". ONNX Runtime runs the export's own model.onnx for
    the folded model and graphs of the unfolded model and the twin exported under `tmp_dir` (which
    must live as long as the backends)."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    own = source_norm(source)
    other = "bn" if own == "nf" else "nf"
    roles = {f"{own}-unfolded": "unfolded", f"{own}-folded": "folded", f"{other}-folded": "twin"}
    cache: dict[str, Any] = {}

    def net_for(role: str) -> torch.nn.Module:
        if role == "unfolded":
            return source.model
        if role == "folded":
            return source.folded()
        if source.kind != "run":
            raise BackendUnavailable(
                f"no {other.upper()} twin for a {source.kind!r} source (the twin is built from a run's model_config)"
            )
        if "twin" not in cache:
            cache["twin"] = folded_twin(source)
        return cache["twin"]

    def onnx_file(variant: str, role: str) -> Path:
        if role == "folded":  # the export's own graph
            entry = source.manifest.onnx.get("fp32")
            path = source.export_dir / entry.file if entry else None
            if path is None or not path.is_file():
                raise BackendUnavailable("the export has no fp32 ONNX file")
            return path
        net = net_for(role)  # the twin raises its reason here, before any export work
        require("onnxscript", "onnx")  # torch.onnx's dynamo exporter needs it
        path = Path(tmp_dir) / f"{device}-{variant}.onnx"
        if not path.is_file():
            fp32 = source.manifest.onnx.get("fp32")
            opset = fp32.opset if fp32 and fp32.opset else 18
            export_module(copy.deepcopy(net).float().eval(), path, source.input_shape, opset=opset)
        return path

    out: dict[str, Backend] = {}
    skipped: list[NotTimed] = []
    for runtime in ("torch", "onnxruntime"):
        for variant, role in roles.items():
            spec = BackendSpec(runtime, device, "fp32", variant)
            key = f"{runtime}-{device}-fp32/{variant}"
            if only and not any(name_matches(spec.name, o) for o in only):
                continue
            if device == "cuda" and not torch.cuda.is_available():
                skipped.append(NotTimed(spec.name, Status.SKIPPED, "no CUDA device visible to torch", key=key))
                continue
            try:
                if runtime == "torch":
                    b: Backend = TorchBackend(spec, source.input_shape, lambda role=role: net_for(role))
                else:
                    b = OrtBackend(spec, source.input_shape, onnx_file(variant, role))
                reason = b.unavailable_reason()
                if reason is None and runtime == "torch":
                    net_for(role)  # the twin's reason, if any, before timing starts
            except BackendUnavailable as e:
                reason = str(e)
            except Exception as e:  # noqa: BLE001 - an export failure is a reason, not a crash of the report
                reason = one_line(e)
            if reason:
                skipped.append(NotTimed(spec.name, Status.SKIPPED, reason, key=key))
            else:
                out[key] = b
    return out, skipped


def comparison_groups(backends: dict[str, Backend]) -> dict[str, dict[str, Backend]]:
    """{"GROUP/VARIANT": backend} -> {GROUP: {VARIANT: backend}}: the members of one interleaved group."""
    groups: dict[str, dict[str, Backend]] = {}
    for key, b in backends.items():
        group, variant = key.split("/", 1)
        groups.setdefault(group, {})[variant] = b
    return groups


# The ratios a comparison group reports (group_ratios), by their JSON key, and their table label.
RATIO_LABEL = {"speedup_folded_vs_unfolded": "folded speedup", "ratio_nf_folded_to_bn_folded": "NF/BN folded"}


def group_ratios(own: str, variants: Sequence[str]) -> dict[str, tuple[str, str]]:
    """The ratios a group reports, as (numerator, denominator) variants present in `variants`:
    folded speedup = unfolded / folded (> 1: folding is faster); NF/BN = NF folded / BN folded
    (< 1: NF is faster)."""
    pairs = {
        "speedup_folded_vs_unfolded": (f"{own}-unfolded", f"{own}-folded"),
        "ratio_nf_folded_to_bn_folded": ("nf-folded", "bn-folded"),
    }
    return {k: p for k, p in pairs.items() if p[0] in variants and p[1] in variants}


def main_name(group: str, variant: str, own: str) -> str | None:
    """The export_backends name that measures the same thing as comparison member GROUP/VARIANT (its
    row in the main table is this measurement), or None (the twin; ONNX Runtime's unfolded graph)."""
    runtime, device, _ = group.split("-")
    if variant == f"{own}-unfolded" and runtime == "torch":
        return f"torch-{device}-fp32-unfolded"
    if variant == f"{own}-folded":
        if runtime == "torch":
            return "torch-cpu-fp32-folded" if device == "cpu" else "torch-cuda-fp32-folded-eager"
        return f"onnxruntime-{device}-fp32"
    return None


__all__ = [
    "RATIO_LABEL",
    "comparison_backends",
    "comparison_groups",
    "folded_twin",
    "group_ratios",
    "main_name",
    "source_norm",
]
