import json
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from nfdeploy.data import DataError, ImageDataset, load_dataset

# ----------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", input_size=16, seed=0)


def test_digits_split_shapes_and_stratification(digits):
    ds = digits
    assert isinstance(ds, ImageDataset)
    assert len(ds.train) + len(ds.test) == 1797
    assert len(ds.test) == 360  # ceil(0.2 * 1797)
    assert ds.train.images.shape == (len(ds.train), 1, 16, 16)
    assert ds.train.images.dtype == torch.uint8 and ds.train.labels.dtype == torch.int64
    assert (ds.num_classes, ds.in_chans, ds.input_size) == (10, 1, 16)
    assert ds.class_names == [str(i) for i in range(10)]
    assert not ds.allow_flip
    tr = torch.bincount(ds.train.labels, minlength=10).double()
    te = torch.bincount(ds.test.labels, minlength=10).double()
    # stratified: per-class test fraction is ~0.2 for every class
    assert torch.all(((te / (tr + te)) - 0.2).abs() < 0.02)
    # value range: digits 0..16 scaled to use 0..255
    assert int(ds.train.images.min()) == 0 and int(ds.train.images.max()) == 255
    d = ds.describe()
    json.dumps(d)
    assert d["train_size"] == len(ds.train) and d["input_size"] == 16


def test_digits_split_determinism(digits):
    same = load_dataset("digits", input_size=16, seed=0)
    assert torch.equal(same.train.images, digits.train.images)
    assert torch.equal(same.test.labels, digits.test.labels)
    other = load_dataset("digits", input_size=16, seed=1)
    assert not torch.equal(other.train.images, digits.train.images)
    # native size keeps the original 8x8 pixels exactly
    native = load_dataset("digits", input_size=8, seed=0)
    assert torch.equal(native.test.labels, digits.test.labels)
    assert native.train.images.shape[-1] == 8


def test_digits_normalisation_stats(digits):
    x = digits.normalize(digits.train.images).double()
    assert abs(float(x.mean())) < 1e-3
    assert abs(float(x.std()) - 1.0) < 1e-3
    assert 0.0 < digits.mean[0] < 1.0 and digits.std[0] > 0


def test_batch_no_augment_is_normalize(digits):
    idx = torch.tensor([5, 0, 17, 3])
    x, y = digits.batch(digits.train, idx)
    assert x.dtype == torch.float32 and x.shape == (4, 1, 16, 16)
    assert torch.equal(x, digits.normalize(digits.train.images[idx]))
    assert torch.equal(y, digits.train.labels[idx])


