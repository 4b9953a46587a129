"""Export presets (nfdeploy/presets/NAME.toml, or a path) merged with explicit overrides into
ExportOptions, validated before any work starts.

A preset has three tables: [onnx] (opset, precisions, io_dtype, check, check_samples), [int8]
(calibration = minmax|percentile|entropy, calib_samples, calib_seed) and [tensorrt]
(profiles as "MIN:OPT:MAX" strings, optimization_level, tf32, flavour, workspace_mb,
detailed_profiling, compute_capabilities), used only when engines are asked for.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nfdeploy.export.pipeline import ExportError, ExportOptions
from nfdeploy.export.quantize import CalibrationOptions
from nfdeploy.export.tensorrt import BatchProfile, TrtBuildOptions
from nfdeploy.precision import PRECISIONS

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"  # package data: ships in the wheel
_ONNX_KEYS = {"opset", "precisions", "io_dtype", "check", "check_samples"}
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


def list_presets() -> list[str]:
    return sorted(q.stem for q in PRESET_DIR.glob("*.toml"))


def load_preset(name_or_path: str) -> dict[str, Any]:
    """{"onnx": {...}, "tensorrt": {...}} of a bundled preset name or a .toml path; unknown keys are errors."""
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


def trt_options(
    preset_table: dict[str, Any] | None = None,
    *,
    flavour: str | None = None,
    profiles: Sequence[str] = (),
    tf32: bool | None = None,
    optimization_level: int | None = None,
    timing_cache: Path | None = None,
    compute_capabilities: Sequence[str] = (),
) -> TrtBuildOptions:
    """TrtBuildOptions from a preset's [tensorrt] table, overridden by the arguments that are set."""
    kw = dict(preset_table or {})
    try:
        if profiles or "profiles" in kw:
            kw["profiles"] = tuple(BatchProfile.parse(p) for p in (profiles or kw["profiles"]))
        for key, val in (("flavour", flavour), ("tf32", tf32), ("optimization_level", optimization_level)):
            if val is not None:
                kw[key] = val
        if compute_capabilities or "compute_capabilities" in kw:
            kw["compute_capabilities"] = tuple(compute_capabilities or kw["compute_capabilities"])
        kw["timing_cache"] = timing_cache or default_timing_cache()
        return TrtBuildOptions(**kw)
    except (ValueError, TypeError) as e:
        raise ExportError(str(e)) from None


def export_options(
    preset: str = "default",
    *,
    precisions: Sequence[str] | None = None,
    opset: int | None = None,
    io_dtype: str | None = None,
    check: bool | None = None,
    input_size: int | None = None,
    trt: bool = False,
    trt_flavour: str | None = None,
    profiles: Sequence[str] = (),
    tf32: bool | None = None,
    optimization_level: int | None = None,
    timing_cache: Path | None = None,
    compute_capabilities: Sequence[str] = (),
    calibration: str | None = None,
    calib_samples: int | None = None,
    calib_seed: int | None = None,
    calib_dir: str | Path | None = None,
    int8_keep: Sequence[str] = (),
    int8_ort_weight_bits: int | None = None,
) -> ExportOptions:
    """The preset, overridden by every argument that is set; TensorRT settings only with trt=True
    (given without it they are an error, not silently ignored); calibration settings only with an
    int8 precision."""
    trt_given = [
        n
        for n, v in (
            ("--trt-flavour", trt_flavour),
            ("--profile", profiles or None),
            ("--tf32", tf32),
            ("--opt-level", optimization_level),
            ("--timing-cache", timing_cache),
            ("--cc", compute_capabilities or None),
        )
        if v is not None
    ]
    if trt_given and not trt:
        raise ExportError(f"{', '.join(trt_given)} only apply to TensorRT engines: add --trt")
    if input_size is not None and input_size < 1:
        raise ExportError(f"input size must be positive, got {input_size}")
    p = load_preset(preset)
    cfg = dict(p["onnx"])
    for key, val in (("precisions", precisions), ("opset", opset), ("io_dtype", io_dtype), ("check", check)):
        if val is not None:
            cfg[key] = list(val) if key == "precisions" else val
    cal = dict(p["int8"])
    for key, val in (("calibration", calibration), ("calib_samples", calib_samples), ("calib_seed", calib_seed)):
        if val is not None:
            cal[key] = val
    int8_given = [
        n
        for n, v in (
            ("--calibration", calibration),
            ("--calib-samples", calib_samples),
            ("--calib-seed", calib_seed),
            ("--calib-dir", calib_dir),
            ("--int8-keep", int8_keep or None),
        )
        if v is not None
    ]
    if int8_given and not any(PRECISIONS.get(q) and PRECISIONS[q].quantized_from for q in cfg.get("precisions", ())):
        raise ExportError(f"{', '.join(int8_given)} only apply to int8: add --precision int8 (or int8-ort)")
    if int8_ort_weight_bits is not None and "int8-ort" not in cfg.get("precisions", ()):
        raise ExportError("--int8-ort-weight-bits only applies to the ONNX Runtime int8 form: add --precision int8-ort")
    calib = CalibrationOptions(
        method=cal.get("calibration", "minmax"),
        samples=cal.get("calib_samples", 512),
        seed=cal.get("calib_seed", 0),
        keep=tuple(int8_keep),
        calib_dir=str(calib_dir) if calib_dir is not None else None,
        **({"ort_weight_bits": int8_ort_weight_bits} if int8_ort_weight_bits is not None else {}),
    )
    engine_opts = (
        trt_options(
            p["tensorrt"],
            flavour=trt_flavour,
            profiles=profiles,
            tf32=tf32,
            optimization_level=optimization_level,
            timing_cache=timing_cache,
            compute_capabilities=compute_capabilities,
        )
        if trt
        else None
    )
    return ExportOptions(**cfg, input_size=input_size, trt=engine_opts, calibration=calib)


__all__ = ["PRESET_DIR", "default_timing_cache", "export_options", "list_presets", "load_preset", "trt_options"]
