"""The export manifest: what an export dir holds and where it came from, as one typed record.

    EXPORT_DIR/manifest.json      this record (format MANIFEST_FORMAT)
    EXPORT_DIR/fold_report.json   what folded into which op; what stayed explicit and why
    EXPORT_DIR/model*.onnx        one ONNX file per precision (OnnxEntry: file, sha256, opset, ...)
    EXPORT_DIR/*.engine           TensorRT engines (EngineEntry: file, engine_sha256, flavour, ...)
    EXPORT_DIR/preprocessing.json how an image file becomes the input (nfdeploy.preprocess; also input.preprocessing)
    EXPORT_DIR/model.uint8.onnx   the image-input graph, with --image-input (Manifest.image_input)

Export writes it; parity, bench, serve and the GPU suite read it through `Manifest.read`, never by
string key. Each entry keeps the keys this version does not name in `details` (build records, lint
results, timings), so reading and writing a manifest gives back the same JSON.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nfdeploy.artifacts.files import ArtifactError, atomic_write_json, read_json, sha256_file
from nfdeploy.preprocess import Preprocessing

MANIFEST = "manifest.json"
FOLD_REPORT = "fold_report.json"
MANIFEST_FORMAT = "nfdeploy-export-v1"


def _split(cls: type, d: dict[str, Any], where: str, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The constructor arguments of `cls` from `d`: its named fields, and the rest under `details`."""
    if not isinstance(d, dict):
        raise ArtifactError(f"{where}: expected an object, got {type(d).__name__}")
    missing = [k for k in required if k not in d]
    if missing:
        raise ArtifactError(f"{where}: missing {', '.join(missing)}")
    names = {f.name for f in dataclasses.fields(cls)} - {"details"}
    kwargs = {k: v for k, v in d.items() if k in names}
    kwargs["details"] = {k: v for k, v in d.items() if k not in names}
    return kwargs


def _join(obj: Any, order: tuple[str, ...] = (), omit_none: tuple[str, ...] = ()) -> dict[str, Any]:
    """The JSON object of an entry: its fields (those in `order` first; those in `omit_none` only when set),
    then its details."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if f.name != "details" and not (f.name in omit_none and getattr(obj, f.name) is None):
            out[f.name] = getattr(obj, f.name)
    out.update(obj.details)
    return {**{k: out[k] for k in order if k in out}, **{k: v for k, v in out.items() if k not in order}}


@dataclass
class InputSpec:
    """The model's input: name, shape ["batch", C, H, W], dtype, the classes its outputs name, and how an image
    becomes it (`preprocessing`, Preprocessing.to_dict(); mean and std stand beside it for older readers)."""

    shape: list[Any]
    name: str = "input"
    dtype: str = "float32"
    mean: list[float] | None = None
    std: list[float] | None = None
    class_names: list[str] | None = None
    dataset: str | None = None
    preprocessing: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def image_preprocessing(self) -> Preprocessing | None:
        """The recorded preprocessing, or None for an export made before nfdeploy recorded it."""
        return Preprocessing.from_dict(self.preprocessing) if self.preprocessing else None

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "input") -> InputSpec:
        return cls(**_split(cls, d, where, ("shape",)))

    @property
    def chw(self) -> tuple[int, int, int]:
        c, h, w = (int(d) for d in self.shape[1:])
        return c, h, w


@dataclass
class ModelSource:
    """What the export was made from: a training run (kind "run") or a timm model (kind "timm")."""

    kind: str
    weights_sha256: str | None = None
    weights: str | None = None  # the weights file in the run dir
    run_dir: str | None = None
    run_dir_relative: str | None = None  # from the export dir: a copied pair of dirs still finds its run
    model_config: dict[str, Any] | None = None
    twin: str | None = None
    timm_model: str | None = None
    checkpoint: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "source") -> ModelSource:
        return cls(**_split(cls, d, where, ("kind",)))

    def to_dict(self) -> dict[str, Any]:
        # Only the keys of its kind: a run source has no timm_model, a timm source no run_dir.
        keys = {
            "run": ("kind", "run_dir", "run_dir_relative", "weights", "weights_sha256", "model_config", "twin"),
            "timm": ("kind", "timm_model", "checkpoint", "weights_sha256"),
        }.get(self.kind)
        full = _join(self)
        if keys is None:
            return full
        return {**{k: full[k] for k in keys}, **self.details}


@dataclass
class OnnxEntry:
    """One ONNX file of the export."""

    file: str
    sha256: str
    opset: int | None = None
    io_dtype: str = "float32"
    nodes: int | None = None
    ops: dict[str, int] = field(default_factory=dict)
    quantized_from: str | None = None  # int8 forms: the float graph they were made from
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "onnx entry") -> OnnxEntry:
        return cls(**_split(cls, d, where, ("file", "sha256")))

    def to_dict(self) -> dict[str, Any]:
        return _join(self, ("file", "opset", "io_dtype"), omit_none=("quantized_from",))


@dataclass
class EngineEntry:
    """One TensorRT engine of the export: what other modules read of its build record (the rest of the
    record, export.engine_build.build_engine's, stays in `details`; to_dict() is the whole record)."""

    file: str
    engine_sha256: str
    onnx: str | None = None  # the ONNX file it was built from
    precision: str | None = None
    flavour: str | None = None  # "tensorrt" or "tensorrt-rtx"
    version: str | None = None
    profiles: list[dict[str, Any]] | None = None  # optimization profiles: {"min", "opt", "max"} input shapes
    compute_capabilities: list[str] | None = None  # TensorRT-RTX: the target GPUs it was built for
    gpu: dict[str, Any] | None = None  # TensorRT: the GPU it was built on (name, compute_capability)
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "engine entry") -> EngineEntry:
        return cls(**_split(cls, d, where, ("file", "engine_sha256")))

    def to_dict(self) -> dict[str, Any]:
        optional = ("onnx", "precision", "flavour", "version", "profiles", "compute_capabilities", "gpu")
        return _join(self, ("file",), omit_none=optional)


