"""One export dir: unfolded model → fold (float64) → ONNX per precision (int8: calibrated Q/DQ graphs made
from the fp32 one; with --image-input, a uint8 image-input graph) → metadata → check → TensorRT engines →
manifest and preprocessing.json.

Every step writes into a staging directory beside EXPORT_DIR, which is swapped in only when all steps
(and the parity check, when on) succeed, so EXPORT_DIR always holds one complete export: the old one or
the new one, never a mix.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import nfdeploy
from nfdeploy.artifacts import (
    FOLD_REPORT,
    MANIFEST,
    EngineEntry,
    InputSpec,
    Manifest,
    ModelSource,
    OnnxEntry,
    atomic_write_json,
    make_staging_dir,
    sha256_file,
)
from nfdeploy.artifacts.run_dir import WEIGHTS, load_run_model
from nfdeploy.errors import UserError, require
from nfdeploy.export.engine_build import EngineBuildError, TrtBuildOptions, build_engine
from nfdeploy.export.image_input import IMAGE_INPUT_FILE, NORMALIZATIONS, image_input_net
from nfdeploy.export.onnx_graph import NF_ALLOWED_OPS, check_onnx_file, export_module, lint_graph, set_metadata
from nfdeploy.export.quantize import (
    CalibrationData,
    CalibrationOptions,
    describe_fusion,
    folder_calibration,
    lint_int8,
    ort_fusion,
    quantize_graph,
    training_split_calibration,
)
from nfdeploy.fold import FoldReport, fold_model
from nfdeploy.metrics import judge
from nfdeploy.precision import EXPORT_PRECISIONS, PRECISIONS, describe_tolerance
from nfdeploy.preprocess import PREPROCESSING_JSON, Preprocessing, square_preprocessing
from nfdeploy.runtime.base import BackendBroken, BackendSpec, BackendUnavailable, run_batched
from nfdeploy.runtime.ort import OrtBackend
from nfdeploy.status import Status


class ExportError(UserError, RuntimeError):
    """Export failed (bad input, lint or check failure); the message is one line."""


@dataclass
class ExportOptions:
    """What an export writes: the [onnx] table of a preset (precisions, opset, io_dtype, check, check_samples,
    image_input and its normalization image_norm) and the input size, the [int8] group (`calibration`) and the
    [tensorrt] group (`trt`, None: no engines). presets.export_options builds one from a preset and overrides."""

    opset: int | None = None  # None: 18, or 20 when the model uses GELU (native Gelu op)
    precisions: tuple[str, ...] = ("fp32",)
    io_dtype: str = "float32"  # float32: Cast nodes at the edges of fp16/bf16 graphs; native: I/O in that type
    check: bool = True
    check_samples: int = 512
    input_size: int | None = None  # default: the model's own
    trt: TrtBuildOptions | None = None  # build one TensorRT engine per precision when set
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)  # int8 precisions only
    image_input: bool = False  # also model.uint8.onnx: uint8 pixels in, the normalization inside (export.image_input)
    image_norm: str = "fold"  # fold: into the first conv where exact; explicit: Cast, Div, Sub, Div in front

    def __post_init__(self) -> None:
        self.precisions = tuple(self.precisions)
        bad = [p for p in self.precisions if p not in EXPORT_PRECISIONS]
        if bad or not self.precisions:
            raise ExportError(f"precision {bad or '(none)'} not supported; choose from {list(EXPORT_PRECISIONS)}")
        if "fp32" not in self.precisions:
            self.precisions = ("fp32",) + self.precisions  # the fp32 graph is the reference export
        if self.io_dtype not in ("float32", "native"):
            raise ExportError(f"io_dtype must be float32 or native, got {self.io_dtype!r}")
        if self.opset is not None and not 17 <= self.opset <= 23:
            raise ExportError(f"opset {self.opset} outside the supported range 17..23")
        if self.image_norm not in NORMALIZATIONS:
            raise ExportError(f"image_norm must be one of {', '.join(NORMALIZATIONS)}, got {self.image_norm!r}")


@dataclass
class ModelToExport:
    """A model and what its export needs to know of it. `model` is the unfolded eval-mode reference;
    `fold(dtype)` returns its folded net and fold report; `twin()` the folded BN twin (NF models: the
    graph-size comparison); `calibration_data(options)` the int8 calibration images (never test data);
    `preprocessing` how an image becomes the input (None: not images); `check_data` the labelled images of the
    check (None: N(0,1) inputs) and `check_pixels` the same images as uint8 pixels (the image-input graph's)."""

    model: nn.Module
    fold: Callable[[torch.dtype], tuple[nn.Module, FoldReport]]
    name: str
    input_shape: tuple[int, int, int]
    norm: str
    source: ModelSource
    preprocessing: Preprocessing | None = None
    class_names: list[str] | None = None
    dataset: str | None = None
    check_data: tuple[np.ndarray, np.ndarray | None] | None = None
    check_pixels: np.ndarray | None = None
    twin: Callable[[], tuple[nn.Module, FoldReport]] | None = None
    calibration_data: Callable[[CalibrationOptions], CalibrationData] | None = None


@dataclass
class ExportResult:
    out_dir: Path
    manifest: Manifest
    checks: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Staged:
    """What the staging dir holds so far: the graph files with their manifest entries, then the BN twin's
    comparison, the checks and the engines."""

    dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    onnx: dict[str, dict[str, Any]] = field(default_factory=dict)
    opset: int = 18
    fold_report: FoldReport | None = None
    bn_twin: dict[str, Any] | None = None
    checks: dict[str, Any] = field(default_factory=dict)
    engines: dict[str, Any] = field(default_factory=dict)
    engine_failures: dict[str, Any] = field(default_factory=dict)
    image_input: dict[str, Any] | None = None  # model.uint8.onnx's entry


def export_model(
    subject: ModelToExport, out_dir: str | Path, opts: ExportOptions | None = None, log: Callable[[str], None] = print
) -> ExportResult:
    """Export `subject` into `out_dir`: each step below writes into the staging dir; the dir is swapped in
    only when every step and the check passed, and removed on any failure."""
    opts = opts or ExportOptions()
    require("onnx", "onnx")
    out_dir = Path(out_dir)
    staged = _Staged(_staging_dir(out_dir))
    try:
        started = time.perf_counter()
        _export_float_graphs(staged, subject, opts, log)
        _quantize_graphs(staged, subject, opts, log)
        if opts.image_input:
            _export_image_input(staged, subject, opts, log)
        if subject.twin is not None:
            staged.bn_twin = _bn_twin_entry(staged, subject, log)
        _stamp_metadata(staged, subject)
        if opts.check:
            staged.checks = _check(staged.files, subject.model, *_check_inputs(subject, opts), log)
            if staged.image_input is not None:
                staged.checks["image_input"] = _check_image_input(staged, subject, opts, log)
        if opts.trt is not None:
            staged.engines, staged.engine_failures = _build_engines(staged, subject.input_shape, opts.trt, log)
        manifest = _write_manifest(staged, subject, opts, started)
        _refuse_failed_checks(staged.checks, out_dir)
        _swap_into_place(staged.dir, out_dir)
        return ExportResult(out_dir, manifest, staged.checks)
    except BaseException:
        shutil.rmtree(staged.dir, ignore_errors=True)
        raise


def _staging_dir(out_dir: Path) -> Path:
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"output path {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
        raise ExportError(f"output dir {out_dir} is not empty and holds no nfdeploy export; refusing to replace it")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        return make_staging_dir(out_dir)
    except OSError as e:
        raise ExportError(f"cannot write to {out_dir}: {e.strerror or e}") from None


def _pick_opset(folded: nn.Module, requested: int | None) -> int:
    """18, or 20 when the model uses GELU: GELU has a native ONNX op from opset 20 on; below it decomposes
    into constant Mul/Div."""
    uses_gelu = any(isinstance(m, nn.GELU) for m in folded.modules())
    opset = requested or (20 if uses_gelu else 18)
    if uses_gelu and opset < 20:
        raise ExportError(
            f"GELU needs opset >= 20 (native Gelu op); at opset {opset} it decomposes into Mul/Div by constants"
        )
    return opset


def _export_float_graphs(
    staged: _Staged, subject: ModelToExport, opts: ExportOptions, log: Callable[[str], None]
) -> None:
    """Fold once per float precision and write its ONNX graph, checked and linted; the first fold (fp32)
    picks the opset and is the fold report."""
    onnx = require("onnx", "onnx")
    io = torch.float32 if opts.io_dtype == "float32" else None
    for prec in opts.precisions:
        if PRECISIONS[prec].quantized_from:
            continue  # made from the fp32 graph by _quantize_graphs
        t0 = time.perf_counter()
        folded, report = subject.fold(PRECISIONS[prec].torch_dtype)
        fold_s = time.perf_counter() - t0
        if staged.fold_report is None:
            staged.fold_report, staged.opset = report, _pick_opset(folded, opts.opset)
        path = staged.dir / PRECISIONS[prec].onnx_file
        # bfloat16 Conv/pooling entered the ONNX standard at opset 22; below it the graph is invalid.
        opset = max(staged.opset, 22) if prec == "bf16" else staged.opset
        info = export_module(folded, path, subject.input_shape, opset=opset, io_dtype=io)
        check_onnx_file(path)
        lint = lint_graph(onnx.load(str(path)), allow_batchnorm=subject.norm == "bn")
        if not lint["ok"]:
            raise ExportError(f"{prec} graph failed the lint ({len(lint['errors'])} problems): {lint['errors'][0]}")
        staged.files[prec] = path
        staged.onnx[prec] = {
            "file": path.name,
            "opset": opset,
            "io_dtype": "float32" if io else prec,
            "fold_seconds": fold_s,
            **info,
            "lint": lint,
        }
        log(f"  {prec}: {path.name}, {info['nodes']} nodes, exported in {info['export_seconds']:.1f} s, lint ok")


def _quantize_graphs(staged: _Staged, subject: ModelToExport, opts: ExportOptions, log: Callable[[str], None]) -> None:
    """Calibrate once, write each int8 form's Q/DQ graph from its float graph, check and lint it."""
    quantized = [p for p in opts.precisions if PRECISIONS[p].quantized_from]
    if not quantized:
        return
    onnx = require("onnx", "onnx")
    if subject.calibration_data is None:
        raise ExportError("int8 needs calibration images and this source has none: give --calib-dir")
    copts = opts.calibration
    calib = subject.calibration_data(copts)
    log(f"  calibrating int8 on {len(calib.images)} images of the {calib.source} ({copts.method}, seed {copts.seed})")
    for prec in quantized:
        src = PRECISIONS[prec].quantized_from
        path = staged.dir / PRECISIONS[prec].onnx_file
        info = quantize_graph(staged.files[src], path, prec, calib, copts)
        check_onnx_file(path)
        lint = lint_int8(onnx.load(str(path)), prec, allow_batchnorm=subject.norm == "bn")
        if not lint["ok"]:
            raise ExportError(
                f"{prec} graph failed the int8 lint ({len(lint['errors'])} problems): {lint['errors'][0]}"
            )
        staged.files[prec] = path
        if prec == "int8-ort":  # the form meant for ONNX Runtime's CPU EP: what it really fuses, from its own graph
            info["ort_fusion"] = ort_fusion(path)
        staged.onnx[prec] = {
            "file": path.name,
            "opset": staged.onnx[src]["opset"],
            "io_dtype": "float32",
            "quantized_from": src,
            **info,
            "nodes": lint["nodes"],
            "ops": lint["ops"],
            "lint": lint,
        }
        log(
            f"  {prec}: {path.name} ({info['activations']} activations), Q/DQ feeding {lint['dq_consumers']}, "
            f"quantized in {info['quantize_seconds']:.1f} s, int8 lint ok"
            + (f"; {describe_fusion(info['ort_fusion'])}" if "ort_fusion" in info else "")
        )


def _export_image_input(
    staged: _Staged, subject: ModelToExport, opts: ExportOptions, log: Callable[[str], None]
) -> None:
    """model.uint8.onnx: the fp32 network, folded in float64, behind its preprocessing's normalization (folded
    into the first conv where exact, else explicit; export.image_input), checked and linted."""
    onnx = require("onnx", "onnx")
    if subject.preprocessing is None or subject.preprocessing.color is None:
        raise ExportError(f"--image-input: {subject.name}'s input is not an image (its data records no colour mode)")
    net, record = image_input_net(subject.fold(torch.float64)[0], subject.preprocessing, opts.image_norm)
    path = staged.dir / IMAGE_INPUT_FILE
    info = export_module(net, path, subject.input_shape, opset=staged.opset, io_dtype=None, pixels=True)
    check_onnx_file(path)
    lint = lint_graph(onnx.load(str(path)), allow_batchnorm=subject.norm == "bn", allowed_ops=IMAGE_INPUT_OPS)
    if not lint["ok"]:
        raise ExportError(f"the image-input graph failed the lint ({len(lint['errors'])}): {lint['errors'][0]}")
    staged.image_input = {"file": path.name, "opset": staged.opset, "io_dtype": "uint8", **info, "lint": lint,
                          "normalization": record}  # fmt: skip
    staged.fold_report.image_input = record
    log(f"  image input: {path.name}, {info['nodes']} nodes, normalization {record['normalization']} ({record['why']})")


def _bn_twin_entry(staged: _Staged, subject: ModelToExport, log: Callable[[str], None]) -> dict[str, Any]:
    """The folded BN twin's graph beside the NF one: the NF graph equals the twin's minus its residual-stream
    BatchNormalizations, which cannot fold. The twin's file is not kept."""
    onnx = require("onnx", "onnx")
    tnet, _ = subject.twin()
    tpath = staged.dir / ".twin.onnx"
    tinfo = export_module(tnet, tpath, subject.input_shape, opset=staged.opset)
    tlint = lint_graph(onnx.load(str(tpath)), allow_batchnorm=True)
    tpath.unlink()
    fp32 = staged.onnx["fp32"]
    bn_left = tlint["ops"].get("BatchNormalization", 0)
    log(f"  BN twin (folded): {tinfo['nodes']} nodes, of which {bn_left} residual-stream BatchNormalization")
    return {
        "nodes": tinfo["nodes"],
        "ops": tinfo["ops"],
        "residual_stream_batchnorms": bn_left,
        "nf_nodes": fp32["nodes"],
        "nf_equals_twin_minus_residual_bns": {k: v for k, v in tinfo["ops"].items() if k != "BatchNormalization"}
        == fp32["ops"],
    }


def _stamp_metadata(staged: _Staged, subject: ModelToExport) -> None:
    """The model's name, input, preprocessing and provenance as ONNX metadata in every graph."""
    pre = subject.preprocessing
    meta = {
        "nfdeploy.model": subject.name,
        "nfdeploy.version": nfdeploy.__version__,
        "nfdeploy.input_shape": json.dumps(["batch", *subject.input_shape]),
        "nfdeploy.mean": json.dumps(list(pre.mean) if pre else None),
        "nfdeploy.std": json.dumps(list(pre.std) if pre else None),
        "nfdeploy.class_names": json.dumps(subject.class_names),
        "nfdeploy.source_sha256": subject.source.weights_sha256 or "",
        "nfdeploy.pixel_scale": "1/255",
        "nfdeploy.preprocessing": json.dumps(pre.to_dict() if pre else None),
    }
    image = [staged.dir / staged.image_input["file"]] if staged.image_input else []
    for path in [*staged.files.values(), *image]:
        set_metadata(path, meta)
        check_onnx_file(path)


def _check_inputs(subject: ModelToExport, opts: ExportOptions) -> tuple[np.ndarray, np.ndarray | None]:
    """The first check_samples labelled images, or (without them) up to 16 N(0,1) inputs, seed 0."""
    if subject.check_data is None:
        g = torch.Generator().manual_seed(0)
        return torch.randn(min(opts.check_samples, 16), *subject.input_shape, generator=g).numpy(), None
    x, y = subject.check_data
    n = opts.check_samples
    return x[:n], None if y is None else y[:n]


@torch.no_grad()
def _check(
    files: dict[str, Path], reference: nn.Module, x: np.ndarray, labels: np.ndarray | None, log: Callable[[str], None]
) -> dict[str, Any]:
    """ONNX Runtime CPU EP per precision vs the float64 unfolded PyTorch model, judged by the precision table."""
    ref = torch.cat([reference(torch.from_numpy(x[i : i + 64]).double()) for i in range(0, len(x), 64)]).numpy()
    results: dict[str, Any] = {
        "reference": "unfolded PyTorch model, float64, CPU",
        "samples": int(len(x)),
        "data": "labelled test split" if labels is not None else "N(0,1) random inputs",
    }
    for prec, path in files.items():
        if labels is None and "max_accuracy_drop" in PRECISIONS[prec].tolerance():
            results[prec] = {
                "status": Status.UNCHECKED,
                "reason": "int8 is judged on labelled data (top-1 agreement and "
                "accuracy drop): run nfdeploy parity with --dataset",
            }
            log(f"  {prec}: unchecked (no labelled data here)")
            continue
        backend = OrtBackend(BackendSpec("onnxruntime", "cpu", prec), tuple(x.shape[1:]), path)
        try:
            with backend:
                out = run_batched(backend, x)
        except BackendUnavailable as e:
            results[prec] = {"status": Status.UNCHECKED, "reason": str(e)}
            log(f"  {prec}: unchecked ({e})")
            continue
        except BackendBroken as e:  # the file just written does not load: nothing is kept
            raise ExportError(f"{Path(path).name} was written but does not load in ONNX Runtime: {e}") from None
        row = {"backend": backend.describe(), **judge(out, ref, prec, labels)}
        results[prec] = row
        log(
            f"  {prec}: rel L2 {row['rel_l2']:.2e}, SQNR {row['sqnr_db'] or float('inf'):.1f} dB, max abs "
            f"{row['max_abs']:.2e}, top-1 agreement {row['top1_agreement']:.2%} "
            f"({describe_tolerance(row['tolerance'])}) "
            f"→ {row['status']}"
        )
    return results


def _check_image_input(
    staged: _Staged, subject: ModelToExport, opts: ExportOptions, log: Callable[[str], None]
) -> dict[str, Any]:
    """The image-input graph in ONNX Runtime CPU, fed uint8 pixels, against the float64 unfolded model fed the
    same pixels through the Python preprocessing; judged as fp32 (the precision table)."""
    pixels, labels = _check_pixels(subject, opts)
    x = subject.preprocessing.normalize(pixels).numpy()
    with torch.no_grad():
        ref = torch.cat([subject.model(torch.from_numpy(x[i : i + 64]).double()) for i in range(0, len(x), 64)])
    spec = BackendSpec("onnxruntime", "cpu", "fp32", "uint8")
    backend = OrtBackend(spec, subject.input_shape, staged.dir / staged.image_input["file"], pixels=True)
    try:
        with backend:
            out = run_batched(backend, pixels)
    except BackendBroken as e:
        raise ExportError(f"{IMAGE_INPUT_FILE} was written but does not load in ONNX Runtime: {e}") from None
    row = {"backend": backend.describe(), "samples": int(len(pixels)), **judge(out, ref.numpy(), "fp32", labels)}
    log(
        f"  image input: rel L2 {row['rel_l2']:.2e}, top-1 agreement {row['top1_agreement']:.2%} on {len(pixels)} "
        f"images through the recorded preprocessing ({describe_tolerance(row['tolerance'])}) → {row['status']}"
    )
    return row


def _check_pixels(subject: ModelToExport, opts: ExportOptions) -> tuple[np.ndarray, np.ndarray | None]:
    """The check's images as uint8 pixels with their labels, or (without them) up to 16 seeded random images."""
    if subject.check_pixels is not None:
        labels = subject.check_data[1] if subject.check_data is not None else None
        n = opts.check_samples
        return subject.check_pixels[:n], None if labels is None else labels[:n]
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (min(opts.check_samples, 16), *subject.input_shape), dtype=np.uint8), None


