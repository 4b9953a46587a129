"""INT8 with explicit Q/DQ: calibrate the folded fp32 graph, write one Q/DQ graph per runtime, lint it.

The Q/DQ graph is made with ONNX Runtime's `onnxruntime.quantization.quantize_static` (QDQ format),
chosen over NVIDIA ModelOpt because it is already a dependency, calibrates on the CPU with ONNX
Runtime itself, and exposes exactly the knobs the two forms need (op types, output quantization per op
type, symmetric activations, bias quantization, excluded nodes). Weights are always symmetric int8 per
output channel: every NF scalar is static after folding, so the per-channel scale absorbs it exactly.
Activations are per tensor. The two forms (see nfdeploy.precision):

- "int8" (TensorRT, S8S8): symmetric int8 activations; Q/DQ only on the inputs of Conv/Gemm and of
  the residual Adds (one dedicated pair per consumer), no output quantization, float bias. This is the
  placement TensorRT's strongly typed builder fuses (DQ→Conv, and a residual DQ into the Conv+Add).
- "int8-ort" (ONNX Runtime CPU, U8S8): asymmetric uint8 activations, ORT's own placement: every op its
  CPU EP has a QLinear kernel for gets its DQ inputs and Q output (a node unit), int32 bias. With
  VNNI, U8S8 kernels are the fast ones on x86.

Calibration images come from the training split of the run (never its test split), or from a folder
the user names (timm models). Mixed mode: `keep` names ONNX nodes or tensors that stay in float.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nfdeploy.errors import UserError, require
from nfdeploy.export.onnx_graph import OUTPUT_NAME, block_values, run_with_values
from nfdeploy.preprocess import Preprocessing

# ONNX Runtime's quantizer advises quant_pre_process (shape inference + graph optimisation) first. Measured on
# nf_resnet50 (bench/int8_speed.py, results int8-speed-cpu-2026-12-01): the same optimized graph, the same logits
# SQNR, latency int8-ort / pre-processed 1.000 [0.998, 1.006] at batch 1 and 0.996 [0.990, 1.010] at batch 32.
PRE_PROCESS_CHOICE = (
    "quant_pre_process not applied: on nf_resnet50 it changed neither what ONNX Runtime fuses, "
    "nor accuracy, nor speed (bench/int8_speed.py)"
)
CALIBRATION_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
# onnxruntime 1.32's quantize_static builds its entropy calibrator with num_bins = num_quantized_bins = 128
# and passes no way to change them, so the KL search has one candidate, the full range: "entropy" gives
# the min-max ranges (measured: identical SQNR on digits). Recorded in the manifest rather than hidden.
ENTROPY_NOTE = (
    "onnxruntime.quantization's entropy calibrator runs with num_bins = num_quantized_bins = 128 "
    "(not settable through quantize_static): its threshold search has one candidate, the full range, "
    "so the scales equal min-max"
)
CALIBRATION_BATCH = 32
# The ops whose inputs each form quantizes, and the ops a runtime fuses a DequantizeLinear into.
TRT_QUANTIZED_OPS = ("Conv", "Gemm", "Add")
# TensorRT moves a DQ across pooling (int8 pooling): a DQ shared by a Conv and the transition's
# average-pool shortcut is fused on both paths.
FUSED_CONSUMERS = {
    "int8": {"Conv", "Gemm", "Add", "AveragePool", "MaxPool"},
    # ORT CPU: QLinearConv/QGemm/QLinearAdd, QLinearAveragePool/GlobalAveragePool, Q/DQ around
    # Relu and MaxPool are removed (Relu by the output range, MaxPool commutes with Q).
    "int8-ort": {
        "Conv",
        "Gemm",
        "Add",
        "Relu",
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "ReduceMean",
        "Reshape",
        "Flatten",
        "Sigmoid",
        "Mul",
        "MatMul",
    },
}
INT8_FORMS = ("int8", "int8-ort")


class QuantizeError(UserError, ValueError):
    """Bad int8 options or calibration data; one line."""


@dataclass(frozen=True)
class CalibrationOptions:
    method: str = "minmax"  # minmax | percentile | entropy
    samples: int = 512
    seed: int = 0
    keep: tuple[str, ...] = ()  # ONNX node or tensor names (fnmatch patterns) kept in float: mixed mode
    calib_dir: str | None = None  # images for models without a training split (timm)
    ort_weight_bits: int = 7  # the int8-ort form's weight range: 7 runs right on every x86 CPU, 8 needs VNNI/AMX

    def __post_init__(self) -> None:
        if self.ort_weight_bits not in (7, 8):
            raise QuantizeError(f"int8-ort weight bits must be 7 or 8, got {self.ort_weight_bits}")
        if self.method not in CALIBRATION_METHODS:
            raise QuantizeError(
                f"unknown calibration method {self.method!r}; choose from {', '.join(CALIBRATION_METHODS)}"
            )
        if int(self.samples) < 1:
            raise QuantizeError(f"calibration samples must be positive, got {self.samples}")
        object.__setattr__(self, "keep", tuple(self.keep))


@dataclass
class CalibrationData:
    """Normalised float32 images and where they came from (`split` is "train" or "folder")."""

    images: np.ndarray
    source: str
    split: str
    indices: np.ndarray | None = None  # into the training split
    files: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "split": self.split,
            "samples": int(len(self.images)),
            **({"files": self.files[:8] + (["..."] if len(self.files) > 8 else [])} if self.files else {}),
        }


def pick_indices(n_available: int, samples: int, seed: int) -> np.ndarray:
    """`samples` distinct indices out of `n_available`, a seeded random choice (sorted)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(n_available)[: min(samples, n_available)])


