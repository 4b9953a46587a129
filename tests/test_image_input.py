"""From an image file to an answer: the export records its preprocessing, writes a uint8 image-input graph (the
normalization folded into the first conv where exact, else explicit), parity judges that graph on the pixels its
float inputs came from, `nfdeploy predict` answers image files (one line per unreadable one), and a served uint8
model answers what the graph does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_cli
from PIL import Image

from nfdeploy.artifacts import Manifest
from nfdeploy.check.backends import export_backend, load_export_source
from nfdeploy.check.parity import ParityOptions, load_parity_data, parity_report
from nfdeploy.config import load_recipe
from nfdeploy.export import ExportOptions, export_run
from nfdeploy.metrics import compare_outputs
from nfdeploy.precision import PRECISIONS
from nfdeploy.preprocess import PREPROCESSING_JSON, Preprocessing
from nfdeploy.runtime.base import run_batched
from nfdeploy.serve.predict import PredictOptions, predict_images
from nfdeploy.train import train

quiet = lambda *a, **k: None  # noqa: E731
FLOAT, PIXELS = "onnxruntime-cpu-fp32", "onnxruntime-cpu-fp32-uint8"


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """A short digits run exported with the image-input graph folded (default) and explicit."""
    d = tmp_path_factory.mktemp("image")
    run = train(load_recipe("nf_digits", {"train.epochs": 3, "train.threads": 2}), d / "run", progress=False, log=quiet)
    out = {}
    for norm in ("fold", "explicit"):
        opts = ExportOptions(precisions=("fp32",), image_input=True, image_norm=norm)
        out[norm] = export_run(run.run_dir, d / f"export-{norm}", opts, log=quiet).out_dir
    return out


@pytest.fixture(scope="module")
def digit_pngs(exports, tmp_path_factory) -> tuple[list[Path], np.ndarray]:
    """The first 48 test images of the run's split as PNG files at the model's size, and their float inputs."""
    d = tmp_path_factory.mktemp("pngs")
    data = load_parity_data(load_export_source(exports["fold"]), max_samples=48)
    paths = []
    for i, px in enumerate(data.pixels):
        paths.append(d / f"{i:03d}.png")
        Image.fromarray(px[0]).save(paths[-1])
    return paths, data.x


def test_the_export_records_its_preprocessing(exports):
    m = Manifest.read(exports["fold"])
    prep = m.input.image_preprocessing
    on_disk = Preprocessing.read_json(exports["fold"] / PREPROCESSING_JSON)
    assert prep == on_disk and prep.color == "L" and prep.crop_size == 32 and list(prep.mean) == m.input.mean
    meta = {p.key: p.value for p in onnx.load(str(exports["fold"] / m.image_input.file)).metadata_props}
    assert json.loads(meta["nfdeploy.preprocessing"]) == prep.to_dict()
    assert m.checks["image_input"]["status"] == "pass" and m.checks["image_input"]["top1_agreement"] == 1.0


def test_the_normalization_folds_where_exact_and_says_why_not_elsewhere(exports):
    """The stem conv pads, so the mean stays one explicit Sub; 1/(255 std) folds into its weight. Explicit mode
    keeps Python's order: Cast, Div, Sub, Div."""
    ops = {k: [n.op_type for n in onnx.load(str(v / "model.uint8.onnx")).graph.node][:4] for k, v in exports.items()}
    assert ops["fold"][:3] == ["Cast", "Sub", "Conv"] and ops["explicit"] == ["Cast", "Div", "Sub", "Div"]
    folded = json.loads((exports["fold"] / "fold_report.json").read_text())["image_input"]
    assert folded["normalization"] == "folded" and folded["explicit"] == ["Cast", "Sub 255 mean"]
    assert "pad" in folded["why"] and Manifest.read(exports["fold"]).image_input.details["normalization"] == folded


def test_the_uint8_graph_computes_the_float_graphs_function(exports, digit_pngs):
    """ONNX Runtime fp32 on the uint8 graph fed pixels vs on the float graph fed their normalised inputs:
    bitwise equal where the normalization is explicit in the same order; within fp32 tolerance where it folds."""
    _, x = digit_pngs
    data = load_parity_data(load_export_source(exports["fold"]), max_samples=48)
    for norm, export in exports.items():
        with export_backend(export, FLOAT) as f, export_backend(export, PIXELS) as u:
            a, b = run_batched(f, x), run_batched(u, data.pixels)
        assert (a.argmax(1) == b.argmax(1)).all()
        if norm == "explicit":
            assert np.array_equal(a, b)
        else:
            assert compare_outputs(b, a)["rel_l2"] <= PRECISIONS["fp32"].rel_l2 and not np.array_equal(a, b)


def test_parity_judges_the_image_input_backends_on_pixels(exports):
    rep = parity_report(exports["fold"], options=ParityOptions(only=["uint8"], max_samples=64), log=quiet)
    rows = {r.name: r for r in rep.backends}
    assert rows[PIXELS].status.value == "pass" and rows[PIXELS].top1_agreement == 1.0
    assert rows["openvino-cpu-fp32-uint8"].status.value in ("pass", "skipped")


