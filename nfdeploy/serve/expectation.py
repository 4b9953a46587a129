"""What every response of a load test must equal: seeded samples, each run alone by the served backend in this
process (at batch 1, or padded as the server pads), and the float64 unfolded model's outputs; and how a set of
responses compares with them."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nfdeploy.check.backends import export_backend, load_export_source
from nfdeploy.metrics import ulp_error
from nfdeploy.serve.loadtest_result import Correctness, LoadTestError


@dataclass
class Expectation:
    """Seeded samples, their outputs alone from the served backend run in this process (batch 1, or padded to
    `pad_to` rows as the server pads), their batch-1 outputs, and the float64 unfolded model's outputs."""

    x: np.ndarray
    alone: np.ndarray  # float32: what the server must answer for each sample, whatever its batch-mates
    batch1: np.ndarray  # float32: each sample at batch 1, unpadded
    ref64: np.ndarray
    backend: str
    pad_to: int

    def no_outputs(self) -> np.ndarray:
        return np.zeros((0, self.alone.shape[1]), np.float32)


def expectation(
    export_dir: str | Path, backend_name: str, samples: int, seed: int, pad_to: int = 0, threads: int | None = None
) -> Expectation:
    source = load_export_source(export_dir)
    backend = export_backend(export_dir, backend_name, threads=threads)
    if backend.takes_pixels:
        raise LoadTestError(
            f"{backend_name} takes uint8 pixels and the load test sends float32 samples: load-test the float model "
            "(bench/image_input.py times a served uint8 model against it)"
        )
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, *source.input_shape, generator=g).numpy()
    with backend:
        batch1 = np.concatenate([backend.run(x[i : i + 1]) for i in range(samples)])
        if pad_to > 1:
            pad = np.zeros((pad_to - 1, *x.shape[1:]), np.float32)
            alone = np.concatenate([backend.run(np.concatenate([x[i : i + 1], pad]))[:1] for i in range(samples)])
        else:
            alone = batch1
    with torch.no_grad():
        ref64 = copy.deepcopy(source.unfolded()).double()(torch.from_numpy(x).double()).numpy()
    return Expectation(x, alone, batch1, ref64, backend_name, pad_to)


def correctness(exp: Expectation, idx: np.ndarray, out: np.ndarray) -> Correctness:
    """Responses `out` for samples `idx`: share bitwise equal to the sample alone (and to batch 1), max ULP
    against alone, max rel L2 against float64, top-1 agreement with float64."""
    if len(idx) == 0:
        return Correctness(responses=0)
    alone, ref = exp.alone[idx], exp.ref64[idx]
    same = (out.view(np.uint32) == alone.view(np.uint32)).all(axis=1)
    same1 = (out.view(np.uint32) == exp.batch1[idx].view(np.uint32)).all(axis=1)
    rel = np.linalg.norm(out.astype(np.float64) - ref, axis=1) / np.linalg.norm(ref, axis=1)
    return Correctness(
        responses=int(len(idx)),
        bitwise_share=float(same.mean()),
        bitwise_share_vs_batch1=float(same1.mean()),
        max_ulp=float(ulp_error(out, alone, torch.float32).max()),
        max_rel_l2_vs_fp64=float(rel.max()),
        top1_agreement_vs_fp64=float((out.argmax(1) == ref.argmax(1)).mean()),
    )


def answers_correctness(exp: Expectation, answers: list[tuple[int, np.ndarray]]) -> Correctness:
    """`correctness` of (sample index, output row) answers."""
    idx = np.array([s for s, _ in answers], dtype=int)
    outs = np.stack([o for _, o in answers]) if answers else exp.no_outputs()
    return correctness(exp, idx, outs)


__all__ = ["Expectation", "answers_correctness", "correctness", "expectation"]
