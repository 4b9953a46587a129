"""Export presets (nfdeploy/presets/NAME.toml, or a path) merged with explicit overrides into
ExportOptions, validated before any work starts.

A preset has three tables: [onnx] (opset, precisions, io_dtype, check, check_samples, image_input,
image_norm), [int8]
(calibration = minmax|percentile|entropy, calib_samples, calib_seed) and [tensorrt]
(profiles as "MIN:OPT:MAX" strings, optimization_level, tf32, flavour, workspace_mb,
detailed_profiling, compute_capabilities), used only when engines are asked for.

The overrides come in the same three groups (OnnxOverrides, Int8Overrides, TrtOverrides): a field left
None (or empty) keeps the preset's value. Each group knows the command-line flag of each field, so a
setting given where it does not apply is an error that names the flag, never silently ignored.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from nfdeploy.export.engine_build import BatchProfile, TrtBuildOptions
from nfdeploy.export.export_dir import ExportError, ExportOptions
from nfdeploy.export.quantize import CalibrationOptions
from nfdeploy.precision import PRECISIONS

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"  # package data: ships in the wheel
_ONNX_KEYS = {"opset", "precisions", "io_dtype", "check", "check_samples", "image_input", "image_norm"}
_INT8_KEYS = {"calibration", "calib_samples", "calib_seed"}  # [int8]: calibration of the int8 precisions
_TRT_KEYS = {
    "profiles",
    "optimization_level",
    "tf32",
    "flavour",
    "workspace_mb",
    "detailed_profiling",
    "compute_capabilities",
}


class _Overrides:
    """A group of overrides: FLAGS maps each field to its command-line flag."""

    FLAGS: ClassVar[dict[str, str]] = {}

    def given(self) -> list[str]:
        """The flags of the fields that are set (not None, not empty), in field order."""
        return [self.FLAGS[f.name] for f in fields(self) if getattr(self, f.name) not in (None, (), [])]


@dataclass(frozen=True)
class OnnxOverrides(_Overrides):
    """Overrides of the [onnx] table, and the input size."""

    precisions: Sequence[str] | None = None
    opset: int | None = None
    io_dtype: str | None = None
    check: bool | None = None
    input_size: int | None = None  # static spatial size; default: the model's own
    image_input: bool | None = None  # also the uint8 image-input graph (model.uint8.onnx)
    image_norm: str | None = None  # its normalization: fold (where exact) or explicit

    FLAGS: ClassVar[dict[str, str]] = {
        "precisions": "--precision",
        "opset": "--opset",
        "io_dtype": "--io-dtype",
        "check": "--check",
        "input_size": "--input-size",
        "image_input": "--image-input",
        "image_norm": "--image-norm",
    }


@dataclass(frozen=True)
class Int8Overrides(_Overrides):
    """Overrides of the [int8] table, and the settings only the command line gives (calibration images,
    nodes kept in float, the int8-ort weight range)."""

    calibration: str | None = None  # minmax | percentile | entropy
    calib_samples: int | None = None
    calib_seed: int | None = None
    calib_dir: str | Path | None = None
    keep: Sequence[str] = ()
    ort_weight_bits: int | None = None

    FLAGS: ClassVar[dict[str, str]] = {
        "calibration": "--calibration",
        "calib_samples": "--calib-samples",
        "calib_seed": "--calib-seed",
        "calib_dir": "--calib-dir",
        "keep": "--int8-keep",
        "ort_weight_bits": "--int8-ort-weight-bits",
    }


@dataclass(frozen=True)
class TrtOverrides(_Overrides):
    """Overrides of the [tensorrt] table (shared by `nfdeploy export --trt` and `nfdeploy engine`)."""

    flavour: str | None = None
    profiles: Sequence[str] = ()
    tf32: bool | None = None
    optimization_level: int | None = None
    timing_cache: Path | None = None  # default: default_timing_cache()
    compute_capabilities: Sequence[str] = ()

    FLAGS: ClassVar[dict[str, str]] = {
        "flavour": "--trt-flavour",
        "profiles": "--profile",
        "tf32": "--tf32",
        "optimization_level": "--opt-level",
        "timing_cache": "--timing-cache",
        "compute_capabilities": "--cc",
    }


def list_presets() -> list[str]:
    return sorted(q.stem for q in PRESET_DIR.glob("*.toml"))


def load_preset(name_or_path: str) -> dict[str, Any]:
    """{"onnx": {...}, "tensorrt": {...}, "int8": {...}} of a bundled preset name or a .toml path; unknown
    keys are errors."""
    p = Path(name_or_path)
    if p.suffix != ".toml":
        p = PRESET_DIR / f"{name_or_path}.toml"
    if not p.is_file():
        raise ExportError(f"unknown export preset {name_or_path!r}; bundled: {', '.join(list_presets())}")
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ExportError(f"{p} is not valid TOML: {e}") from None
    out = {}
    for table, keys in (("onnx", _ONNX_KEYS), ("tensorrt", _TRT_KEYS), ("int8", _INT8_KEYS)):
        sec = raw.get(table, {})
        unknown = set(sec) - keys
        if unknown:
            raise ExportError(f"unknown key(s) {sorted(unknown)} in [{table}] of {p}")
        out[table] = dict(sec)
    return out


def default_timing_cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "nfdeploy" / "tensorrt-timing.cache"


def trt_options(preset_table: dict[str, Any] | None = None, trt: TrtOverrides | None = None) -> TrtBuildOptions:
    """TrtBuildOptions from a preset's [tensorrt] table, overridden by the fields of `trt` that are set."""
    trt = trt or TrtOverrides()
    kw = dict(preset_table or {})
    try:
        if trt.profiles or "profiles" in kw:
            kw["profiles"] = tuple(BatchProfile.parse(p) for p in (trt.profiles or kw["profiles"]))
        for key in ("flavour", "tf32", "optimization_level"):
            if getattr(trt, key) is not None:
                kw[key] = getattr(trt, key)
        if trt.compute_capabilities or "compute_capabilities" in kw:
            kw["compute_capabilities"] = tuple(trt.compute_capabilities or kw["compute_capabilities"])
        kw["timing_cache"] = trt.timing_cache or default_timing_cache()
        return TrtBuildOptions(**kw)
    except (ValueError, TypeError) as e:
        raise ExportError(str(e)) from None