@pytest.mark.parametrize("backend", [FLOAT, PIXELS, "torch-cpu-fp32-folded", "openvino-cpu-fp32"])
def test_predict_on_png_files_agrees_with_the_float_tensors(exports, digit_pngs, backend):
    """predict reads the PNG files through the recorded preprocessing: its top-1 is the backend's own top-1 on
    parity's float tensors (for the image-input backend: the float graph's in ONNX Runtime)."""
    paths, x = digit_pngs
    with export_backend(exports["explicit"], FLOAT if backend == PIXELS else backend) as b:
        want = run_batched(b, x)
    opts = PredictOptions(backend=backend, top=3, batch=16, allow_unchecked=True)
    result = predict_images(exports["explicit"], paths, opts, log=quiet)
    assert not result.failed and result.backend == backend
    assert [int(p.top[0][0]) for p in result.predictions] == list(want.argmax(1))
    for p in result.predictions:
        probs = [q for _, q in p.top]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-12


def test_predict_names_each_bad_file_and_answers_the_rest(exports, digit_pngs, tmp_path):
    paths, _ = digit_pngs
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (90, 140, 3), dtype=np.uint8)).save(tmp_path / "photo.jpg")
    (tmp_path / "notes.png").write_text("not an image")
    data = paths[0].read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    files = [str(paths[0]), str(tmp_path / "photo.jpg"), str(tmp_path / "notes.png"), str(tmp_path / "cut.png"),
             str(tmp_path / "missing.png"), str(paths[1])]  # fmt: skip
    r = run_cli("predict", str(exports["fold"]), *files, "--backend", PIXELS, "--allow-unchecked", "--top", "2")
    assert r.returncode == 1, r.stderr
    answered = [line.split(":")[0] for line in r.stdout.splitlines()]
    assert answered == [files[0], files[1], files[5]], r.stdout
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: {tmp_path / 'notes.png'}: not an image Pillow can read",
        f"error: {tmp_path / 'cut.png'}: unreadable image (image file is truncated)",
        f"error: {tmp_path / 'missing.png'}: no such file",
    ], r.stderr
    r = run_cli("predict", str(exports["fold"]), files[0], "--json", "--backend", PIXELS, "--allow-unchecked")
    doc = json.loads(r.stdout)
    assert r.returncode == 0 and doc["backend"] == PIXELS and len(doc["predictions"][0]["top"]) == 5


def test_an_export_without_recorded_preprocessing_is_refused_in_one_line(exports, tmp_path):
    import shutil

    old = Path(shutil.copytree(exports["fold"], tmp_path / "old"))
    m = json.loads((old / "manifest.json").read_text())
    del m["input"]["preprocessing"]
    (old / "manifest.json").write_text(json.dumps(m))
    r = run_cli("predict", str(old), str(tmp_path / "x.png"))
    assert r.returncode == 2 and "records no image preprocessing" in r.stderr and len(r.stderr.splitlines()) == 1


def test_a_served_uint8_model_answers_what_the_graph_does(exports, digit_pngs):
    pytest.importorskip("pytriton", reason="nfdeploy[serve] is not installed (its wheel carries tritonserver)")
    from nfdeploy.serve.client import Client
    from nfdeploy.serve.repository import PackageOptions
    from nfdeploy.serve.server import ModelServer, ServeOptions
    from nfdeploy.serve.tritonserver import ServerAddress, free_port

    data = load_parity_data(load_export_source(exports["fold"]), max_samples=16)
    with export_backend(exports["fold"], PIXELS) as b:
        want = run_batched(b, data.pixels)
    address = ServerAddress("127.0.0.1", free_port(), free_port(), free_port())
    opts = ServeOptions(package=PackageOptions(backend=PIXELS, max_batch=8, allow_unchecked=True), address=address)
    with ModelServer(exports["fold"], opts, log=quiet) as server:
        params = next(iter(server.models.values()))
        client = Client(server.urls["grpc"], "nf_resnet_c8", "input", "logits")
        got = np.concatenate([client.infer(data.pixels[i : i + 1], 10.0, "UINT8")[0] for i in range(16)])
        client.close()
    assert "uint8" in params["nfdeploy.input"] and params["nfdeploy.backend"] == PIXELS
    assert np.array_equal(got, want)


def test_the_load_test_refuses_a_pixel_backend_in_one_line(exports):
    from nfdeploy.serve.expectation import expectation
    from nfdeploy.serve.loadtest_result import LoadTestError

    with pytest.raises(LoadTestError, match="takes uint8 pixels and the load test sends float32 samples"):
        expectation(exports["fold"], PIXELS, 4, 0)


def test_image_norm_needs_image_input_and_timm_records_its_eval_transform():
    from nfdeploy.export import OnnxOverrides, export_options
    from nfdeploy.export.export_dir import ExportError, timm_preprocessing

    with pytest.raises(ExportError, match="--image-norm only applies to the image-input graph"):
        export_options("default", OnnxOverrides(image_norm="explicit"))
    assert export_options("default", OnnxOverrides(image_input=True)).image_norm == "fold"
    cfg = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "interpolation": "bicubic", "crop_pct": 0.875}
    prep = timm_preprocessing(cfg, (3, 224, 224))
    assert (prep.color, prep.resize_size, prep.crop_size, prep.interpolation) == ("RGB", 256, 224, "bicubic")
    assert timm_preprocessing({}, (3, 224, 224)) is None
