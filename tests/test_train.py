"""Training: run dir contents, schedule, weight decay groups, resume after kill, DDP and
gradient-accumulation invariance (NF exact, BN twin not), recipe and data errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_cli, write_recipe
from safetensors import safe_open

from nfdeploy.artifacts import load_tensors
from nfdeploy.artifacts.run_dir import load_run_model
from nfdeploy.config import RecipeError, load_recipe
from nfdeploy.models import create_model
from nfdeploy.train import train
from nfdeploy.train.loop import evaluate, lr_at, param_groups


def rel_diff(a: dict, b: dict) -> float:
    """Max over tensors of ||a - b|| / ||b|| (float64)."""
    worst = 0.0
    for k in b:
        x, y = a[k].double(), b[k].double()
        if y.dtype.is_floating_point and y.numel():
            worst = max(worst, float((x - y).norm() / y.norm().clamp(min=1e-30)))
    return worst


def test_lr_schedule_warmup_then_cosine():
    lrs = [lr_at(s, 100, 10, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1)
    assert lrs[10] == pytest.approx(0.1) and lrs[55] == pytest.approx(0.05)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 1e-3


def test_no_weight_decay_on_gains_biases_and_skip_gains():
    m = create_model("nf_seresnet_c20")
    decay, no_decay = param_groups(m, 5e-5)
    ids = {id(p) for p in no_decay["params"]}
    for name, p in m.named_parameters():
        is_gain_or_bias = name.endswith(("gain", "bias")) or p.ndim <= 1
        assert (id(p) in ids) == is_gain_or_bias, name
    assert decay["weight_decay"] == 5e-5 and no_decay["weight_decay"] == 0.0


def test_train_writes_complete_run_dir(tmp_path):
    recipe = load_recipe(str(write_recipe(tmp_path / "r.toml", train={"epochs": 2, "ema_decay": 0.9})))
    res = train(recipe, tmp_path / "run", progress=False, log=lambda *a: None)
    run = res.run_dir
    for f in ("weights.safetensors", "config.json", "metrics.jsonl", "summary.json", "curves.png"):
        assert (run / f).is_file(), f
    assert not (run / "checkpoint.safetensors").exists()
    summary = json.loads((run / "summary.json").read_text())
    for key in ("model", "dataset", "epochs", "test_accuracy", "images_per_second"):
        assert key in summary
    assert summary["epochs"] == 2 and summary["weights_are_ema"] is True and summary["images_per_second"] > 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    with safe_open(str(run / "weights.safetensors"), "pt") as f:  # safetensors, not pickle
        assert f.metadata()["model"] == "nf_resnet_c8"
    model, resolved = load_run_model(run)
    from nfdeploy.data import load_dataset

    data = load_dataset("synthetic", input_size=32, synthetic_size=128)
    acc = evaluate(model, data, torch.device("cpu"))["accuracy"]
    assert acc == pytest.approx(summary["test_accuracy"], abs=1e-12)
    assert resolved["model_config"]["num_classes"] == 10


def test_synthetic_task_is_learned(tmp_path):
    recipe = load_recipe(
        str(write_recipe(tmp_path / "r.toml", data={"synthetic_size": 512}, train={"epochs": 4, "agc_clip": 0.1}))
    )
    res = train(recipe, tmp_path / "run", progress=False, log=lambda *a: None)
    assert res.summary["test_accuracy"] >= 0.9


def _weights(run: Path) -> dict:
    return load_tensors(run / "weights.safetensors")[0]


def _torchrun(nproc: int, recipe: Path, out: Path) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "nfdeploy",
        "train",
        str(recipe),
        "--out",
        str(out),
        "--no-progress",
    ]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )


@pytest.mark.slow
def test_ddp_two_processes_equal_one_process_for_nf_but_not_bn(tmp_path):
    """4 SGD steps, global batch 32: 2 gloo processes x 16 vs 1 process x 32."""
    diffs = {}
    for model in ("nf_resnet_c8", "bn_resnet_c8"):
        recipe = write_recipe(tmp_path / f"{model}.toml", model=model)
        one = _torchrun(1, recipe, tmp_path / f"{model}-1")
        two = _torchrun(2, recipe, tmp_path / f"{model}-2")
        assert one.returncode == 0, one.stderr[-2000:]
        assert two.returncode == 0, two.stderr[-2000:]
        assert json.loads((tmp_path / f"{model}-2" / "summary.json").read_text())["world_size"] == 2
        diffs[model] = rel_diff(_weights(tmp_path / f"{model}-2"), _weights(tmp_path / f"{model}-1"))
    assert diffs["nf_resnet_c8"] <= 1e-5, diffs
    assert diffs["bn_resnet_c8"] > 1e-3, diffs  # per-process batch statistics change the function


@pytest.mark.slow
def test_grad_accumulation_equals_large_batch_for_nf_but_not_bn(tmp_path):
    diffs = {}
    for model in ("nf_resnet_c8", "bn_resnet_c8"):
        runs = {}
        for accum in (1, 4):
            recipe = load_recipe(
                str(write_recipe(tmp_path / f"{model}{accum}.toml", model=model, train={"grad_accum": accum}))
            )
            runs[accum] = train(recipe, tmp_path / f"{model}-{accum}", progress=False, log=lambda *a: None).run_dir
        diffs[model] = rel_diff(_weights(runs[4]), _weights(runs[1]))
    assert diffs["nf_resnet_c8"] <= 1e-5, diffs
    assert diffs["bn_resnet_c8"] > 1e-3, diffs


def _checkpoint_state(path: Path) -> dict | None:
    try:
        with safe_open(str(path), "pt") as f:
            return json.loads(f.metadata()["state"])
    except Exception:  # noqa: BLE001 - not written yet, or mid-write
        return None


@pytest.mark.slow
def test_resume_after_kill_reaches_identical_weights(tmp_path):
    recipe = write_recipe(
        tmp_path / "r.toml",
        model="nf_resnet_c20",
        data={"synthetic_size": 512, "augment": True},
        model_opts={"drop_rate": 0.2, "drop_path_rate": 0.1},
        train={"epochs": 3, "batch_size": 32, "checkpoint_every": 3, "ema_decay": 0.5},
    )
    ref = run_cli("train", str(recipe), "--out", str(tmp_path / "ref"), "--no-progress")
    assert ref.returncode == 0, ref.stderr

    run = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nfdeploy", "train", str(recipe), "--out", str(run), "--no-progress"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    state = None
    while time.time() < deadline and proc.poll() is None:
        state = _checkpoint_state(run / "checkpoint.safetensors")
        if state and state["step"] > 0:  # a mid-epoch checkpoint exists: the run is mid-epoch now
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed mid-epoch"
    assert not (run / "summary.json").exists() and not (run / "weights.safetensors").exists()

    resumed = run_cli("train", "--resume", str(run), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    a, b = _weights(run), _weights(tmp_path / "ref")
    assert a.keys() == b.keys()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    assert worst <= 1e-7, worst  # same seed, same CPU, same thread count: bitwise in practice
    hist = lambda p: [json.loads(x) for x in (p / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    for x, y in zip(hist(run), hist(tmp_path / "ref"), strict=True):
        assert x["train_loss"] == pytest.approx(y["train_loss"], abs=1e-9)
        assert x["test_accuracy"] == y["test_accuracy"]
    again = run_cli("train", "--resume", str(run), "--no-progress")
    assert again.returncode == 2 and "already complete" in again.stderr


@pytest.mark.parametrize(
    "override,needle",
    [
        ("train.lrr=0.1", "unknown key 'train.lrr'"),
        ("train.lr=-1", "train.lr = -1.0: must be > 0"),
        ('model.alpha="big"', "model.alpha = 'big': expected float"),
        ('data.dataset="mnist"', "data.dataset = 'mnist': must be one of"),
        ('model.name="resnet9"', "unknown model"),
        ("optim.lr=1", "unknown section"),
    ],
)
def test_recipe_errors_name_the_key(override, needle):
    with pytest.raises(RecipeError, match=None) as e:
        load_recipe("nf_digits", [override])
    assert needle in str(e.value)


def _one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr


def test_cli_bad_inputs_are_one_line_errors(tmp_path):
    _one_line_error(run_cli("train", "--set", "train.epochs=0", "--out", str(tmp_path / "a")), "train.epochs = 0")
    _one_line_error(run_cli("train", "no_such_recipe"), "unknown recipe 'no_such_recipe'")
    _one_line_error(
        run_cli(
            "train", "--dataset", "imagefolder", "--data-path", str(tmp_path / "missing"), "--out", str(tmp_path / "b")
        ),
        "missing",
    )
    bad = tmp_path / "cifar"
    bad.mkdir()
    (bad / "data_batch_1").write_bytes(b"\x80\x04garbage")
    _one_line_error(
        run_cli("train", "--dataset", "cifar10", "--data-path", str(bad), "--out", str(tmp_path / "c")), "cifar"
    )
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("precious")
    _one_line_error(run_cli("train", "--out", str(busy)), "already exists")
    assert (busy / "keep.txt").read_text() == "precious"
    _one_line_error(run_cli("train", "--resume", str(tmp_path / "nothing")), "nothing")
    for name in ("a", "b", "c"):
        assert not (tmp_path / name).exists()  # nothing half-created


def test_bundled_recipes_are_valid():
    recipes = sorted((REPO / "nfdeploy" / "recipes").glob("*.toml"))
    assert len(recipes) >= 2
    for path in recipes:
        load_recipe(str(path))