def calibration_options(preset_table: dict[str, Any], int8: Int8Overrides) -> CalibrationOptions:
    """CalibrationOptions from a preset's [int8] table, overridden by the fields of `int8` that are set."""
    cal = dict(preset_table)
    for key in ("calibration", "calib_samples", "calib_seed"):
        if getattr(int8, key) is not None:
            cal[key] = getattr(int8, key)
    return CalibrationOptions(
        method=cal.get("calibration", "minmax"),
        samples=cal.get("calib_samples", 512),
        seed=cal.get("calib_seed", 0),
        keep=tuple(int8.keep),
        calib_dir=str(int8.calib_dir) if int8.calib_dir is not None else None,
        **({"ort_weight_bits": int8.ort_weight_bits} if int8.ort_weight_bits is not None else {}),
    )


def export_options(
    preset: str = "default",
    onnx: OnnxOverrides | None = None,
    int8: Int8Overrides | None = None,
    trt: TrtOverrides | None = None,
    *,
    engines: bool = False,
) -> ExportOptions:
    """The preset, overridden by every field that is set; TensorRT settings only with engines=True (given
    without it they are an error, not silently ignored); calibration settings only with an int8 precision."""
    onnx, int8, trt = onnx or OnnxOverrides(), int8 or Int8Overrides(), trt or TrtOverrides()
    if trt.given() and not engines:
        raise ExportError(f"{', '.join(trt.given())} only apply to TensorRT engines: add --trt")
    if onnx.input_size is not None and onnx.input_size < 1:
        raise ExportError(f"input size must be positive, got {onnx.input_size}")
    p = load_preset(preset)
    cfg = dict(p["onnx"])
    for key in ("precisions", "opset", "io_dtype", "check", "image_input", "image_norm"):
        if getattr(onnx, key) is not None:
            cfg[key] = list(onnx.precisions) if key == "precisions" else getattr(onnx, key)
    precisions = cfg.get("precisions", ())
    if onnx.image_norm is not None and not cfg.get("image_input"):
        raise ExportError("--image-norm only applies to the image-input graph: add --image-input")
    int8_given = [f for f in int8.given() if f != Int8Overrides.FLAGS["ort_weight_bits"]]
    if int8_given and not any(PRECISIONS.get(q) and PRECISIONS[q].quantized_from for q in precisions):
        raise ExportError(f"{', '.join(int8_given)} only apply to int8: add --precision int8 (or int8-ort)")
    if int8.ort_weight_bits is not None and "int8-ort" not in precisions:
        raise ExportError("--int8-ort-weight-bits only applies to the ONNX Runtime int8 form: add --precision int8-ort")
    calibration = calibration_options(p["int8"], int8)
    engine_opts = trt_options(p["tensorrt"], trt) if engines else None
    return ExportOptions(**cfg, input_size=onnx.input_size, trt=engine_opts, calibration=calibration)


__all__ = [
    "PRESET_DIR",
    "Int8Overrides",
    "OnnxOverrides",
    "TrtOverrides",
    "calibration_options",
    "default_timing_cache",
    "export_options",
    "list_presets",
    "load_preset",
    "trt_options",
]