def training_split_calibration(data: Any, samples: int, seed: int) -> CalibrationData:
    """Calibration images from `data.train` (an nfdeploy ImageDataset), never from its test split."""
    import torch

    idx = pick_indices(len(data.train), samples, seed)
    x, _ = data.batch(data.train, torch.from_numpy(idx))
    return CalibrationData(x.numpy(), f"{data.name} training split", "train", idx)


def folder_calibration(path: str | Path, prep: Preprocessing, samples: int, seed: int) -> CalibrationData:
    """Calibration images from a folder (recursive), through the model's own preprocessing (nfdeploy.preprocess)."""
    from nfdeploy.data import image_folder_files

    files = image_folder_files(path)
    idx = pick_indices(len(files), samples, seed)
    pixels = np.stack([prep.read(files[i]) for i in idx])
    return CalibrationData(
        prep.normalize(pixels).numpy(), f"image folder {path}", "folder", files=[str(files[i]) for i in idx]
    )


def calibration_reader(images: np.ndarray, input_name: str):
    """onnxruntime.quantization's CalibrationDataReader over `images` (fed to `input_name`), in equal batches."""
    ortq = require("onnxruntime.quantization", "onnx")

    # Equal batches: onnxruntime's histogram collector (percentile, entropy) stacks each tensor's batches with
    # np.asarray and fails on a shorter last batch (e.g. 56 images as 32 + 24). The largest divisor of the
    # image count up to CALIBRATION_BATCH (the ranges do not depend on the batching).
    size = max(d for d in range(1, min(CALIBRATION_BATCH, max(len(images), 1)) + 1) if len(images) % d == 0)

    class ArrayReader(ortq.CalibrationDataReader):
        """Feeds the calibration images in equal batches of at most CALIBRATION_BATCH."""

        def __init__(self) -> None:
            self.pos = 0

        def get_next(self):
            if self.pos >= len(images):
                return None
            batch = images[self.pos : self.pos + size]
            self.pos += size
            return {input_name: np.ascontiguousarray(batch, dtype=np.float32)}

        def rewind(self) -> None:
            self.pos = 0

    return ArrayReader()


def resolve_keep(model, patterns: tuple[str, ...]) -> list[str]:
    """Node names matching `patterns` by node name or by output tensor name; a pattern that matches
    nothing is an error (a typo must not silently quantize everything)."""
    names = []
    for pat in patterns:
        hit = [
            n.name
            for n in model.graph.node
            if fnmatch.fnmatchcase(n.name, pat) or any(fnmatch.fnmatchcase(o, pat) for o in n.output)
        ]
        if not hit:
            raise QuantizeError(f"--int8-keep {pat!r} matches no node or tensor of the fp32 graph")
        names += hit
    return list(dict.fromkeys(names))


