"""`nfdeploy pipeline` as a library call: every option is validated before any work starts."""

from pathlib import Path

import pytest
from conftest import run_cli

from nfdeploy.config import RecipeError
from nfdeploy.export import ExportError
from nfdeploy.perf import BenchError
from nfdeploy.workflow import PipelineError, run_pipeline

quiet = lambda *a, **k: None  # noqa: E731


@pytest.mark.parametrize(
    "kwargs, error, needle",
    [
        ({"batches": "1,x"}, BenchError, "comma list of integers"),
        ({"batches": "0,8"}, BenchError, "positive"),
        ({"min_time": 0.0}, PipelineError, "min_time"),
        ({"recipe": "no_such_recipe"}, RecipeError, "unknown recipe"),
        ({"preset": "no_such_preset"}, ExportError, "unknown export preset"),
        ({"overrides": {"train.epochs": 0}}, RecipeError, "epochs"),
    ],
)
def test_bad_options_fail_before_any_work(tmp_path, kwargs, error, needle):
    out = tmp_path / "p"
    with pytest.raises(error, match=needle):
        run_pipeline(out=out, log=quiet, progress=False, **kwargs)
    assert not out.exists()  # nothing trained, nothing written


def test_refuses_to_replace_a_folder_that_is_not_a_pipeline(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(PipelineError, match="not a previous pipeline dir"):
        run_pipeline(out=out, log=quiet, progress=False)
    assert (out / "notes.txt").read_text() == "keep me"


def test_cli_bad_batch_is_one_line_and_trains_nothing(tmp_path):
    proc = run_cli("pipeline", "--out", str(tmp_path / "p"), "--batch", "8,abc")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert "[1/4] train" not in proc.stdout and not (tmp_path / "p").exists()


@pytest.mark.slow
def test_pipeline_end_to_end_on_digits(tmp_path):
    res = run_pipeline(
        out=tmp_path / "p",
        overrides={"train.epochs": 2, "train.threads": 2},
        trt=False,
        batches="1,4",
        min_time=0.1,
        progress=False,
        log=quiet,
    )
    assert res.ok and res.run_dir == tmp_path / "p" / "run" and (res.export_dir / "manifest.json").is_file()
    for name in ("parity.json", "parity.md", "bench.json", "bench.md"):
        assert (res.reports_dir / name).is_file()
    assert Path(res.parity.out_dir) == res.reports_dir and res.bench.batches == [1, 4]
