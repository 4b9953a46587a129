"""Eager PyTorch CPU latency: unfolded NF vs folded NF vs folded BN twin (host wall time per batch).

    python -m bench.fold_speed [--model nf_resnet50] [--batches 1,8] [--iters 20] [--min-time 8]

Variants are timed in interleaved rounds (nfdeploy.perf: each round runs every variant, the start rotates),
so drift in machine load hits all of them alike; a latency is the median of per-round medians and a ratio
the median of per-round ratios, each with its 95% bootstrap interval.  Writes fold_speed-cpu-<date>.{json,md}
to --out and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
from functools import partial
from pathlib import Path

import torch

from nfdeploy.artifacts import atomic_write_json, atomic_write_text
from nfdeploy.fold import fold_model, randomize_, unfolded_equivalence
from nfdeploy.machine import machine_info, machine_load
from nfdeploy.models import create_model, twin_name
from nfdeploy.perf import RoundPlan
from nfdeploy.perf.call_timing import time_calls

NOISE_BAND = 0.02  # "no slower" allows 2 %: the spread of repeated medians on a shared CPU
FORMAT_VERSION = 2  # 2: latencies and ratios from interleaved rounds (with intervals); no p10_ms
RATIOS = {
    "speedup_folded_vs_unfolded": ("unfolded NF", "folded NF"),
    "folded_nf_over_folded_bn": ("folded NF", "folded BN twin"),
}


def foreign_share(before: dict, after: dict) -> float:
    """Share of all usable cores that other processes used, the larger of the samples before and after."""
    return max(before["other_processes_cores"], after["other_processes_cores"]) / before["usable_cpus"]


def bench_batch(variants: dict[str, torch.nn.Module], x: torch.Tensor, plan: RoundPlan) -> dict:
    """The variants on batch `x` in interleaved rounds: per-variant figures, the two ratios, the load."""
    before = machine_load()
    with torch.inference_mode():
        members, ratios, info = time_calls({k: partial(m, x) for k, m in variants.items()}, plan, ratios=RATIOS)
    after = machine_load()
    stats = {
        k: {
            "median_ms": m["median_ms"],
            "median_ci95_ms": m["median_ci95_ms"],
            "p90_ms": m["host_ms"]["p90"],
            "min_ms": m["host_ms"]["min"],
            "mean_ms": m["host_ms"]["mean"],
            "n": m["iterations"],
            "noisy": m["noisy"],
        }
        for k, m in members.items()
    }
    return {
        "variants": stats,
        "foreign_cpu_load": foreign_share(before, after),
        **{name: r["ratio"] for name, r in ratios.items()},
        "ratios": ratios,
        "rounds": info["rounds"],
        "stopped_by": info["stopped_by"],
        "load": {"before": before, "after": after},
    }


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="nf_resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--iters", type=int, default=20, help="minimum timed iterations per variant")
    ap.add_argument("--max-iters", type=int, default=1000)
    ap.add_argument("--min-time", type=float, default=8.0, help="minimum timed seconds per variant and batch")
    ap.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per variant and batch")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as found)")
    ap.add_argument("--channels-last", action="store_true", help="channels_last input and weights (all variants)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    nf = randomize_(create_model(args.model), 0).eval()
    bn = randomize_(create_model(twin_name(args.model)), 0).eval()
    folded_nf, report = fold_model(nf)
    folded_bn, _ = fold_model(bn)
    variants = {"unfolded NF": nf, "folded NF": folded_nf, "folded BN twin": folded_bn}
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    for m in variants.values():
        m.to(memory_format=fmt)
    cfg = nf.cfg
    x_check = torch.randn(2, cfg.in_chans, args.size, args.size)
    parity = {
        "folded NF": unfolded_equivalence(nf, folded_nf, x_check),
        "folded BN twin": unfolded_equivalence(bn, folded_bn, x_check),
    }

    plan = RoundPlan(
        warmup_s=args.warmup,
        min_time_s=args.min_time,
        min_iters=args.iters,
        max_iters=args.max_iters * len(variants),
    )
    results = {}
    for b in (int(s) for s in args.batches.split(",")):
        x = torch.randn(b, cfg.in_chans, args.size, args.size).contiguous(memory_format=fmt)
        results[b] = r = bench_batch(variants, x, plan)
        print(f"batch {b}: " + ", ".join(f"{k} {v['median_ms']:.1f} ms" for k, v in r["variants"].items()), flush=True)

    goals = {
        f"batch {b}": {
            "folded_nf_ge_1.5x_faster_than_unfolded": r["speedup_folded_vs_unfolded"] >= 1.5,
            "folded_nf_no_slower_than_folded_bn": r["folded_nf_over_folded_bn"] <= 1 + NOISE_BAND,
        }
        for b, r in results.items()
    }
    machine = machine_info()
    loads = [r["load"] for r in results.values()]
    env = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "num_threads": torch.get_num_threads(),
        "cpu": machine["cpu"]["model"],
        "cpu_count": machine["cpu"]["logical_cpus"],
        "mkldnn": torch.backends.mkldnn.is_available(),
        "python": platform.python_version(),
        "loadavg_1m_before": (loads[0]["before"]["loadavg_1_5_15"] or [None])[0],
        "loadavg_1m_after": (loads[-1]["after"]["loadavg_1_5_15"] or [None])[0],
        "channels_last": args.channels_last,
        "busy_warning": any((r["foreign_cpu_load"] or 0.0) > 0.1 for r in results.values()),
    }
    doc = {
        "version": FORMAT_VERSION,
        "benchmark": "fold_speed",
        "quantity": "host wall time per batch (ms), eager, inference_mode, float32; median of per-round medians "
        "of interleaved rounds, ratios the median of per-round ratios",
        "foreign_cpu_load": "share of all usable cores other processes used, sampled for 0.5 s before and after "
        "each batch's rounds (nfdeploy.machine.machine_load), the larger",
        "model": args.model,
        "twin": twin_name(args.model),
        "input_size": args.size,
        "env": env,
        "parity_float32": parity,
        "fold_totals": report.totals,
        "folded_ops": {"NF": report.ops},
        "noise_band": NOISE_BAND,
        "results": {str(b): r for b, r in results.items()},
        "goals": goals,
    }
    md = markdown(args, env, results, goals, parity)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"fold_speed-cpu-{dt.date.today().isoformat()}"
    atomic_write_json(stem.with_suffix(".json"), doc)
    atomic_write_text(stem.with_suffix(".md"), md)
    print(md)
    print(f"wrote {stem}.json / .md")


def markdown(args: argparse.Namespace, env: dict, results: dict, goals: dict, parity: dict) -> str:
    lines = [
        f"# Fold speed: {args.model} @ {args.size}x{args.size}, PyTorch eager CPU, float32",
        "",
        f"{env['date']} · torch {env['torch']} · {env['cpu']} · {env['num_threads']} threads · "
        f"{'channels_last' if args.channels_last else 'NCHW'} · other processes' CPU share before/after timing: "
        + ", ".join(
            f"b{b} {r['foreign_cpu_load']:.0%}" for b, r in results.items() if r["foreign_cpu_load"] is not None
        )
        + (" · **machine busy: numbers unreliable**" if env["busy_warning"] else ""),
        "",
        "| batch | variant | median ms | p90 ms | min ms | n | folded speedup | folded NF ÷ folded BN |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for b, r in results.items():
        for k, v in r["variants"].items():
            extra = ("", "")
            if k == "folded NF":
                up, nb = (r["ratios"][n] for n in RATIOS)
                extra = (
                    f"{up['ratio']:.2f}x [{up['ci95'][0]:.2f}, {up['ci95'][1]:.2f}]",
                    f"{nb['ratio']:.3f} [{nb['ci95'][0]:.3f}, {nb['ci95'][1]:.3f}]",
                )
            lines.append(
                f"| {b} | {k} | {v['median_ms']:.1f} | {v['p90_ms']:.1f} | {v['min_ms']:.1f} | {v['n']} "
                f"| {extra[0]} | {extra[1]} |"
            )
    lines += [
        "",
        "Goals (folded NF ≥ 1.5x faster than unfolded; folded NF no slower than folded BN twin, "
        f"within {NOISE_BAND:.0%}):",
        "",
    ]
    lines += [
        f"- {b}: " + ", ".join(f"{k}: {'met' if ok else 'NOT met'}" for k, ok in g.items()) for b, g in goals.items()
    ]
    lines += [
        "",
        "Float32 parity vs unfolded: " + ", ".join(f"{k} rel L2 {v['rel_l2']:.1e}" for k, v in parity.items()),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