def test_augment_determinism_and_no_flip_for_digits(digits):
    idx = torch.arange(64)
    a, ya = digits.batch(digits.train, idx, augment=True, generator=torch.Generator().manual_seed(1))
    b, _ = digits.batch(digits.train, idx, augment=True, generator=torch.Generator().manual_seed(1))
    c, _ = digits.batch(digits.train, idx, augment=True, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(ya, digits.train.labels[idx])
    # digits are never flipped: augmented images are pure translations (pad 2) of originals
    raw = digits.augment(digits.train.images[idx], torch.Generator().manual_seed(1))
    orig = torch.nn.functional.pad(digits.train.images[idx], (2, 2, 2, 2))
    for i in range(8):
        assert any(torch.equal(raw[i], orig[i, :, dy : dy + 16, dx : dx + 16]) for dy in range(5) for dx in range(5))


def test_flip_used_for_rgb():
    ds = load_dataset("synthetic", input_size=8, synthetic_size=64, num_classes=4, seed=3)
    ds.allow_flip = True
    orig = ds.train.images[:64]
    out = ds.augment(orig, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(orig, (1, 1, 1, 1))
    flipped = 0
    for i in range(64):
        crops = [padded[i, :, dy : dy + 8, dx : dx + 8] for dy in range(3) for dx in range(3)]
        plain = any(torch.equal(out[i], c) for c in crops)
        flip = any(torch.equal(out[i], c.flip(-1)) for c in crops)
        assert plain or flip
        flipped += flip and not plain
    assert 10 < flipped < 54


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_deterministic_and_learnable():
    a = load_dataset("synthetic", input_size=12, synthetic_size=200, num_classes=5, in_chans=2, seed=7)
    b = load_dataset("synthetic", input_size=12, synthetic_size=200, num_classes=5, in_chans=2, seed=7)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert a.train.images.shape == (200, 2, 12, 12) and len(a.test) == 50
    assert (a.num_classes, a.in_chans) == (5, 2)
    # nearest-class-mean classifier on the train split separates the test split
    xtr = a.train.images.flatten(1).double()
    means = torch.stack([xtr[a.train.labels == k].mean(0) for k in range(5)])
    pred = torch.cdist(a.test.images.flatten(1).double(), means).argmin(1)
    assert (pred == a.test.labels).double().mean() > 0.9


# ----------------------------------------------------------------------------- imagefolder


def _write_png(path, color, size=(10, 14)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


COLORS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "eel": (30, 30, 200)}


def _tree(root, n, classes=COLORS):
    for cname, color in classes.items():
        for i in range(n):
            _write_png(root / cname / f"{i}.png", tuple(min(255, c + 5 * i) for c in color))


def test_imagefolder_train_test(tmp_path):
    _tree(tmp_path / "train", 3)
    _tree(tmp_path / "test", 2)
    ds = load_dataset("imagefolder", str(tmp_path), input_size=8)
    assert ds.class_names == ["cat", "dog", "eel"]
    assert ds.train.images.shape == (9, 3, 8, 8) and len(ds.test) == 6
    assert ds.allow_flip
    assert torch.equal(ds.test.labels, torch.tensor([0, 0, 1, 1, 2, 2]))
    # solid-colour images survive resize/crop exactly
    assert ds.train.images[0, :, 4, 4].tolist() == [200, 30, 30]
    gray = load_dataset("imagefolder", str(tmp_path), input_size=8, in_chans=1)
    assert gray.in_chans == 1 and not gray.allow_flip


def test_imagefolder_without_test_split(tmp_path):
    _tree(tmp_path, 5)
    a = load_dataset("imagefolder", str(tmp_path), input_size=6, test_fraction=0.4, seed=0)
    b = load_dataset("imagefolder", str(tmp_path), input_size=6, test_fraction=0.4, seed=0)
    assert len(a.train) == 9 and len(a.test) == 6
    assert torch.bincount(a.test.labels).tolist() == [2, 2, 2]
    assert torch.equal(a.test.images, b.test.images)


def test_imagefolder_errors(tmp_path):
    _tree(tmp_path / "train", 2)
    _tree(tmp_path / "test", 1, {"cat": (1, 2, 3), "dog": (1, 2, 3)})
    with pytest.raises(DataError, match="class mismatch"):
        load_dataset("imagefolder", str(tmp_path))
    _tree(tmp_path / "test", 1)
    bad = tmp_path / "train" / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(DataError, match="broken.png") as ei:
        load_dataset("imagefolder", str(tmp_path))
    assert "\n" not in str(ei.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no class"):
        load_dataset("imagefolder", str(empty))
    (empty / "cls").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_dataset("imagefolder", str(empty))


# ----------------------------------------------------------------------------- cifar10


def _cifar_dir(root, n=6):
    rng = np.random.default_rng(0)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    names = [f"c{i}".encode() for i in range(10)]
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_vis": 3072}, f)
    for fname, proto in [(f"data_batch_{i}", 2 + i % 4) for i in range(1, 6)] + [("test_batch", 5)]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).tolist()
        with open(d / fname, "wb") as f:
            pickle.dump({b"batch_label": b"x", b"data": data, b"labels": labels}, f, protocol=proto)
    return d


def test_cifar10_load(tmp_path):
    d = _cifar_dir(tmp_path)
    ds = load_dataset("cifar10", str(tmp_path))
    assert ds.train.images.shape == (30, 3, 32, 32) and len(ds.test) == 6
    assert ds.class_names[:2] == ["c0", "c1"] and ds.allow_flip
    with open(d / "data_batch_1", "rb") as f:
        raw = pickle.load(f)
    assert torch.equal(ds.train.images[:6].reshape(6, -1), torch.from_numpy(raw[b"data"]))
    assert ds.train.labels[:6].tolist() == raw[b"labels"]
    small = load_dataset("cifar10", str(d), input_size=16)  # the subfolder itself also works
    assert small.train.images.shape == (30, 3, 16, 16)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_cifar10_corrupt_and_malicious(tmp_path):
    d = _cifar_dir(tmp_path)
    full = (d / "data_batch_3").read_bytes()
    (d / "data_batch_3").write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset("cifar10", str(d))
    with open(d / "data_batch_3", "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": [0]}, f)
    with pytest.raises(DataError, match="forbidden global .*system"):
        load_dataset("cifar10", str(d))
    (d / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing data_batch_3"):
        load_dataset("cifar10", str(d))


# ----------------------------------------------------------------------------- general errors


def test_path_and_name_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("imagefolder", str(tmp_path / "nope"))
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("cifar10", str(tmp_path / "nope"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="not a directory"):
        load_dataset("cifar10", str(tmp_path / "file.txt"))
    with pytest.raises(DataError, match="needs a path"):
        load_dataset("imagefolder")
    with pytest.raises(DataError, match="unknown dataset 'mnist'.*digits") as ei:
        load_dataset("mnist")
    assert isinstance(ei.value, ValueError)
