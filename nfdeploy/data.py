"""In-memory image datasets for training NF-ResNets.

Every dataset is held as uint8 ``N x C x H x W`` tensors already resized to the
model input size (``H == W == input_size``).  Normalisation and augmentation are
applied per batch by :meth:`ImageDataset.batch`, with all randomness drawn from
a caller-supplied :class:`torch.Generator` so training is reproducible and
resumable.

Supported sources (see :func:`load_dataset`):

* ``digits``      scikit-learn's bundled 8x8 handwritten digits (nothing downloaded)
* ``cifar10``     the CIFAR-10 python-pickle batches in a local directory
* ``imagefolder`` ``root/train/<class>/*.png`` (+ ``root/test`` or ``root/val``),
                  or ``root/<class>/*`` with a seeded stratified split
* ``synthetic``   deterministic learnable random data, for tests

Problems with the data on disk are reported as :class:`DataError` with a
one-line message naming the path and what is wrong.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nfdeploy.errors import UserError, one_line
from nfdeploy.preprocess import (
    ImageReadError,
    Preprocessing,
    image_pixels,
    open_image,
    resize_uint8,
    square_preprocessing,
)

__all__ = [
    "image_folder_files",
    "DataError",
    "ImageSplit",
    "ImageDataset",
    "KNOWN_DATASETS",
    "IMAGE_EXTENSIONS",
    "load_dataset",
]

KNOWN_DATASETS = ("digits", "cifar10", "imagefolder", "synthetic")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_ALIASES = {"cifar-10": "cifar10", "cifar_10": "cifar10", "image_folder": "imagefolder", "image-folder": "imagefolder"}
_CHUNK = 4096  # images per chunk for statistics (bounds temporary memory)


class DataError(UserError, ValueError):
    """Bad/missing/corrupt dataset; message is one line naming the path and what is wrong."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


# --------------------------------------------------------------------------- containers