def quantize_graph(
    fp32_path: str | Path, out_path: str | Path, form: str, calib: CalibrationData, opts: CalibrationOptions
) -> dict[str, Any]:
    """Calibrate `fp32_path` on `calib` and write the Q/DQ graph of `form` to `out_path`. Returns the
    manifest record (method, samples, seed, source, kept nodes, timings)."""
    if form not in INT8_FORMS:
        raise QuantizeError(f"unknown int8 form {form!r}; known: {', '.join(INT8_FORMS)}")
    onnx = require("onnx", "onnx")
    ortq = require("onnxruntime.quantization", "onnx")
    model = onnx.load(str(fp32_path))
    exclude = resolve_keep(model, opts.keep)
    trt = form == "int8"
    extra = {"ActivationSymmetric": trt, "WeightSymmetric": True, "QuantizeBias": not trt}
    if trt:
        extra.update(OpTypesToExcludeOutputQuantization=list(TRT_QUANTIZED_OPS), DedicatedQDQPair=True)
    if opts.method == "percentile":
        extra["CalibPercentile"] = 99.999
    # The ORT form's U8S8 convolutions run, on x86 CPUs without VNNI (AVX2, AVX-512F), through an instruction that
    # adds pairs of u8 x s8 products in int16 and saturates; 7-bit weights (reduce_range) keep every pair in range.
    # Measured on an AVX2-only CPU (digits, nf_resnet_c8): 8.7 dB SQNR and 79% top-1 agreement with 8-bit weights,
    # 29.1 dB and 97% with 7-bit ones. On a VNNI CPU 7 bits only cost resolution (nf_resnet50: 26.2 dB with 8-bit
    # weights, 21.1 dB with 7; bench/int8_weight_bits.py). The graph does not know which CPU it will meet, so 7 is
    # the default and 8 is the user's choice for VNNI/AMX targets.
    reduce_range = not trt and opts.ort_weight_bits == 7
    t0 = time.perf_counter()
    with (
        quantizer_messages() as messages
    ):  # ORT logs advice through the root logger: into the manifest, not the terminal
        ortq.quantize_static(  # calibrates in its own temporary directory (augmented model included)
            str(fp32_path),
            str(out_path),
            calibration_reader(calib.images, model.graph.input[0].name),
            quant_format=ortq.QuantFormat.QDQ,
            per_channel=True,
            reduce_range=reduce_range,
            activation_type=ortq.QuantType.QInt8 if trt else ortq.QuantType.QUInt8,
            weight_type=ortq.QuantType.QInt8,
            op_types_to_quantize=list(TRT_QUANTIZED_OPS) if trt else None,
            nodes_to_exclude=exclude or None,
            calibrate_method=getattr(ortq.CalibrationMethod, CALIBRATION_METHODS[opts.method]),
            extra_options=extra,
        )
    dropped = drop_unfused_pairs(out_path, FUSED_CONSUMERS[form]) if trt else 0
    return {
        "form": form,
        "unfused_dq_inputs_rewired": dropped,
        "activations": "int8 symmetric" if trt else "uint8 asymmetric",
        "weights": "int8 symmetric, per output channel"
        + (
            ", 7-bit range (reduce_range: no int16 saturation on CPUs without VNNI)"
            if reduce_range
            else ", 8-bit range (saturates on CPUs without VNNI/AMX)"
            if not trt
            else ""
        ),
        "calibration": {
            "method": opts.method,
            "samples": int(len(calib.images)),
            "seed": opts.seed,
            **calib.describe(),
            **({"percentile": extra["CalibPercentile"]} if "CalibPercentile" in extra else {}),
            **({"note": ENTROPY_NOTE} if opts.method == "entropy" else {}),
        },
        "kept_in_float": exclude,
        "quantize_seconds": time.perf_counter() - t0,
        "quantizer_messages": messages,  # its advice, kept out of the user's terminal
        "pre_process": PRE_PROCESS_CHOICE,
        "library": "onnxruntime.quantization.quantize_static (QDQ)",
    }


