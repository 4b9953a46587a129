"""The carried bundle: the digits run and export that the CPU machine prepares (prepare.py) and the GPU machine
relocates under its work dir before the suite runs on it.

    BUNDLE/runs/nf_digits       the trained run (config.json, weights.safetensors, ...)
    BUNDLE/exports/nf_digits    its export (manifest.json, model*.onnx)
    BUNDLE/rtx/*.engine         TensorRT-RTX engines, and BUNDLE/trt_rtx.json: what the builder said
    BUNDLE/bundle.json          every file's size and sha256, the recipe, seed and versions
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from nfdeploy.artifacts import MANIFEST, Manifest, read_json, sha256_file
from nfdeploy.errors import UserError

BUNDLE_RUN = Path("runs") / "nf_digits"
BUNDLE_EXPORT = Path("exports") / "nf_digits"
BUNDLE_INFO = "bundle.json"
BUNDLE_RTX = "rtx"
RTX_RECORD = "trt_rtx.json"


class BundleError(UserError, FileNotFoundError):
    """No bundle where one was expected; one line."""


def relocate_bundle(bundle: Path, dest: Path) -> tuple[Path, Path]:
    """Copy the carried run + export to `dest` and point the manifest at the copied run dir.

    A manifest names its run dir by absolute path (where it was exported); on another machine that path
    does not exist. Only manifest.json's source.run_dir changes: the ONNX files (checked against their
    sha256 by Manifest.read) and the weights (checked against weights_sha256) are the carried bytes."""
    if not (bundle / BUNDLE_EXPORT / MANIFEST).is_file():
        raise BundleError(
            f"no digits bundle at {bundle} (run `python -m bench.gpu_prepare` on the CPU machine and carry its folder)"
        )
    run, export = dest / BUNDLE_RUN, dest / BUNDLE_EXPORT
    for src, dst in ((bundle / BUNDLE_RUN, run), (bundle / BUNDLE_EXPORT, export)):
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst)
    manifest = Manifest.read(export, verify_files=False)
    manifest.source.run_dir = str(run.resolve())
    manifest.source.details["relocated_from"] = str(bundle.resolve())
    manifest.write(export)
    return run, export


def read_bundle_info(bundle: Path) -> dict[str, Any]:
    """BUNDLE/bundle.json, or {} when the bundle has none."""
    p = bundle / BUNDLE_INFO
    return read_json(p, "bundle info") if p.is_file() else {}


def bundle_files(bundle: Path) -> dict[str, dict[str, Any]]:
    """{path under the bundle: {"bytes", "sha256"}} of every file in it."""
    return {
        str(p.relative_to(bundle)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(bundle.rglob("*"))
        if p.is_file()
    }


__all__ = [
    "BUNDLE_EXPORT",
    "BUNDLE_INFO",
    "BUNDLE_RTX",
    "BUNDLE_RUN",
    "RTX_RECORD",
    "BundleError",
    "bundle_files",
    "read_bundle_info",
    "relocate_bundle",
]