@dataclass
class ImageSplit:
    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class ImageDataset:
    name: str
    train: ImageSplit
    test: ImageSplit
    class_names: list[str]
    mean: tuple[float, ...]  # per channel, [0,1] pixel units
    std: tuple[float, ...]
    allow_flip: bool = False  # random horizontal flip during augmentation (never for digits)
    source: str | None = None  # where the data came from (path or description)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_chans(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def input_size(self) -> int:
        return int(self.train.images.shape[-1])

    @property
    def preprocessing(self) -> Preprocessing:
        """How an image file becomes this data's model input (nfdeploy.preprocess), as export records it."""
        return square_preprocessing(self.in_chans, self.input_size, self.mean, self.std)

    def normalize(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """float32 ``(x / 255 - mean) / std`` per channel (Preprocessing.normalize, the one implementation)."""
        return self.preprocessing.normalize(images_uint8)

    def augment(self, images_uint8: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Random translation (zero pad by ``input_size // 8`` then random crop, per-sample
        offsets) and, if :attr:`allow_flip`, a random horizontal flip. uint8 in, uint8 out.

        Randomness comes only from ``generator`` (torch's default generator if None) and is
        drawn in a fixed order: x offsets, y offsets, then flip coins (if flipping).
        """
        x = images_uint8
        b, _, h, w = x.shape
        pad = self.input_size // 8
        if pad > 0 and b > 0:
            ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
            oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
            padded = F.pad(x, (pad, pad, pad, pad))  # zeros
            rows = (oy[:, None] + torch.arange(h)[None, :])[:, None, :, None]  # B,1,H,1
            cols = (ox[:, None] + torch.arange(w)[None, :])[:, None, None, :]  # B,1,1,W
            bi = torch.arange(b)[:, None, None, None]
            ci = torch.arange(x.shape[1])[None, :, None, None]
            x = padded[bi, ci, rows, cols]
        if self.allow_flip and b > 0:
            flip = torch.rand(b, generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x

    def batch(
        self,
        split: ImageSplit,
        indices: torch.Tensor,
        augment: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised float32 images and int64 labels for ``split[indices]``."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        images = split.images[idx]
        if augment:
            images = self.augment(images, generator)
        return self.normalize(images), split.labels[idx]

    def describe(self) -> dict:
        """JSON-able summary."""

        def counts(split: ImageSplit) -> list[int]:
            return torch.bincount(split.labels, minlength=self.num_classes).tolist()

        return {
            "name": self.name,
            "source": self.source,
            "input_size": self.input_size,
            "in_chans": self.in_chans,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "train_size": len(self.train),
            "test_size": len(self.test),
            "train_class_counts": counts(self.train),
            "test_class_counts": counts(self.test),
            "mean": [float(m) for m in self.mean],
            "std": [float(s) for s in self.std],
            "allow_flip": bool(self.allow_flip),
        }


# --------------------------------------------------------------------------- helpers


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 images, in [0,1] pixel units."""
    c = images.shape[1]
    n = images.shape[0] * images.shape[2] * images.shape[3]
    if n == 0:
        raise DataError("cannot compute normalisation statistics of an empty split")
    s1 = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for s in range(0, images.shape[0], _CHUNK):
        x = images[s : s + _CHUNK].to(torch.float64) / 255.0
        s1 += x.sum(dim=(0, 2, 3))
        s2 += (x * x).sum(dim=(0, 2, 3))
    mean = s1 / n
    var = (s2 / n - mean * mean).clamp_min(0.0)
    std = var.sqrt().clamp_min(1e-6)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    try:
        tr, te = train_test_split(idx, test_size=test_fraction, stratify=labels, random_state=seed)
    except ValueError as exc:
        raise DataError(
            f"{what}: cannot make a stratified split with test_fraction={test_fraction}: {one_line(exc)}"
        ) from None
    return np.sort(tr), np.sort(te)


def _split(images: torch.Tensor, labels: torch.Tensor, idx: np.ndarray) -> ImageSplit:
    t = torch.as_tensor(idx, dtype=torch.long)
    return ImageSplit(images[t].contiguous(), labels[t].clone())


def _finish(name, train, test, class_names, allow_flip, source) -> ImageDataset:
    mean, std = channel_stats(train.images)
    return ImageDataset(name, train, test, list(class_names), mean, std, allow_flip=allow_flip, source=source)


# --------------------------------------------------------------------------- digits


def _load_digits(input_size: int, seed: int, test_fraction: float) -> ImageDataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.asarray(d.data, dtype=np.float64).reshape(-1, 1, 8, 8)
    y = np.asarray(d.target, dtype=np.int64)
    images = torch.from_numpy(np.clip(np.rint(x * (255.0 / 16.0)), 0, 255).astype(np.uint8))
    images = resize_uint8(images, input_size)
    labels = torch.from_numpy(y)
    tr, te = _stratified_split(y, test_fraction, seed, "digits")
    return _finish(
        "digits",
        _split(images, labels, tr),
        _split(images, labels, te),
        [str(i) for i in range(10)],
        False,
        "sklearn.datasets.load_digits",
    )


# --------------------------------------------------------------------------- cifar10

_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"
_CIFAR_META = "batches.meta"

# The only globals a CIFAR-10 batch needs: numpy array/dtype reconstruction (numpy 1.x and
# 2.x module paths, pickle protocols 2-5) and the codec helper protocol 2 uses for bytes.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("builtins", "bytes"),
    ("builtins", "bytearray"),
    ("builtins", "list"),
    ("builtins", "dict"),
    ("builtins", "tuple"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
}


class _ForbiddenGlobal(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except those in ``_SAFE_GLOBALS``.

    CIFAR-10's batches are pickles; unpickling arbitrary objects would let a crafted file
    run code (e.g. ``os.system`` via ``__reduce__``). Only plain containers (dicts with
    bytes keys, lists, bytes) and numpy array/dtype reconstruction are allowed.
    """

    def find_class(self, module: str, name: str):
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise _ForbiddenGlobal(f"forbidden global {module}.{name}")


def safe_unpickle(path: Path) -> object:
    """Load a pickle with :class:`_RestrictedUnpickler` (``encoding="bytes"``, as CIFAR's
    Python-2 pickles require). Any failure becomes a one-line :class:`DataError`."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {one_line(exc)}") from None
    try:
        return _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except _ForbiddenGlobal as exc:
        raise DataError(f"refusing to load {path}: not a plain CIFAR-10 pickle ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise DataError(f"corrupt or truncated CIFAR-10 file {path}: {one_line(exc)}") from None


def _get(d: dict, key: str):
    # CIFAR pickles have bytes keys under encoding="bytes"; also accept str keys.
    if key.encode() in d:
        return d[key.encode()]
    return d.get(key)


def _read_cifar_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    obj = safe_unpickle(path)
    if not isinstance(obj, dict):
        raise DataError(f"corrupt CIFAR-10 batch {path}: expected a dict, got {type(obj).__name__}")
    data, labels = _get(obj, "data"), _get(obj, "labels")
    if data is None or labels is None:
        raise DataError(f"corrupt CIFAR-10 batch {path}: missing 'data' or 'labels'")
    try:
        data = np.asarray(data)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DataError(f"corrupt CIFAR-10 batch {path}: {one_line(exc)}") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise DataError(
            f"corrupt CIFAR-10 batch {path}: data shape {tuple(data.shape)} with {labels.shape[0]} labels "
            f"(expected N x 3072 and N labels)"
        )
    if data.dtype != np.uint8:
        if not np.issubdtype(data.dtype, np.integer) or (data.size and (data.min() < 0 or data.max() > 255)):
            raise DataError(f"corrupt CIFAR-10 batch {path}: data dtype {data.dtype} is not 8-bit pixels")
        data = data.astype(np.uint8)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"corrupt CIFAR-10 batch {path}: labels outside 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels


def _load_cifar10(path: str | None, input_size: int) -> ImageDataset:
    root = _existing_dir(path, "cifar10")
    sub = root / "cifar-10-batches-py"
    if not (root / _CIFAR_META).exists() and sub.is_dir():
        root = sub
    for fname in (_CIFAR_META, *_CIFAR_TRAIN, _CIFAR_TEST):
        if not (root / fname).is_file():
            raise DataError(f"CIFAR-10 directory {root} is missing {fname}")
    meta = safe_unpickle(root / _CIFAR_META)
    names = _get(meta, "label_names") if isinstance(meta, dict) else None
    if not isinstance(names, (list, tuple)) or not names:
        raise DataError(f"corrupt CIFAR-10 metadata {root / _CIFAR_META}: no label_names list")
    class_names = [n.decode("utf-8", "replace") if isinstance(n, (bytes, bytearray)) else str(n) for n in names]

    parts = [_read_cifar_batch(root / f, len(class_names)) for f in _CIFAR_TRAIN]
    tr_x = np.concatenate([p[0] for p in parts])
    tr_y = np.concatenate([p[1] for p in parts])
    te_x, te_y = _read_cifar_batch(root / _CIFAR_TEST, len(class_names))
    train = ImageSplit(resize_uint8(torch.from_numpy(tr_x), input_size), torch.from_numpy(tr_y))
    test = ImageSplit(resize_uint8(torch.from_numpy(te_x), input_size), torch.from_numpy(te_y))
    return _finish("cifar10", train, test, class_names, True, str(root))


# --------------------------------------------------------------------------- imagefolder


def _existing_dir(path: str | None, name: str) -> Path:
    if path is None or str(path) == "":
        raise DataError(f"dataset {name!r} needs a path")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"dataset path {p} does not exist")
    if not p.is_dir():
        raise DataError(f"dataset path {p} is not a directory")
    return p


def _class_dirs(root: Path) -> list[Path]:
    return sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)


def _image_files(d: Path) -> list[Path]:
    return sorted(
        f for f in d.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".")
    )


def _load_image(f: Path, input_size: int, mode: str) -> np.ndarray:
    """C x H x W uint8 pixels of an image file: nfdeploy.preprocess's conversion, resize and centre crop."""
    try:
        return image_pixels(open_image(f), mode, input_size)
    except ImageReadError as exc:
        raise DataError(f"corrupt or unreadable image file {exc}") from None


def image_folder_files(path: str | Path) -> list[Path]:
    """Every image file under `path` (recursively, sorted by path): data without labels, e.g. int8 calibration
    images; DataError when there is none."""
    root = _existing_dir(str(path), "image folder")
    files = _image_files(root)
    if not files:
        raise DataError(f"{root} holds no images ({'/'.join(IMAGE_EXTENSIONS)})")
    return files


def _read_tree(root: Path, class_names: list[str], input_size: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for label, cname in enumerate(class_names):
        files = _image_files(root / cname)
        if not files:
            raise DataError(f"class folder {root / cname} has no images ({'/'.join(IMAGE_EXTENSIONS)})")
        for f in files:
            images.append(_load_image(f, input_size, mode))
            labels.append(label)
    return torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.long)


def _load_imagefolder(
    path: str | None, input_size: int, seed: int, test_fraction: float, in_chans: int
) -> ImageDataset:
    root = _existing_dir(path, "imagefolder")
    if in_chans not in (1, 3):
        raise DataError(f"imagefolder {root}: in_chans must be 1 (grayscale) or 3 (RGB), got {in_chans}")
    mode = "L" if in_chans == 1 else "RGB"
    test_root = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    train_root = root / "train" if (root / "train").is_dir() else None
    if train_root is None and test_root is not None:
        raise DataError(f"imagefolder {root} has a {test_root.name}/ subfolder but no train/ subfolder")
    if train_root is None:
        train_root = root

    class_names = [d.name for d in _class_dirs(train_root)]
    if not class_names:
        raise DataError(f"imagefolder {train_root} has no class subfolders")
    if test_root is not None:
        test_classes = [d.name for d in _class_dirs(test_root)]
        if test_classes != class_names:
            missing = sorted(set(class_names) - set(test_classes))
            extra = sorted(set(test_classes) - set(class_names))
            raise DataError(
                f"imagefolder {root}: class mismatch between {train_root.name}/ and {test_root.name}/ "
                f"(missing in test: {missing}, extra in test: {extra})"
            )

    images, labels = _read_tree(train_root, class_names, input_size, mode)
    if test_root is not None:
        train = ImageSplit(images, labels)
        test = ImageSplit(*_read_tree(test_root, class_names, input_size, mode))
    else:
        tr, te = _stratified_split(labels.numpy(), test_fraction, seed, f"imagefolder {root}")
        train, test = _split(images, labels, tr), _split(images, labels, te)
    return _finish("imagefolder", train, test, class_names, in_chans == 3, str(root))


# --------------------------------------------------------------------------- synthetic


def _load_synthetic(input_size: int, seed: int, size: int, num_classes: int, in_chans: int) -> ImageDataset:
    if size < 1 or num_classes < 1 or in_chans < 1:
        raise DataError(
            f"synthetic: synthetic_size ({size}), num_classes ({num_classes}) and in_chans ({in_chans}) must be >= 1"
        )
    g = torch.Generator().manual_seed(int(seed))
    # Each class: a smooth random mean pattern; samples = pattern + Gaussian noise.
    coarse = torch.rand(num_classes, in_chans, 4, 4, generator=g) * 200.0 + 27.5
    patterns = F.interpolate(coarse, size=(input_size, input_size), mode="bilinear", align_corners=False)

    def make(n: int) -> ImageSplit:
        labels = torch.arange(n) % num_classes
        labels = labels[torch.randperm(n, generator=g)]
        noise = torch.randn(n, in_chans, input_size, input_size, generator=g) * 32.0
        imgs = (patterns[labels] + noise).round_().clamp_(0, 255).to(torch.uint8)
        return ImageSplit(imgs, labels.to(torch.long))

    train = make(size)
    test = make(max(1, size // 4))
    return _finish(
        "synthetic",
        train,
        test,
        [f"class{i}" for i in range(num_classes)],
        False,
        f"synthetic(seed={seed}, size={size}, num_classes={num_classes}, in_chans={in_chans})",
    )


# --------------------------------------------------------------------------- entry point


def load_dataset(
    name: str,
    path: str | None = None,
    input_size: int = 32,
    seed: int = 0,
    test_fraction: float = 0.2,
    synthetic_size: int = 512,
    num_classes: int = 10,
    in_chans: int = 3,
) -> ImageDataset:
    """Load a dataset into memory as uint8 tensors at ``input_size``.

    ``path`` is required for ``cifar10`` and ``imagefolder`` and ignored otherwise.
    ``seed``/``test_fraction`` fix the stratified split of ``digits`` (and of an
    ``imagefolder`` without a test/val subfolder) and the ``synthetic`` data.
    ``num_classes`` applies to ``synthetic`` only; ``in_chans`` to ``synthetic`` and
    ``imagefolder`` (1 = grayscale, 3 = RGB) — digits are always 1-channel, CIFAR-10 3.
    """
    key = _ALIASES.get(str(name).strip().lower(), str(name).strip().lower())
    if key not in KNOWN_DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(KNOWN_DATASETS)}")
    if not isinstance(input_size, int) or isinstance(input_size, bool) or input_size < 1:
        raise DataError(f"input_size must be a positive int, got {input_size!r}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    if key == "digits":
        return _load_digits(input_size, seed, test_fraction)
    if key == "cifar10":
        return _load_cifar10(path, input_size)
    if key == "imagefolder":
        return _load_imagefolder(path, input_size, seed, test_fraction, in_chans)
    return _load_synthetic(input_size, seed, synthetic_size, num_classes, in_chans)
