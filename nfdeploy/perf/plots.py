"""The PNG views of a bench result: latency and throughput against batch size, per backend (left) and per
comparison-group member (right), on log axes."""

from __future__ import annotations

from pathlib import Path

from nfdeploy.perf.result import BenchResult
from nfdeploy.render import pyplot, save_figure

LATENCY_PNG, THROUGHPUT_PNG = "latency_vs_batch.png", "throughput_vs_batch.png"


def write_plots(r: BenchResult, out_dir: Path) -> None:
    """LATENCY_PNG and THROUGHPUT_PNG of `r` in `out_dir`."""
    plt = pyplot()
    from matplotlib import ticker

    panels = [
        ("backends", r.results, lambda x: x["name"]),
        ("unfolded / folded / twin", r.comparison.results, lambda x: f"{x['group']}/{x['variant']}"),
    ]
    for fname, key, ylabel in (
        (LATENCY_PNG, "median_ms", "median latency (ms)"),
        (THROUGHPUT_PNG, "throughput_ips", "throughput (images/s)"),
    ):
        fig, axes = plt.subplots(1, 2, figsize=(14, 5))
        for ax, (title, rows, label) in zip(axes, panels):
            series: dict[str, list[tuple[int, float]]] = {}
            for x in rows:
                series.setdefault(label(x), []).append((x["batch"], x[key]))
            for name, pts in series.items():
                pts.sort()
                style = "--" if ("unfolded" in name or "bn-folded" in name) else "-"
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", ms=3, label=name)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            bs = sorted({x["batch"] for x in rows}) or r.batches
            ax.set_xticks(bs)
            ax.set_xticklabels([str(b) for b in bs])
            ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(ticker.NullFormatter())
            ax.set_xlabel("batch size")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{r.model}: {title}", fontsize=10)
            ax.grid(alpha=0.3, which="both")
            if series:
                ax.legend(fontsize=7, loc="best")
        save_figure(fig, out_dir / fname)


__all__ = ["LATENCY_PNG", "THROUGHPUT_PNG", "write_plots"]
