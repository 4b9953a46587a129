"""`nfdeploy predict`: image files → the export's recorded preprocessing (nfdeploy.preprocess) → a backend that
passed parity (the same choice as `serve`) → each image's top classes with their probabilities. A file that cannot
be read gets its own one-line error; the others are still answered.

    probabilities = softmax(logits) in float64; the top `k` (class name, probability), most probable first
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nfdeploy.artifacts import Manifest
from nfdeploy.check.backends import REFERENCE, export_backend, export_backends, manifest_source
from nfdeploy.errors import UserError
from nfdeploy.preprocess import ImageReadError, Preprocessing
from nfdeploy.runtime.base import Backend, run_batched
from nfdeploy.serve.choice import choose_backend, parity_verdict
from nfdeploy.status import Status


class PredictError(UserError, ValueError):
    """An export or a backend predict cannot use; one line."""


@dataclass(frozen=True)
class PredictOptions:
    """`backend`: the backend's name (None: the fastest that passed parity, as `serve` chooses); `top`: classes
    shown per image; `batch`: images run together; `allow_unchecked`: use a backend whose parity verdict is not
    pass; `threads`: its CPU threads (None: the runtime's default)."""

    backend: str | None = None
    top: int = 5
    batch: int = 32
    allow_unchecked: bool = False
    threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("top", "batch", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise PredictError(f"{name} must be at least 1, got {value}")


@dataclass
class Prediction:
    """One image: its top classes (name, probability), or why it could not be read."""

    path: str
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "top": [{"class": c, "probability": p} for c, p in self.top]}


@dataclass
class PredictResult:
    backend: str
    chosen: str  # why this backend
    verdict: Status  # its parity verdict
    predictions: list[Prediction]

    @property
    def failed(self) -> list[Prediction]:
        return [p for p in self.predictions if p.error is not None]


def top_classes(logits: np.ndarray, names: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
    """Per row of `logits`: the k most probable classes (softmax in float64) with their probabilities."""
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    order = np.argsort(-p, axis=1, kind="stable")[:, :k]
    return [[(names[j], float(p[i, j])) for j in row] for i, row in enumerate(order)]


def predict_backend(
    export_dir: Path, options: PredictOptions, log: Callable[[str], None]
) -> tuple[Backend, str, Status]:
    """The backend to predict with, why, and its parity verdict: the named one, or serve's choice; refuses one
    that failed parity unless allow_unchecked (an unchecked one is used with a warning)."""
    if options.backend:
        name, why = options.backend, "named by --backend"
    else:
        choice = choose_backend(export_dir, export_backends(manifest_source(export_dir), compile=False), options.batch)
        name, why = choice.name, choice.reason
    if name == REFERENCE:
        raise PredictError(f"{REFERENCE} is parity's reference, not a deployed backend")
    verdict = parity_verdict(export_dir, name)
    if verdict is Status.UNCHECKED:
        log(f"warning: no parity verdict for {name} (run `nfdeploy parity {export_dir}`)")
    elif verdict is not Status.PASS and not options.allow_unchecked:
        raise PredictError(f"{name}: its parity verdict is {verdict.value}; --allow-unchecked uses it anyway")
    backend = export_backend(export_dir, name, threads=options.threads)
    reason = backend.unavailable_reason()
    if reason:
        raise PredictError(f"{name} cannot run here: {reason}")
    return backend, why, verdict


def read_batch(prep: Preprocessing, paths: Sequence[Path]) -> tuple[list[Prediction], list[np.ndarray]]:
    """Each path's pixels, or its Prediction carrying the one-line error (in order; errors have no pixels)."""
    slots, pixels = [], []
    for path in paths:
        try:
            pixels.append(prep.read(path))
            slots.append(Prediction(str(path)))
        except ImageReadError as e:
            slots.append(Prediction(str(path), error=str(e)))
    return slots, pixels


def predict_images(
    export_dir: str | Path,
    images: Sequence[str | Path],
    options: PredictOptions | None = None,
    *,
    progress: Callable[[int], None] | None = None,
    log: Callable[[str], None] = print,
) -> PredictResult:
    """The top classes of every image through the export's recorded preprocessing and a checked backend, in
    batches; `progress(n)` is told each time n more images are done."""
    options = options or PredictOptions()
    export_dir = Path(export_dir)
    manifest = Manifest.read(export_dir, verify_files=False)
    prep = manifest.input.image_preprocessing
    if prep is None or prep.color is None:
        raise PredictError(f"{export_dir} records no image preprocessing (an export of an older nfdeploy, or of "
                           "data that is not images): export it again")  # fmt: skip
    names = manifest.input.class_names or [str(i) for i in range(manifest.num_classes or 0)]
    backend, why, verdict = predict_backend(export_dir, options, log)
    predictions: list[Prediction] = []
    with backend:
        for start in range(0, len(images), options.batch):
            chunk = [Path(p) for p in images[start : start + options.batch]]
            slots, pixels = read_batch(prep, chunk)
            if pixels:
                batch = np.stack(pixels)
                logits = run_batched(backend, batch if backend.takes_pixels else prep.normalize(batch).numpy())
                labels = names if len(names) == logits.shape[1] else [str(i) for i in range(logits.shape[1])]
                tops = iter(top_classes(logits, labels, options.top))
                for slot in slots:
                    slot.top = next(tops) if slot.error is None else []
            predictions += slots
            if progress is not None:
                progress(len(chunk))
    return PredictResult(backend.name, why, verdict, predictions)


__all__ = [
    "PredictError",
    "PredictOptions",
    "PredictResult",
    "Prediction",
    "predict_backend",
    "predict_images",
    "read_batch",
    "top_classes",
]
