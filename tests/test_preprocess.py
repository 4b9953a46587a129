"""Preprocessing as data: one function from an image file to the model's input, the same one the datasets use."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from nfdeploy.data import load_dataset
from nfdeploy.preprocess import ImageReadError, Preprocessing, resize_uint8, square_preprocessing


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", input_size=32)


def test_a_png_of_a_test_image_gives_back_the_datasets_input(digits, tmp_path):
    """The digits test split written as PNG files and read back through the recorded preprocessing gives the very
    tensors parity feeds the model (bitwise), at the model's size and from the 8x8 originals alike."""
    from sklearn.datasets import load_digits

    prep = digits.preprocessing
    assert prep == square_preprocessing(1, 32, digits.mean, digits.std) and prep.color == "L"
    for i in range(5):
        Image.fromarray(digits.test.images[i, 0].numpy()).save(tmp_path / f"{i}.png")
        assert np.array_equal(prep.read(tmp_path / f"{i}.png"), digits.test.images[i].numpy())
    x = prep.normalize(np.stack([prep.read(tmp_path / f"{i}.png") for i in range(5)]))
    assert torch.equal(x, digits.batch(digits.test, torch.arange(5))[0])
    raw = np.clip(np.rint(load_digits().data[0].reshape(8, 8) * 255 / 16), 0, 255).astype(np.uint8)
    Image.fromarray(raw).save(tmp_path / "raw8.png")  # the same resize the dataset made from the 8x8 original
    want = resize_uint8(torch.from_numpy(raw)[None, None], 32)[0].numpy()
    assert np.array_equal(prep.read(tmp_path / "raw8.png"), want)


def test_any_size_and_mode_becomes_the_models_shape(tmp_path):
    prep = Preprocessing("RGB", 32, 36, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), "bicubic")
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 256, (48, 96, 3), dtype=np.uint8)  # H 48, W 96
    Image.fromarray(wide).save(tmp_path / "wide.jpg", quality=95)
    Image.fromarray(wide[..., 0]).save(tmp_path / "gray.png")
    Image.fromarray(np.dstack([wide, np.full((48, 96, 1), 255, np.uint8)])).save(tmp_path / "rgba.png")
    for name in ("wide.jpg", "gray.png", "rgba.png"):
        assert prep.read(tmp_path / name).shape == (3, 32, 32)
    # shorter side 48 -> 36 (width 72), then the centre 32 x 32: rows 2..34, columns 20..52 of the resized image
    t = torch.from_numpy(wide.transpose(2, 0, 1).copy())[None].float()
    resized = torch.nn.functional.interpolate(t, (36, 72), mode="bicubic", align_corners=False, antialias=True)
    want = resized.round().clamp(0, 255).to(torch.uint8)[0, :, 2:34, 20:52].numpy()
    Image.fromarray(wide).save(tmp_path / "wide.png")
    assert np.array_equal(prep.read(tmp_path / "wide.png"), want)


def test_a_bad_file_is_one_line_naming_it(tmp_path):
    prep = square_preprocessing(1, 32, (0.3,), (0.3,))
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)  # incompressible: a long data stream
    Image.fromarray(noise).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.png").write_text("not an image")
    cases = {"missing.png": "no such file", "notes.png": "not an image", "cut.png": "unreadable image"}
    for name, why in cases.items():
        with pytest.raises(ImageReadError) as e:
            prep.read(tmp_path / name)
        assert str(e.value).startswith(f"{tmp_path / name}: {why}") and "\n" not in str(e.value)


def test_the_record_reads_back_and_states_the_formula(tmp_path):
    prep = Preprocessing("RGB", 224, 256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic")
    (tmp_path / "p.json").write_text(json.dumps(prep.to_dict()))
    assert Preprocessing.read_json(tmp_path / "p.json") == prep
    d = prep.to_dict()
    assert d["pixel_divisor"] == 255.0 and d["resize"]["shorter_side"] == 256 and d["crop_size"] == 224
    with pytest.raises(ValueError, match="do not match color"):
        Preprocessing("RGB", 32, 32, (0.5,), (0.5,))
