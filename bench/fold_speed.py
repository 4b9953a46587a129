"""Eager PyTorch CPU latency: unfolded NF vs folded NF vs folded BN twin (host wall time per batch).

    python bench/fold_speed.py [--model nf_resnet50] [--batches 1,8] [--iters 20] [--min-time 8]

Variants are timed round-robin (one call each per round), so drift in machine load hits all of
them alike.  Writes fold_speed-cpu-<date>.{json,md} to --out and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from nfdeploy.fold import fold_model, randomize_, unfolded_equivalence
from nfdeploy.models import create_model, twin_name

NOISE_BAND = 0.02  # "no slower" allows 2 %: the spread of repeated medians on a shared CPU


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy ticks of all CPUs, ticks of this process) from /proc, or None off Linux."""
    try:
        f = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        busy = sum(int(v) for v in f[:8]) - int(f[3]) - int(f[4])  # minus idle and iowait
        own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return busy, int(own[11]) + int(own[12])  # utime + stime
    except (OSError, IndexError, ValueError):
        return None


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def bench_batch(
    variants: dict[str, torch.nn.Module],
    x: torch.Tensor,
    warmup_s: float,
    iters: int,
    min_time_s: float,
    max_iters: int,
) -> dict[str, dict[str, float]]:
    times: dict[str, list[float]] = {k: [] for k in variants}
    ticks0, wall0 = _cpu_ticks(), time.perf_counter()
    with torch.inference_mode():
        for m in variants.values():  # warm up by time: allocator, oneDNN primitive caches
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < warmup_s:
                m(x)
        t_start = time.perf_counter()
        while True:
            for name, m in variants.items():
                t0 = time.perf_counter()
                m(x)
                times[name].append((time.perf_counter() - t0) * 1e3)
            n = len(times[next(iter(times))])
            if n >= max_iters or (n >= iters and time.perf_counter() - t_start >= min_time_s * len(variants)):
                break
    ticks1, wall = _cpu_ticks(), time.perf_counter() - wall0
    # Share of all cores used by *other* processes while we timed: contention makes numbers unreliable.
    foreign = (
        None
        if ticks0 is None or ticks1 is None
        else max(
            0.0,
            ((ticks1[0] - ticks0[0]) - (ticks1[1] - ticks0[1]))
            / (os.sysconf("SC_CLK_TCK") * wall * (os.cpu_count() or 1)),
        )
    )
    stats = {
        k: {
            "median_ms": statistics.median(v),
            "p10_ms": _pct(v, 0.1),
            "p90_ms": _pct(v, 0.9),
            "min_ms": min(v),
            "mean_ms": statistics.fmean(v),
            "n": len(v),
        }
        for k, v in times.items()
    }
    return stats, foreign


def main() -> None:
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
    args = ap.parse_args()
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

    load_before = os.getloadavg()
    results = {}
    for b in (int(s) for s in args.batches.split(",")):
        x = torch.randn(b, cfg.in_chans, args.size, args.size).contiguous(memory_format=fmt)
        r, foreign = bench_batch(variants, x, args.warmup, args.iters, args.min_time, args.max_iters)
        med = {k: v["median_ms"] for k, v in r.items()}
        results[b] = {
            "variants": r,
            "foreign_cpu_load": foreign,
            "speedup_folded_vs_unfolded": med["unfolded NF"] / med["folded NF"],
            "folded_nf_over_folded_bn": med["folded NF"] / med["folded BN twin"],
        }
        print(f"batch {b}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in med.items()), flush=True)
    load_after = os.getloadavg()

    goals = {
        f"batch {b}": {
            "folded_nf_ge_1.5x_faster_than_unfolded": r["speedup_folded_vs_unfolded"] >= 1.5,
            "folded_nf_no_slower_than_folded_bn": r["folded_nf_over_folded_bn"] <= 1 + NOISE_BAND,
        }
        for b, r in results.items()
    }
    ncpu = os.cpu_count() or 1
    env = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "num_threads": torch.get_num_threads(),
        "cpu": _cpu_name(),
        "cpu_count": ncpu,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "python": platform.python_version(),
        "loadavg_1m_before": load_before[0],
        "loadavg_1m_after": load_after[0],
        "channels_last": args.channels_last,
        "busy_warning": any((r["foreign_cpu_load"] or 0.0) > 0.1 for r in results.values()),
    }
    doc = {
        "benchmark": "fold_speed",
        "quantity": "host wall time per batch (ms), eager, inference_mode, float32",
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

    lines = [
        f"# Fold speed: {args.model} @ {args.size}x{args.size}, PyTorch eager CPU, float32",
        "",
        f"{env['date']} · torch {env['torch']} · {env['cpu']} · {env['num_threads']} threads · "
        f"{'channels_last' if args.channels_last else 'NCHW'} · other processes' CPU share while timing: "
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
            extra = (
                (f"{r['speedup_folded_vs_unfolded']:.2f}x", f"{r['folded_nf_over_folded_bn']:.3f}")
                if k == "folded NF"
                else ("", "")
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
    md = "\n".join(lines) + "\n"

    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"fold_speed-cpu-{dt.date.today().isoformat()}"
    for path, text in ((stem.with_suffix(".json"), json.dumps(doc, indent=2)), (stem.with_suffix(".md"), md)):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    print(md)
    print(f"wrote {stem}.json / .md")


if __name__ == "__main__":
    main()