def _build_engines(
    staged: _Staged, input_shape: tuple[int, int, int], trt_opts: TrtBuildOptions, log: Callable[[str], None]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One strongly typed engine per ONNX variant that has an engine file (precision comes from the
    graph). A failed int8 build is recorded (the builder's errors) and the export goes on; a failed
    float build fails the export."""
    engines, failures = {}, {}
    for prec, onnx_path in staged.files.items():
        if PRECISIONS[prec].engine_file is None:
            continue
        path = staged.dir / PRECISIONS[prec].engine_file
        try:
            rec = build_engine(onnx_path, path, prec, input_shape, trt_opts)
        except EngineBuildError as e:
            listing = "; ".join(
                f"{x.get('node') or '?'} ({x.get('op') or '?'}): {x.get('message')}" for x in e.errors[:5]
            )
            if PRECISIONS[prec].quantized_from:
                failures[prec] = {"onnx": onnx_path.name, "error": str(e), "errors": e.errors[:20]}
                log(f"  engine {prec}: the builder refused {onnx_path.name}: {e}")
                continue
            raise ExportError(
                f"TensorRT build of {onnx_path.name} failed: {e}" + (f" [{listing}]" if listing else "")
            ) from None
        engines[prec] = {"file": path.name, **rec}
        where = rec.get("gpu") or f"no GPU, targets {','.join(rec.get('compute_capabilities') or [])}"
        log(
            f"  engine {prec}: {path.name} ({rec['flavour']} {rec['version']}), "
            f"{rec['network_layers']} network layers, "
            f"{rec['engine_bytes'] / 2**20:.1f} MiB, built in {rec['build_seconds']:.1f} s ({where})"
        )
    return engines, failures


def _tool_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"nfdeploy": nfdeploy.__version__, "python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("onnx", "onnxscript", "onnxruntime", "timm"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _write_manifest(staged: _Staged, subject: ModelToExport, opts: ExportOptions, started: float) -> Manifest:
    """The fold report, preprocessing.json and the manifest of everything staged, with each graph's sha256."""
    atomic_write_json(staged.dir / FOLD_REPORT, staged.fold_report.to_dict())
    pre = subject.preprocessing
    if pre is not None:
        atomic_write_json(staged.dir / PREPROCESSING_JSON, pre.to_dict())
    image = staged.image_input
    manifest = Manifest(
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        model=subject.name,
        norm=subject.norm,
        input=InputSpec(
            shape=["batch", *subject.input_shape],
            dtype="float32" if opts.io_dtype == "float32" else "per-precision",
            mean=list(pre.mean) if pre else None,
            std=list(pre.std) if pre else None,
            class_names=subject.class_names,
            dataset=subject.dataset,
            preprocessing=pre.to_dict() if pre else None,
        ),
        image_input=OnnxEntry.from_dict({**image, "sha256": sha256_file(staged.dir / image["file"])})
        if image
        else None,
        source=subject.source,
        fold={"report": FOLD_REPORT, "totals": staged.fold_report.totals},
        onnx={p: OnnxEntry.from_dict({**e, "sha256": sha256_file(staged.files[p])}) for p, e in staged.onnx.items()},
        bn_twin=staged.bn_twin,
        engines={p: EngineEntry.from_dict(e) for p, e in staged.engines.items()},
        engine_failures=staged.engine_failures,
        checks=staged.checks,
        tools=_tool_versions(),
        export_seconds=time.perf_counter() - started,
    )
    manifest.write(staged.dir)
    return manifest


def _refuse_failed_checks(checks: dict[str, Any], out_dir: Path) -> None:
    failed = [p for p, r in checks.items() if isinstance(r, dict) and r.get("status") == Status.FAIL]
    if failed:
        nums = "; ".join(f"{p}: {checks[p]['reason']}" for p in failed)
        raise ExportError(f"parity check failed, nothing written to {out_dir}: {nums}")


# The ops of the image-input graph: the folded graph's, and the normalization in front of it (Cast, Sub, Div).
IMAGE_INPUT_OPS = NF_ALLOWED_OPS | {"Cast", "Sub", "Div"}


def _swap_into_place(staging: Path, out_dir: Path) -> None:
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        old.rmdir()
        out_dir.rename(old)
    try:
        staging.rename(out_dir)
    except OSError:
        if old is not None:
            old.rename(out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _run_dataset(resolved: dict[str, Any]) -> Any:
    from nfdeploy.config import recipe_from_resolved

    return recipe_from_resolved(resolved["recipe"]).data.load()


def _dataset_check_data(data: Any, samples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first `samples` images of the run's test split: normalised, with labels, and as uint8 pixels."""
    idx = torch.arange(min(samples, len(data.test)))
    x, y = data.batch(data.test, idx)
    return x.numpy(), y.numpy(), data.test.images[idx].numpy()


def export_run(
    run_dir: str | Path, out_dir: str | Path, opts: ExportOptions | None = None, log: Callable[[str], None] = print
) -> ExportResult:
    """Export a training run dir (weights.safetensors + config.json)."""
    from nfdeploy.models import NFResNet, twin_name

    opts = opts or ExportOptions()
    run_dir = Path(run_dir)
    model, resolved = load_run_model(run_dir)
    model = model.double().eval()
    cfg = model.cfg
    size = opts.input_size or cfg.input_size
    needs_data = opts.check or any(PRECISIONS[p].quantized_from for p in opts.precisions)
    data = _run_dataset(resolved) if needs_data else None
    desc = resolved.get("dataset", {})
    name = resolved["recipe"]["model"]["name"]

    def twin():
        return fold_model(NFResNet(cfg.twin()).eval())

    log(f"exporting {name} from {run_dir} → {out_dir}")
    checked = _dataset_check_data(data, opts.check_samples) if opts.check else None
    subject = ModelToExport(
        model,
        fold=lambda dtype: fold_model(model, dtype=dtype),
        name=name,
        input_shape=(cfg.in_chans, size, size),
        norm=cfg.norm,
        # The relative path lets a copied pair of run and export dirs (another machine) find each other.
        source=ModelSource(
            kind="run",
            run_dir=str(run_dir.resolve()),
            run_dir_relative=os.path.relpath(run_dir.resolve(), Path(out_dir).resolve()),
            weights=WEIGHTS,
            weights_sha256=sha256_file(run_dir / WEIGHTS),
            model_config=asdict(cfg),
            twin=twin_name(name) if name[:3] in ("nf_", "bn_") else None,
        ),
        preprocessing=_run_preprocessing(desc, cfg.in_chans, size),
        class_names=desc.get("class_names"),
        dataset=desc.get("name"),
        check_data=checked[:2] if checked else None,
        check_pixels=checked[2] if checked else None,
        twin=twin if cfg.norm == "nf" else None,
        calibration_data=lambda c: training_split_calibration(data, c.samples, c.seed),
    )
    return export_model(subject, out_dir, opts, log)


def _run_preprocessing(desc: dict[str, Any], channels: int, size: int) -> Preprocessing | None:
    """The preprocessing of a run's data (its recorded mean and std), at the export's input size; None for a run
    that recorded none."""
    if not desc.get("mean") or not desc.get("std"):
        return None
    return square_preprocessing(channels, size, desc["mean"], desc["std"])


def timm_preprocessing(cfg: dict[str, Any], shape: tuple[int, int, int]) -> Preprocessing | None:
    """timm's eval transform as nfdeploy's preprocessing (its pretrained_cfg: mean, std, interpolation, crop_pct:
    the shorter side goes to floor(size / crop_pct), then the centre crop); None without mean and std."""
    c, h, _ = shape
    if not cfg.get("mean") or not cfg.get("std"):
        return None
    interpolation = cfg.get("interpolation") if cfg.get("interpolation") in ("bilinear", "bicubic") else "bilinear"
    resize = int(h / float(cfg.get("crop_pct") or 1.0))
    color = {1: "L", 3: "RGB"}.get(c)
    return Preprocessing(color, h, resize, tuple(cfg["mean"]), tuple(cfg["std"]), interpolation)


def export_timm(
    name: str,
    out_dir: str | Path,
    checkpoint: str | Path | None = None,
    opts: ExportOptions | None = None,
    log: Callable[[str], None] = print,
) -> ExportResult:
    """Fold and export one of timm's NormFreeNet models (random init unless a checkpoint is given)."""
    from nfdeploy.interop.timm import create_timm_model, fold_timm_model, timm_input_size

    opts = opts or ExportOptions()
    try:
        model = create_timm_model(name, checkpoint)
    except ValueError as e:
        raise ExportError(str(e)) from None
    model = model.double().eval()
    c, h, w = timm_input_size(model)
    if opts.input_size:
        h = w = opts.input_size
    prep = timm_preprocessing(getattr(model, "pretrained_cfg", {}) or {}, (c, h, w))
    log(f"exporting timm {name} ({'checkpoint ' + str(checkpoint) if checkpoint else 'random init'}) → {out_dir}")

    def calibration(copts: CalibrationOptions) -> CalibrationData:
        if not copts.calib_dir:
            raise ExportError(f"int8 export of timm {name} needs calibration images: give --calib-dir")
        if prep is None:
            raise ExportError(f"timm {name} records no mean/std: its calibration images cannot be normalised")
        return folder_calibration(copts.calib_dir, prep, copts.samples, copts.seed)

    subject = ModelToExport(
        model,
        fold=lambda dtype: fold_timm_model(model, input_size=(h, w), dtype=dtype),
        name=name,
        input_shape=(c, h, w),
        norm="nf",
        source=ModelSource(
            kind="timm",
            timm_model=name,
            checkpoint=str(checkpoint) if checkpoint else None,
            weights_sha256=sha256_file(checkpoint) if checkpoint else None,
        ),
        preprocessing=prep,
        dataset="imagenet",
        calibration_data=calibration,
    )
    return export_model(subject, out_dir, opts, log)


__all__ = ["ExportError", "ExportOptions", "ExportResult", "ModelToExport", "export_model", "export_run", "export_timm"]
