"""The training loop: SGD + Nesterov, warm-up + cosine, label smoothing, AGC, optional EMA and AMP.

Determinism (what makes resume-after-kill and the data-parallel invariance exact):
- the epoch's sample order comes from a generator seeded by (seed, epoch);
- augmentation and dropout/stochastic-depth randomness are reseeded from (seed, step[, rank]) at
  every step, so a resumed run needs no RNG state beyond the step counter;
- a step over W processes x M micro-batches sums per-micro-batch mean losses weighted by their
  share of the global batch, so its gradient is the global-batch mean gradient.
"""

from __future__ import annotations

import copy
import json
import math
import platform
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

import nfdeploy
from nfdeploy.artifacts import (
    ArtifactError,
    atomic_write_json,
    atomic_write_text,
    read_json,
    save_tensors,
)
from nfdeploy.artifacts.run_dir import CURVES, METRICS, RUN_CONFIG, SUMMARY, WEIGHTS
from nfdeploy.config import Recipe, recipe_from_resolved
from nfdeploy.data import ImageDataset
from nfdeploy.errors import UserError
from nfdeploy.models import NFResNet, NFResNetCfg, create_model
from nfdeploy.nn import adaptive_grad_clip_
from nfdeploy.render import plot_training_curves
from nfdeploy.train import distributed as D
from nfdeploy.train.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint


class TrainError(UserError, RuntimeError):
    """A training set-up problem; the message is one line."""


@dataclass
class TrainResult:
    run_dir: Path
    summary: dict[str, Any]


def build_model(recipe: Recipe, data: ImageDataset) -> NFResNet:
    return create_model(
        recipe.model.name,
        num_classes=data.num_classes,
        in_chans=data.in_chans,
        input_size=data.input_size,
        **recipe.model.options,
    )


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Linear warm-up from base_lr/warmup to base_lr, then cosine decay to 0 at total_steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv/linear weights only: not on gains, biases or scalar skip gains."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _step_seed(seed: int, step: int, rank: int = 0) -> int:
    return (seed * 1_000_003 + step * 7919 + rank * 104_729) % (2**63 - 1)


def _select_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainError("train.device = 'cuda' but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


@torch.inference_mode()
def evaluate(
    model: nn.Module, data: ImageDataset, device: torch.device, batch_size: int = 256, split: str = "test"
) -> dict[str, float]:
    was_training = model.training
    model.eval()
    part = getattr(data, split)
    loss_sum, correct = 0.0, 0
    for start in range(0, len(part), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(part)))
        x, y = data.batch(part, idx)
        logits = model(x.to(device)).float()
        y = y.to(device)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    model.train(was_training)
    n = max(len(part), 1)
    return {"loss": loss_sum / n, "accuracy": correct / n}


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.2%}  {task.fields[ips]:.0f} img/s"),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )


def default_run_dir(recipe: Recipe) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{recipe.model.name}-{recipe.data.dataset}-{stamp}"