@contextlib.contextmanager
def quantizer_messages():
    """Collect what onnxruntime.quantization logs at WARNING and above through the root logger (advice such as
    "consider pre-processing before quantization") instead of letting it reach the user's terminal."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(" ".join(record.getMessage().split()))

    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = [Collect(logging.WARNING)]
    try:
        yield messages
    finally:
        root.handlers = saved


def drop_unfused_pairs(path: str | Path, fused: set[str]) -> int:
    """Remove the activation Q/DQ pairs ORT gives consumers no runtime fuses them into (with dedicated
    pairs, a residual-stream tensor quantized for the next block's Add also gets a pair on its Relu):
    such a consumer reads the float tensor again. Returns the number of rewired inputs."""
    onnx = require("onnx", "onnx")
    model = onnx.load(str(path))
    g = model.graph
    inits = {i.name for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    rewired, drop = 0, []
    for dq in g.node:
        q = producer.get(dq.input[0]) if dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or q.input[0] in inits:
            continue
        users = consumers.get(dq.output[0], [])
        for u in users:
            if u.op_type in fused:
                continue
            for k, name in enumerate(u.input):
                if name == dq.output[0]:
                    u.input[k] = q.input[0]  # read the float tensor again
                    rewired += 1
        if users and all(u.op_type not in fused for u in users):
            drop.append(dq)
            if len(consumers.get(q.output[0], [])) == 1:
                drop.append(q)
    for n in drop:
        g.node.remove(n)
    if rewired:
        onnx.save_model(model, str(path))
    return rewired


# The op ONNX Runtime's CPU EP runs in place of a float op whose Q/DQ neighbours it fuses (its QDQ transformers).
ORT_FUSED_OPS = {
    "Conv": "QLinearConv",
    "Add": "QLinearAdd",
    "AveragePool": "QLinearAveragePool",
    "GlobalAveragePool": "QLinearGlobalAveragePool",
    "Gemm": "QGemm",
    "MatMul": "QLinearMatMul",
}


def ort_fusion(path: str | Path) -> dict[str, Any]:
    """What ONNX Runtime's CPU EP actually runs of a Q/DQ graph, not what the written graph intends: the graph
    after its extended optimizations (where the QDQ fusions happen), saved through optimized_model_filepath.
    {"ops": {float op: {"written", "fused" (its QLinear form), "left_in_float"}}, "dequantize_left",
    "quantize_left", "dequantize_left_feeds" ({op type: nodes fed by a DequantizeLinear left in place}),
    "optimized_ops"}."""
    ort = require("onnxruntime", "onnx")
    onnx = require("onnx", "onnx")
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        # Extended, not all: the NCHWc layout pass of level 3 writes a CPU-specific graph and adds nothing here.
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        graph = onnx.load(opts.optimized_model_filepath).graph
    optimized = Counter(n.op_type for n in graph.node)
    # what the DequantizeLinear nodes ORT left in place feed: the ops that still compute in float
    dq_outputs = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    float_consumers = Counter(n.op_type for n in graph.node if any(i in dq_outputs for i in n.input))
    graph_outputs = sum(o.name in dq_outputs for o in graph.output)
    written = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    ops = {
        op: {"written": written[op], "fused": optimized[q], "left_in_float": optimized[op]}
        for op, q in ORT_FUSED_OPS.items()
        if written[op]
    }
    return {
        "ops": ops,
        "dequantize_left": optimized["DequantizeLinear"],
        "quantize_left": optimized["QuantizeLinear"],
        "dequantize_left_feeds": dict(sorted(float_consumers.items()))
        | ({"graph output": graph_outputs} if graph_outputs else {}),
        "optimized_ops": dict(sorted(optimized.items())),
    }


def describe_fusion(fusion: dict[str, Any]) -> str:
    """'fused by ONNX Runtime: 10 of 10 Conv, 3 of 3 Add, ...; 2 DequantizeLinear left'."""
    parts = [f"{v['fused']} of {v['written']} {op}" for op, v in fusion["ops"].items()]
    feeds = fusion.get("dequantize_left_feeds") or {}
    return f"fused by ONNX Runtime: {', '.join(parts)}; {fusion['dequantize_left']} DequantizeLinear left" + (
        f" (feeding {', '.join(f'{n} {op}' for op, n in feeds.items())})" if feeds else ""
    )


def lint_int8(model, form: str, *, allow_batchnorm: bool = False) -> dict[str, Any]:
    """Check a Q/DQ graph: every DequantizeLinear feeds only ops `form`'s runtime fuses it into; every
    Conv/Gemm that is quantized has a per-output-channel symmetric int8 weight; activation scales are
    per tensor (symmetric int8 for the TensorRT form); no BatchNormalization (NF), no Mul by a constant
    (an unfolded NF scalar). Returns {"ok", "errors", "ops", "dq_consumers", "quantized", "float"}."""
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    errors: list[str] = []
    dq_consumers: Counter = Counter()
    allowed = FUSED_CONSUMERS[form]

    def arr(name: str):
        return numpy_helper.to_array(inits[name]) if name in inits else None

    weight_dq = set()  # DQ nodes whose input is an initializer: weights (and, in the ORT form, biases)
    for n in g.node:
        where = f"{n.name or '?'} ({n.op_type})"
        if n.op_type == "BatchNormalization" and not allow_batchnorm:
            errors.append(f"{where}: BatchNormalization in an NF graph")
        if n.op_type == "Mul" and any(i in inits or (i in producer and producer[i].name in weight_dq) for i in n.input):
            errors.append(f"{where}: Mul by a constant left in the graph (an unfolded scalar)")
        if n.op_type == "DequantizeLinear":
            if n.input[0] in inits:
                weight_dq.add(n.name)
            for c in consumers.get(n.output[0], []):
                dq_consumers[c.op_type] += 1
                if c.op_type not in allowed:
                    errors.append(f"{where}: feeds {c.name} ({c.op_type}), which {form}'s runtime does not fuse")
        if n.op_type == "QuantizeLinear":
            scale, zp = arr(n.input[1]), arr(n.input[2]) if len(n.input) > 2 else None
            if scale is not None and scale.size != 1:
                errors.append(f"{where}: activation scale is not per tensor ({scale.size} values)")
            if form == "int8" and zp is not None and (zp.dtype != np.int8 or np.any(zp != 0)):
                errors.append(f"{where}: activation zero point is not symmetric int8 ({zp.dtype}, {zp.ravel()[:1]})")
    quantized, kept = Counter(), Counter()
    for n in g.node:
        if n.op_type not in ("Conv", "Gemm"):
            continue
        where = f"{n.name or '?'} ({n.op_type})"
        w = producer.get(n.input[1])
        x = producer.get(n.input[0])
        if w is None or w.op_type != "DequantizeLinear":
            kept[n.op_type] += 1  # mixed mode: a node kept in float reads its float weight
            if n.input[1] not in inits:
                errors.append(f"{where}: float weight is not a plain initializer")
            continue
        quantized[n.op_type] += 1
        q, scale, zp = arr(w.input[0]), arr(w.input[1]), arr(w.input[2]) if len(w.input) > 2 else None
        if q is None or q.dtype != np.int8:
            errors.append(f"{where}: weight is not an int8 initializer")
        elif scale is None or scale.size != q.shape[0]:
            errors.append(
                f"{where}: weight scale is not per output channel ({None if scale is None else scale.size} "
                f"scales for {q.shape[0]} channels)"
            )
        if zp is not None and np.any(zp != 0):
            errors.append(f"{where}: weight zero point is not 0 (asymmetric weights)")
        if x is None or x.op_type != "DequantizeLinear":
            errors.append(f"{where}: quantized weight but float activation input")
    ops = Counter(n.op_type for n in g.node if n.op_type != "Constant")
    return {
        "ok": not errors,
        "errors": errors,
        "form": form,
        "nodes": sum(ops.values()),
        "ops": dict(sorted(ops.items())),
        "dq_consumers": dict(sorted(dq_consumers.items())),
        "quantized": dict(sorted(quantized.items())),
        "float": dict(sorted(kept.items())),
    }


# --------------------------------------------------------------------------------- per-block errors


def block_sqnr(fp32_path: str | Path, int8_path: str | Path, x: np.ndarray) -> list[dict[str, Any]]:
    """SQNR (dB) of each point's value (stem, every block, the pre-logits features: onnx_graph.block_values)
    in the int8 graph against the fp32 graph, and of the logits, both on ONNX Runtime CPU. The quantized
    graph keeps the float tensor names at every Q/DQ boundary, so the fp32 graph's names apply to both."""
    from nfdeploy.metrics import sqnr_db

    onnx = require("onnx", "onnx")
    points = block_values(onnx.load(str(fp32_path)))
    tensors = [p["value"] for p in points.values()]
    ref, ref_logits = run_with_values(fp32_path, tensors, x)
    out, out_logits = run_with_values(int8_path, tensors, x)
    names = [*points, "logits"]
    rows = []
    for name, t, r, o in zip(names, [*tensors, OUTPUT_NAME], [*ref, ref_logits], [*out, out_logits]):
        rows.append(
            {
                "block": name,
                "tensor": t,
                "sqnr_db": sqnr_db(r, o),
                "ref_rms": float(np.sqrt(np.mean(np.square(r, dtype=np.float64)))),
                "ref_absmax": float(np.abs(r).max()),
            }
        )
    return rows


__all__ = [
    "CALIBRATION_METHODS",
    "FUSED_CONSUMERS",
    "INT8_FORMS",
    "ORT_FUSED_OPS",
    "describe_fusion",
    "ort_fusion",
    "CalibrationData",
    "CalibrationOptions",
    "QuantizeError",
    "block_sqnr",
    "calibration_reader",
    "drop_unfused_pairs",
    "folder_calibration",
    "lint_int8",
    "pick_indices",
    "quantize_graph",
    "quantizer_messages",
    "resolve_keep",
    "training_split_calibration",
]
