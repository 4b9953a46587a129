"""NF vs BN-twin training step cost on CPU, side by side in one run.

One step = forward + backward (+ AGC for NF, which is part of its recipe) on the same batch,
same input size, same thread count.  The goal (issue 2): NF <= 1.25x the BN twin's step time.

    python bench/train_step.py --models nf_resnet_c8,nf_resnet_c20,nf_resnet18 --batch 64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch
from torch.nn import functional as F

from nfdeploy.models import create_model, twin_name
from nfdeploy.nn import adaptive_grad_clip_
from nfdeploy.render import markdown_table, write_bench_result


def step_times(name: str, batch: int, size: int, in_chans: int, min_time: float, warmup: float) -> list[float]:
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

    end = time.perf_counter() + warmup
    while time.perf_counter() < end:
        step()
    times: list[float] = []
    end = time.perf_counter() + min_time
    while time.perf_counter() < end or len(times) < 10:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="nf_resnet_c8,nf_resnet_c20,nf_resnet18")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--min-time", type=float, default=8.0, help="seconds of timed steps per model")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per model")
    ap.add_argument("--rounds", type=int, default=2, help="alternate NF/BN this many times (drift control)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    rows = []
    for nf in args.models.split(","):
        bn = twin_name(nf)
        cfg = create_model(nf).cfg
        size, in_chans = (32, 1) if cfg.stem == "small" else (112, 3)
        t = {nf: [], bn: []}
        for _ in range(args.rounds):  # interleave so that machine drift hits both equally
            for name in (nf, bn):
                t[name] += step_times(name, args.batch, size, in_chans, args.min_time / args.rounds, args.warmup)
        med = {k: statistics.median(v) * 1e3 for k, v in t.items()}
        p90 = {k: sorted(v)[int(0.9 * (len(v) - 1))] * 1e3 for k, v in t.items()}
        rows.append(
            {
                "nf_model": nf,
                "input": f"{args.batch}x{in_chans}x{size}x{size}",
                "nf_median_ms": med[nf],
                "nf_p90_ms": p90[nf],
                "bn_median_ms": med[bn],
                "bn_p90_ms": p90[bn],
                "nf_over_bn": med[nf] / med[bn],
                "steps_nf": len(t[nf]),
                "steps_bn": len(t[bn]),
                "goal_le_1.25": med[nf] / med[bn] <= 1.25,
            }
        )
    meta = {
        "date": date.today().isoformat(),
        "device": "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "timing": "host wall time per step (perf_counter), median over steps after time-based warm-up",
        "step": "forward + backward (+ AGC on NF), cross-entropy with label smoothing",
    }
    md = (
        f"# NF vs BN-twin training step, CPU ({meta['date']})\n\n"
        f"torch {meta['torch']}, {meta['threads']} threads. {meta['step']}; {meta['timing']}.\n\n"
        + markdown_table(rows, floatfmt="{:.3f}")
        + "\n`python bench/train_step.py`\n"
    )
    write_bench_result(args.out, f"train_step-cpu-{meta['date']}", meta, rows, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