@dataclass
class Manifest:
    """manifest.json of one export dir."""

    model: str
    norm: str
    input: InputSpec
    source: ModelSource
    onnx: dict[str, OnnxEntry]
    engines: dict[str, EngineEntry] = field(default_factory=dict)
    image_input: OnnxEntry | None = None  # the uint8 image-input graph (details: how it normalizes)
    output_name: str = "logits"
    fold: dict[str, Any] = field(default_factory=dict)
    bn_twin: dict[str, Any] | None = None
    engine_failures: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=dict)
    export_seconds: float | None = None
    created: str | None = None
    format: str = MANIFEST_FORMAT
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = MANIFEST) -> Manifest:
        kw = _split(cls, d, where, ("model", "input", "source", "onnx"))
        if kw.get("format", MANIFEST_FORMAT) != MANIFEST_FORMAT:
            raise ArtifactError(f"{where}: format {kw['format']!r}, this nfdeploy reads {MANIFEST_FORMAT}")
        output = kw["details"].pop("output", {}) or {}
        return cls(
            **{k: v for k, v in kw.items() if k not in ("input", "source", "onnx", "engines", "image_input")},
            input=InputSpec.from_dict(kw["input"], f"{where} input"),
            source=ModelSource.from_dict(kw["source"], f"{where} source"),
            onnx={p: OnnxEntry.from_dict(e, f"{where} onnx.{p}") for p, e in (kw["onnx"] or {}).items()},
            engines={p: EngineEntry.from_dict(e, f"{where} engines.{p}") for p, e in (kw.get("engines") or {}).items()},
            output_name=output.get("name", "logits"),
            image_input=OnnxEntry.from_dict(kw["image_input"], f"{where} image_input")
            if kw.get("image_input")
            else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "created": self.created,
            "model": self.model,
            "norm": self.norm,
            "input": _join(self.input, ("name", "shape", "dtype"), omit_none=("preprocessing",)),
            "output": {"name": self.output_name},
            "source": self.source.to_dict(),
            "fold": self.fold,
            "onnx": {p: e.to_dict() for p, e in self.onnx.items()},
            "bn_twin": self.bn_twin,
            "engines": {p: e.to_dict() for p, e in self.engines.items()},
            "engine_failures": self.engine_failures,
            "checks": self.checks,
            "tools": self.tools,
            "export_seconds": self.export_seconds,
            **({"image_input": self.image_input.to_dict()} if self.image_input else {}),
            **self.details,
        }

    @classmethod
    def read(cls, export_dir: str | Path, *, verify_files: bool = True) -> Manifest:
        """manifest.json of `export_dir`; with verify_files, every ONNX file and engine is checked against its
        recorded sha256 (False: read it only; each backend verifies its own file when it loads it, so one
        damaged file fails its backend, not the whole export)."""
        export_dir = Path(export_dir)
        manifest = cls.from_dict(read_json(export_dir / MANIFEST, "export manifest"), str(export_dir / MANIFEST))
        if verify_files:
            manifest.verify_files(export_dir)
        return manifest

    def write(self, export_dir: str | Path) -> Path:
        path = Path(export_dir) / MANIFEST
        atomic_write_json(path, self.to_dict())
        return path

    def artifact_sha256s(self) -> dict[str, str]:
        """{file name: sha256} of every ONNX file and engine the manifest lists."""
        files = {e.file: e.sha256 for e in self.onnx.values()} | {
            e.file: e.engine_sha256 for e in self.engines.values()
        }
        return files | ({self.image_input.file: self.image_input.sha256} if self.image_input else {})

    def verify_files(self, export_dir: str | Path) -> None:
        """Raise ArtifactError when a listed file is missing or differs from its recorded sha256."""
        remedies = {name: "re-export it" for name in self.artifact_sha256s()} | {
            e.file: "rebuild it" for e in self.engines.values()
        }
        for name, digest in self.artifact_sha256s().items():
            path = Path(export_dir) / name
            if not path.is_file():
                raise ArtifactError(f"{path} listed in the manifest is missing")
            if sha256_file(path) != digest:
                raise ArtifactError(f"{path} does not match its manifest (sha256 differs): {remedies[name]}")

    def identity(self) -> dict[str, Any]:
        """What makes two exports the same model: its name and the digests of its weights and files."""
        return {
            "model": self.model,
            "weights_sha256": self.source.weights_sha256,
            "onnx_sha256": {p: e.sha256 for p, e in self.onnx.items()},
            "engine_sha256": {p: e.engine_sha256 for p, e in self.engines.items()},
        }

    @property
    def num_classes(self) -> int | None:
        """The classifier's width when the manifest records it (a run's model config, or its class names)."""
        classes = (self.source.model_config or {}).get("num_classes")
        if classes is None and self.input.class_names:
            classes = len(self.input.class_names)
        return classes


__all__ = [
    "FOLD_REPORT",
    "MANIFEST",
    "MANIFEST_FORMAT",
    "EngineEntry",
    "InputSpec",
    "Manifest",
    "ModelSource",
    "OnnxEntry",
]
