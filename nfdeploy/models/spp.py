"""Signal propagation plots (Brock et al. 2021a, Fig. 1): per residual block, on N(0,1) inputs at
initialisation, the residual stream's average channel squared mean and average channel variance,
for an NF model and its BatchNorm twin side by side."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import torch

from nfdeploy.artifacts import atomic_write_text
from nfdeploy.models import create_model, twin_name
from nfdeploy.render import pyplot, save_figure


def measure_spp(
    name: str,
    batch: int = 8,
    input_size: int | None = None,
    seed: int = 0,
    skip_gain: float | None = 1.0,
    bn_train_mode: bool = True,
    **overrides,
) -> list[dict[str, Any]]:
    """Statistics for `name`. NF skip gains are zero at init (every block is the identity), so
    `skip_gain` sets them (None keeps the init). The BN twin is measured in training mode (batch
    statistics, as at the start of training) unless `bn_train_mode` is False."""
    torch.manual_seed(seed)
    model = create_model(name, **overrides)
    size = input_size or model.cfg.input_size
    if model.cfg.norm == "nf" and skip_gain is not None:
        for block in model.blocks:
            block.skip_gain.data.fill_(skip_gain)
    model.train(model.cfg.norm == "bn" and bn_train_mode)
    x = torch.randn(batch, model.cfg.in_chans, size, size, generator=torch.Generator().manual_seed(seed + 1))
    rows = model.signal_propagation(x)
    for r in rows:
        r["model"] = name
    return rows


def spp_report(name: str, out_dir: str | Path, **kwargs) -> dict[str, Any]:
    """Measure the NF model and its twin; write spp.csv and spp.png into out_dir."""
    out_dir = Path(out_dir)
    rows = measure_spp(name, **kwargs) + measure_spp(twin_name(name), **kwargs)
    cols = ["model", "block", "transition", "avg_sq_mean", "avg_var", "branch_avg_var", "expected_var"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out_dir / "spp.csv", buf.getvalue())
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for model in (name, twin_name(name)):
        rs = [r for r in rows if r["model"] == model]
        b = [r["block"] for r in rs]
        axes[0].plot(b, [r["avg_sq_mean"] for r in rs], marker=".", label=model)
        axes[1].plot(b, [r["avg_var"] for r in rs], marker=".", label=model)
        axes[2].plot(b, [r["branch_avg_var"] for r in rs], marker=".", label=model)
        if model.startswith("nf_"):
            axes[1].plot(b, [r["expected_var"] for r in rs], ls="--", color="gray", label=f"{model} analytic")
    for ax, title in zip(axes, ["avg channel squared mean", "avg channel variance", "residual branch variance"]):
        ax.set_title(title), ax.set_xlabel("residual block"), ax.set_yscale("log"), ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    save_figure(fig, out_dir / "spp.png")
    return {"rows": rows, "csv": str(out_dir / "spp.csv"), "png": str(out_dir / "spp.png")}
