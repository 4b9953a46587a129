"""The model Triton's Python backend runs for a packaged nfdeploy backend: each `model.py` of a repository
written by `nfdeploy package` is one import of `TritonPythonModel` from here.

Triton's dynamic batcher hands `execute` the requests it grouped; each gets its own response. A request
that must not run (non-finite values) gets its own error and is left out of the batch; the others are
concatenated, run once by the backend parity judged (optionally padded to one fixed batch size, so that
a response never depends on its batch-mates), and split back. Shape, dtype and the batch limit were
checked by Triton against config.pbtxt before `execute` is called.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# A second output beside the logits: how many request rows the batcher grouped with this request's (the
# rows the backend ran together, before any padding), so a client can relate a response to its batch.
BATCH_OUTPUT = "executed_batch"
EXPORT_SUBDIR = "export"  # in a model version dir: the manifest and the file the backend runs
RUN_SUBDIR = "run"  # in a model version dir: the run's config and weights (torch backends only)


@dataclass
class ServedModel:
    """One nfdeploy backend, active, answering grouped requests. `pad_to`: run every batch padded to this many
    rows (0: as grouped)."""

    backend: Any
    input_name: str
    output_name: str
    max_batch: int
    pad_to: int = 0

    def answer(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray | str]:
        """Per request: its output rows, or the reason it was refused (a string)."""
        refused = {
            i: f"input {self.input_name!r} has non-finite values (NaN or inf): refused"
            for i, a in enumerate(arrays)
            if not np.isfinite(a).all()
        }
        good = [i for i in range(len(arrays)) if i not in refused]
        outputs: dict[int, np.ndarray] = {}
        if good:
            batch = np.concatenate([arrays[i] for i in good]) if len(good) > 1 else arrays[good[0]]
            rows = len(batch)
            if self.pad_to and rows < self.pad_to:
                batch = np.concatenate([batch, np.zeros((self.pad_to - rows, *batch.shape[1:]), batch.dtype)])
            out = self.backend.run(np.ascontiguousarray(batch))[:rows]
            sizes = [len(arrays[i]) for i in good]
            for i, part in zip(good, np.split(out, np.cumsum(sizes)[:-1])):
                outputs[i] = part
        return [refused[i] if i in refused else outputs[i] for i in range(len(arrays))]

    def grouped_rows(self, arrays: Sequence[np.ndarray]) -> int:
        return int(sum(len(a) for a in arrays if np.isfinite(a).all()))


def load_served_model(version_dir: Path, params: dict[str, str], max_batch: int) -> ServedModel:
    """The packaged backend of a model version dir, active and warmed up on one zero sample."""
    from nfdeploy.artifacts import Manifest
    from nfdeploy.check.backends import export_backend

    export_dir = version_dir / EXPORT_SUBDIR
    threads = int(params["nfdeploy.threads"]) if params.get("nfdeploy.threads") else None
    if threads and params["nfdeploy.backend"].startswith("torch-"):
        import torch

        torch.set_num_threads(threads)
    backend = export_backend(export_dir, params["nfdeploy.backend"], threads=threads, run_dir=version_dir / RUN_SUBDIR)
    reason = backend.unavailable_reason()
    if reason:
        raise RuntimeError(f"{backend.name} cannot run here: {reason}")
    backend.activate()
    manifest = Manifest.read(export_dir, verify_files=False)
    model = ServedModel(
        backend,
        manifest.input.name,
        manifest.output_name,
        max_batch,
        int(params.get("nfdeploy.pad_to") or 0),
    )
    model.answer([np.zeros((1, *backend.input_shape), backend.batch_dtype)])
    return model


class TritonPythonModel:
    """Triton's Python-backend interface (initialize / execute / finalize) over a ServedModel."""

    def initialize(self, args: dict[str, Any]) -> None:
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        version_dir = Path(args["model_repository"]) / str(args["model_version"])
        t = time.perf_counter()
        self.model = load_served_model(version_dir, params, int(config.get("max_batch_size", 0)))
        pb_utils.Logger.log_info(
            f"nfdeploy: {self.model.backend.name} active and answered a probe in "
            f"{time.perf_counter() - t:.1f} s (pad to {self.model.pad_to or 'no'})"
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = self.pb
        arrays = [pb.get_input_tensor_by_name(r, self.model.input_name).as_numpy() for r in requests]
        grouped = np.int32(self.model.grouped_rows(arrays))
        try:
            answers = self.model.answer(arrays)
        except Exception as e:  # noqa: BLE001 - a crash of the backend fails this batch's requests, not the server
            msg = f"{self.model.backend.name} failed on a batch of {int(grouped)} rows: {type(e).__name__}: {e}"
            return [pb.InferenceResponse(error=pb.TritonError(msg)) for _ in requests]
        responses = []
        for a in answers:
            if isinstance(a, str):
                responses.append(pb.InferenceResponse(error=pb.TritonError(a)))
            else:
                responses.append(
                    pb.InferenceResponse(
                        [
                            pb.Tensor(self.model.output_name, np.ascontiguousarray(a)),
                            pb.Tensor(BATCH_OUTPUT, np.full((len(a), 1), grouped, np.int32)),
                        ]
                    )
                )
        return responses

    def finalize(self) -> None:
        self.model.backend.deactivate()


__all__ = ["BATCH_OUTPUT", "EXPORT_SUBDIR", "RUN_SUBDIR", "ServedModel", "TritonPythonModel", "load_served_model"]
