"""NF vs BN-twin training step cost on CPU, side by side in one run.

One step = forward + backward (+ AGC for NF, which is part of its recipe) on the same batch,
same input size, same thread count.  The goal (issue 2): NF <= 1.25x the BN twin's step time.
NF and BN steps alternate in interleaved rounds (nfdeploy.perf), so machine drift hits both alike;
the ratio is the median of per-round ratios, with its 95% bootstrap interval.

    python -m bench.train_step --models nf_resnet_c8,nf_resnet_c20,nf_resnet18 --batch 64
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch
from torch.nn import functional as F

from nfdeploy.models import create_model, twin_name
from nfdeploy.nn import adaptive_grad_clip_
from nfdeploy.perf import RoundPlan
from nfdeploy.perf.call_timing import time_calls
from nfdeploy.perf.rounds import WINDOW_ROUNDS, WINDOWS
from nfdeploy.render import markdown_table, write_bench_result


def train_step(name: str, batch: int, size: int, in_chans: int) -> Callable[[], None]:
    """One training step of a fresh `name` (seed 0) on a fixed random batch, as a call."""
    torch.manual_seed(0)
    model = create_model(name, input_size=size, in_chans=in_chans).train()
    x = torch.randn(batch, in_chans, size, size)
    y = torch.randint(0, model.cfg.num_classes, (batch,))
    agc = [p for n, p in model.named_parameters() if not n.startswith("fc.")] if model.cfg.norm == "nf" else None

    def step() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y, label_smoothing=0.1).backward()
        if agc is not None:
            adaptive_grad_clip_(agc, 0.01, 1e-3)

    return step


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="nf_resnet_c8,nf_resnet_c20,nf_resnet18")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--min-time", type=float, default=8.0, help="seconds of timed steps per model")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per model")
    ap.add_argument(
        "--rounds",
        type=int,
        default=2,
        help=f"alternate NF/BN at least this many rounds (drift control; at least {WINDOWS * WINDOW_ROUNDS}: "
        f"{WINDOWS} stability windows of {WINDOW_ROUNDS})",
    )
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    plan = RoundPlan(
        warmup_s=args.warmup,
        min_time_s=args.min_time,
        min_iters=10,
        windows=max(WINDOWS, math.ceil(args.rounds / WINDOW_ROUNDS)),
    )
    rows = []
    for nf in args.models.split(","):
        bn = twin_name(nf)
        cfg = create_model(nf).cfg
        size, in_chans = (32, 1) if cfg.stem == "small" else (112, 3)
        steps = {name: train_step(name, args.batch, size, in_chans) for name in (nf, bn)}
        members, ratios, _ = time_calls(steps, plan, ratios={"nf_over_bn": (nf, bn)})
        med = {k: m["median_ms"] for k, m in members.items()}
        p90 = {k: m["host_ms"]["p90"] for k, m in members.items()}
        ratio = ratios["nf_over_bn"]
        rows.append(
            {
                "nf_model": nf,
                "input": f"{args.batch}x{in_chans}x{size}x{size}",
                "nf_median_ms": med[nf],
                "nf_p90_ms": p90[nf],
                "bn_median_ms": med[bn],
                "bn_p90_ms": p90[bn],
                "nf_over_bn": ratio["ratio"],
                "nf_over_bn_ci95": f"[{ratio['ci95'][0]:.3f}, {ratio['ci95'][1]:.3f}]",
                "steps_nf": members[nf]["iterations"],
                "steps_bn": members[bn]["iterations"],
                "goal_le_1.25": ratio["ratio"] <= 1.25,
            }
        )
    meta = {
        "date": date.today().isoformat(),
        "device": "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "timing": "host wall time per step, NF and BN in interleaved rounds after time-based warm-up: median of "
        "per-round medians; nf_over_bn the median of per-round ratios",
        "step": "forward + backward (+ AGC on NF), cross-entropy with label smoothing",
    }
    md = (
        f"# NF vs BN-twin training step, CPU ({meta['date']})\n\n"
        f"torch {meta['torch']}, {meta['threads']} threads. {meta['step']}; {meta['timing']}.\n\n"
        + markdown_table(rows, floatfmt="{:.3f}")
        + "\n`python -m bench.train_step`\n"
    )
    write_bench_result(args.out, f"train_step-cpu-{meta['date']}", meta, rows, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