def _resolved_config(
    recipe: Recipe, cfg: NFResNetCfg, data: ImageDataset, info: D.DistInfo, device: torch.device
) -> dict[str, Any]:
    return {
        "recipe": recipe.to_dict(),
        "model_config": asdict(cfg),
        "dataset": data.describe(),
        "environment": {
            "nfdeploy": nfdeploy.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": str(device),
            "world_size": info.world_size,
            "threads": torch.get_num_threads(),
        },
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def train(
    recipe: Recipe, run_dir: str | Path | None = None, *, resume: bool = False, progress: bool = True, log=print
) -> TrainResult:
    """Train `recipe`, writing weights, config, metrics, summary and curves into `run_dir`."""
    t = recipe.train
    device = _select_device(t.device)
    info = D.init_distributed(device.type)
    try:
        return _train(
            recipe,
            run_dir,
            resume,
            progress and info.is_main,
            device,
            info,
            log if info.is_main else (lambda *a, **k: None),
        )
    finally:
        D.shutdown(info)


@dataclass
class _Session:
    """What one training process holds while it runs: the batch arithmetic (a global batch of `batch`
    over W processes of `local_batch`, each in grad_accum micro-batches of `micro`), the model, its EMA,
    the optimizer and the mixed-precision set-up."""

    recipe: Recipe
    data: ImageDataset
    device: torch.device
    info: D.DistInfo
    run_dir: Path
    batch: int
    local_batch: int
    micro: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    model: NFResNet
    ema: nn.Module | None
    optimizer: torch.optim.Optimizer
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None
    agc_params: list[nn.Parameter]
    ddp: nn.Module | None = None  # the model, wrapped in DistributedDataParallel when data-parallel

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()

    def save(self, state: dict[str, Any]) -> None:
        if self.info.is_main:
            ema = self.ema.state_dict() if self.ema else None
            save_checkpoint(self.run_dir / CHECKPOINT, self.model, self.optimizer, ema, state)


def _train(
    recipe: Recipe, run_dir: str | Path | None, resume: bool, show: bool, device: torch.device, info: D.DistInfo, log
) -> TrainResult:
    t = recipe.train
    if t.threads:
        torch.set_num_threads(t.threads)
    if t.batch_size % (info.world_size * t.grad_accum):
        raise TrainError(
            f"train.batch_size ({t.batch_size}) must be divisible by processes x "
            f"train.grad_accum ({info.world_size} x {t.grad_accum})"
        )
    run_dir = _agreed_run_dir(recipe, run_dir, resume, info)
    s = _session(recipe, recipe.data.load(), device, info, run_dir)
    state = _start_or_resume(s, resume, log)
    s.ddp = (
        torch.nn.parallel.DistributedDataParallel(s.model, device_ids=[device.index] if device.type == "cuda" else None)
        if info.enabled
        else s.model
    )
    with _progress(show) as bar:
        task = bar.add_task("train", total=s.total_steps, completed=state["global_step"], loss=0.0, acc=0.0, ips=0.0)
        for epoch in range(state["epoch"], t.epochs):
            part, lr = _train_epoch(s, epoch, state, bar, task)
            state = _end_epoch(s, epoch, state, part, lr, bar.console.print if show else log)
    return _finish(s, state)


def _agreed_run_dir(recipe: Recipe, run_dir: str | Path | None, resume: bool, info: D.DistInfo) -> Path:
    """The run dir every process agrees on (default names carry a timestamp: rank 0's wins), checked for
    a resume (a checkpoint to resume from) or a fresh run (empty)."""
    if run_dir is None:
        run_dir = default_run_dir(recipe)
    if info.enabled:
        obj = [str(run_dir)]
        torch.distributed.broadcast_object_list(obj, src=0)
        run_dir = obj[0]
    run_dir = Path(run_dir)
    ckpt_path = run_dir / CHECKPOINT
    if resume:
        if (run_dir / SUMMARY).exists() and not ckpt_path.exists():
            raise TrainError(f"run {run_dir} is already complete; nothing to resume")
        if not ckpt_path.exists():
            raise TrainError(f"no checkpoint to resume from in {run_dir}")
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise TrainError(f"run dir {run_dir} already exists and is not empty; use --resume or another --out")
    return run_dir


def _session(recipe: Recipe, data: ImageDataset, device: torch.device, info: D.DistInfo, run_dir: Path) -> _Session:
    """The step schedule and a freshly seeded model with its EMA, optimizer and mixed-precision set-up."""
    t = recipe.train
    B, local_B = t.batch_size, t.batch_size // info.world_size
    steps_per_epoch = len(data.train) // B
    if steps_per_epoch == 0:
        raise TrainError(f"train.batch_size ({B}) is larger than the training split ({len(data.train)} images)")
    torch.manual_seed(t.seed)
    model = build_model(recipe, data).to(device)
    optimizer = torch.optim.SGD(
        param_groups(model, t.weight_decay), lr=t.lr, momentum=t.momentum, nesterov=t.nesterov and t.momentum > 0
    )
    amp_dtype = _amp_dtype(t.amp, device)
    return _Session(
        recipe,
        data,
        device,
        info,
        run_dir,
        batch=B,
        local_batch=local_B,
        micro=local_B // t.grad_accum,
        steps_per_epoch=steps_per_epoch,
        total_steps=steps_per_epoch * t.epochs,
        warmup_steps=int(round(t.warmup_epochs * steps_per_epoch)),
        model=model,
        ema=copy.deepcopy(model).eval() if t.ema_decay > 0 else None,
        optimizer=optimizer,
        amp_dtype=amp_dtype,
        scaler=torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None,
        agc_params=[p for n, p in model.named_parameters() if not n.startswith("fc.")],  # classifier excluded
    )


def _empty_partial() -> dict[str, float]:
    return {"loss": 0.0, "correct": 0.0, "count": 0.0, "seconds": 0.0, "clipped": 0.0}


def _start_or_resume(s: _Session, resume: bool, log) -> dict[str, Any]:
    """The run's state: loaded with the weights from the checkpoint on resume, else a fresh one (and the
    run dir with its config.json)."""
    state: dict[str, Any] = {
        "epoch": 0,
        "step": 0,
        "global_step": 0,
        "history": [],
        "partial": _empty_partial(),
        "train_seconds": 0.0,
        "train_images": 0,
    }
    if resume:
        if s.info.is_main:  # temp files of a write that was killed half-way
            for stale in s.run_dir.glob(".*.tmp"):
                stale.unlink(missing_ok=True)
        ema = s.ema.state_dict() if s.ema else None
        state = load_checkpoint(s.run_dir / CHECKPOINT, s.model, s.optimizer, ema)
        log(f"resuming {s.run_dir} at epoch {state['epoch'] + 1}, step {state['step']}/{s.steps_per_epoch}")
    elif s.info.is_main:
        s.run_dir.mkdir(parents=True, exist_ok=True)
        config = _resolved_config(s.recipe, s.model.cfg, s.data, s.info, s.device)
        atomic_write_json(s.run_dir / RUN_CONFIG, config)
    D.barrier(s.info)
    return state


def _train_epoch(s: _Session, epoch: int, state: dict[str, Any], bar, task) -> tuple[dict[str, float], float]:
    """The epoch's steps from state["step"] on, in the order seeded by (seed, epoch); returns the epoch's
    running sums (state["partial"], updated) and the last step's learning rate."""
    t, info = s.recipe.train, s.info
    perm = torch.randperm(len(s.data.train), generator=torch.Generator().manual_seed(t.seed * 10_007 + epoch))
    part = state["partial"]
    bar.update(task, description=f"epoch {epoch + 1}/{t.epochs}")
    s.model.train()
    for step in range(state["step"], s.steps_per_epoch):
        t0 = time.perf_counter()
        gstep = epoch * s.steps_per_epoch + step
        lr = lr_at(gstep, s.total_steps, s.warmup_steps, t.lr)
        for group in s.optimizer.param_groups:
            group["lr"] = lr
        idx = perm[step * s.batch : (step + 1) * s.batch][info.rank * s.local_batch : (info.rank + 1) * s.local_batch]
        aug_gen = torch.Generator().manual_seed(_step_seed(t.seed, gstep, info.rank))
        torch.manual_seed(_step_seed(t.seed + 1, gstep, info.rank))  # dropout, stochastic depth
        x_all, y_all = s.data.batch(s.data.train, idx, augment=s.recipe.data.augment, generator=aug_gen)
        loss_sum, correct, clipped = _train_step(s, x_all, y_all, gstep)
        sums = D.all_reduce_sum(
            [loss_sum, correct, float(len(idx)), float(clipped) if clipped is not None else 0.0], s.device, info
        )
        dt = time.perf_counter() - t0
        for key, value in zip(("loss", "correct", "count", "clipped"), sums):
            part[key] += value
        part["seconds"] += dt
        bar.update(
            task,
            advance=1,
            loss=part["loss"] / part["count"],
            acc=part["correct"] / part["count"],
            ips=part["count"] / max(part["seconds"], 1e-9),
        )
        if (step + 1) % t.checkpoint_every == 0 and step + 1 < s.steps_per_epoch:
            s.save({**state, "epoch": epoch, "step": step + 1, "global_step": gstep + 1, "partial": part})
    return part, lr


def _train_step(s: _Session, x_all: torch.Tensor, y_all: torch.Tensor, gstep: int) -> tuple[float, float, Any]:
    """One optimizer step over this process's share of the global batch, in grad_accum micro-batches whose
    mean losses are weighted by their share (the gradient is the global-batch mean's); then AGC and EMA.
    Returns the summed loss, the correct count and AGC's clipped-unit count (None: AGC off)."""
    t, micro = s.recipe.train, s.micro
    s.optimizer.zero_grad(set_to_none=True)
    loss_sum, correct = 0.0, 0.0
    for m in range(t.grad_accum):
        x = x_all[m * micro : (m + 1) * micro].to(s.device, non_blocking=True)
        y = y_all[m * micro : (m + 1) * micro].to(s.device, non_blocking=True)
        sync = m == t.grad_accum - 1 or not s.info.enabled
        with nullcontext() if sync else s.ddp.no_sync(), s.autocast():
            logits = s.ddp(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=t.label_smoothing)
        scaled = loss * (micro / s.local_batch)
        (s.scaler.scale(scaled) if s.scaler else scaled).backward()
        loss_sum += float(loss.detach()) * micro
        correct += float((logits.detach().argmax(1) == y).sum())
    if s.scaler:
        s.scaler.unscale_(s.optimizer)
    clipped = adaptive_grad_clip_(s.agc_params, t.agc_clip, t.agc_eps) if t.agc_clip > 0 else None
    if s.scaler:
        s.scaler.step(s.optimizer)
        s.scaler.update()
    else:
        s.optimizer.step()
    if s.ema is not None:
        _update_ema(s.ema, s.model, min(t.ema_decay, (1 + gstep) / (10 + gstep)))
    return loss_sum, correct, clipped


def _end_epoch(
    s: _Session, epoch: int, state: dict[str, Any], part: dict[str, float], lr: float, say
) -> dict[str, Any]:
    """Evaluate (the EMA model when there is one) on the test split, append the epoch's row to the history
    and metrics.jsonl, checkpoint unless it was the last epoch, print the row; returns the new state."""
    t = s.recipe.train
    test = evaluate(s.ema if s.ema is not None else s.model, s.data, s.device)
    row = {
        "epoch": epoch + 1,
        "step": (epoch + 1) * s.steps_per_epoch,
        "lr": lr,
        "train_loss": part["loss"] / part["count"],
        "train_accuracy": part["correct"] / part["count"],
        "test_loss": test["loss"],
        "test_accuracy": test["accuracy"],
        "images_per_second": part["count"] / max(part["seconds"], 1e-9),
        "epoch_seconds": part["seconds"],
        "agc_clipped_units": int(part["clipped"]),
    }
    state = {
        "epoch": epoch + 1,
        "step": 0,
        "global_step": (epoch + 1) * s.steps_per_epoch,
        "history": state["history"] + [row],
        "partial": _empty_partial(),
        "train_seconds": state["train_seconds"] + part["seconds"],
        "train_images": state["train_images"] + int(part["count"]),
    }
    if s.info.is_main:
        atomic_write_text(s.run_dir / METRICS, "".join(json.dumps(h) + "\n" for h in state["history"]))
        if epoch + 1 < t.epochs:
            s.save(state)
    say(
        f"epoch {epoch + 1}/{t.epochs}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.2%}"
        f"  test loss {row['test_loss']:.4f} acc {row['test_accuracy']:.2%}  "
        f"{row['images_per_second']:.0f} img/s"
    )
    return state


def _finish(s: _Session, state: dict[str, Any]) -> TrainResult:
    """The summary, the final weights (the EMA's when there is one), the curves; the checkpoint goes."""
    recipe, t = s.recipe, s.recipe.train
    final = s.ema if s.ema is not None else s.model
    last = state["history"][-1]
    summary = {
        "model": recipe.model.name,
        "dataset": s.data.name,
        "epochs": t.epochs,
        "steps": s.total_steps,
        "global_batch_size": s.batch,
        "world_size": s.info.world_size,
        "grad_accum": t.grad_accum,
        "test_accuracy": last["test_accuracy"],
        "test_loss": last["test_loss"],
        "train_accuracy": last["train_accuracy"],
        "images_per_second": state["train_images"] / max(state["train_seconds"], 1e-9),
        "train_seconds": state["train_seconds"],
        "weights": WEIGHTS,
        "weights_are_ema": s.ema is not None,
        "device": str(s.device),
        "threads": torch.get_num_threads(),
    }
    if s.info.is_main:
        model_config = json.dumps(asdict(s.model.cfg))
        save_tensors(
            s.run_dir / WEIGHTS,
            final.state_dict(),
            {"format": "nfdeploy-weights-v1", "model": recipe.model.name, "model_config": model_config},
        )
        plot_training_curves(state["history"], s.run_dir / CURVES, title=f"{recipe.model.name} on {s.data.name}")
        atomic_write_json(s.run_dir / SUMMARY, summary)
        (s.run_dir / CHECKPOINT).unlink(missing_ok=True)
    D.barrier(s.info)
    return TrainResult(s.run_dir, summary)


@torch.no_grad()
def _update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.state_dict().values(), model.state_dict().values()):
        if e.dtype.is_floating_point:
            e.lerp_(p, 1.0 - decay)
        else:
            e.copy_(p)


def resume_training(run_dir: str | Path, *, progress: bool = True, log=print) -> TrainResult:
    """Continue an interrupted run from its checkpoint, with the recipe it was started with."""
    run_dir = Path(run_dir)
    try:
        resolved = read_json(run_dir / RUN_CONFIG, "run config")
        recipe = recipe_from_resolved(resolved["recipe"])
    except (ArtifactError, KeyError, TypeError) as e:
        raise TrainError(f"cannot resume {run_dir}: {e}") from None
    return train(recipe, run_dir, resume=True, progress=progress, log=log)
