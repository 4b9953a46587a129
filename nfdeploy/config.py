"""Recipes: TOML files naming the model, the data and the training settings.

    [model]  name = "nf_resnet_c20"  + any NFResNetCfg field (alpha, act, drop_rate, ...)
    [data]   dataset, path, input_size, test_fraction, seed, augment, ...
    [train]  epochs, batch_size, lr, ...

Unknown sections or keys and ill-typed or out-of-range values raise RecipeError naming the key.
Command-line overrides use dotted keys (`train.lr=0.05`) whose values are parsed as TOML.
"""

from __future__ import annotations

import tomllib
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nfdeploy.errors import UserError
from nfdeploy.models import CFG_FIELDS, get_config, list_models

DATASETS = ("digits", "cifar10", "imagefolder", "synthetic")
RECIPE_DIR = Path(__file__).resolve().parent / "recipes"  # package data: ships in the wheel
DEFAULT_RECIPE = "nf_digits"
# Fields that come from the data, not the recipe.
_DERIVED_MODEL_FIELDS = {"num_classes", "in_chans", "input_size"}


class RecipeError(UserError, ValueError):
    """Invalid recipe; the message names the offending key."""


@dataclass
class ModelSection:
    name: str = "nf_resnet_c8"
    options: dict[str, Any] = field(default_factory=dict)  # NFResNetCfg overrides


@dataclass
class DataSection:
    dataset: str = "digits"
    path: str = ""
    input_size: int = 32
    test_fraction: float = 0.2
    seed: int = 0
    augment: bool = True
    synthetic_size: int = 512
    num_classes: int = 10  # synthetic only
    in_chans: int = 3  # synthetic / imagefolder

    def load(self, input_size: int | None = None):
        """The dataset this section names, resized to `input_size` (default: the section's)."""
        from nfdeploy.data import load_dataset

        return load_dataset(
            self.dataset,
            self.path or None,
            input_size=input_size or self.input_size,
            seed=self.seed,
            test_fraction=self.test_fraction,
            synthetic_size=self.synthetic_size,
            num_classes=self.num_classes,
            in_chans=self.in_chans,
        )


@dataclass
class TrainSection:
    epochs: int = 30
    batch_size: int = 64  # global batch, over all processes and micro-batches
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-5  # not applied to gains and biases
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    agc_clip: float = 0.01  # lambda; 0 disables AGC
    agc_eps: float = 1e-3
    ema_decay: float = 0.0  # 0 disables the weight EMA
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU) | off | bf16 | fp16
    grad_accum: int = 1  # micro-batches per optimizer step
    seed: int = 0
    checkpoint_every: int = 50  # optimizer steps; also at every epoch end
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default


@dataclass
class Recipe:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    source: str = "<defaults>"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": {"name": self.model.name, **self.model.options},
            "data": asdict(self.data),
            "train": asdict(self.train),
            "source": self.source,
        }


_SECTIONS = {"data": DataSection, "train": TrainSection}


def _check_type(key: str, value: Any, expected: Any) -> Any:
    origin = typing.get_origin(expected)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        ok = isinstance(value, float)
    elif expected is str:
        ok = isinstance(value, str)
    elif origin is tuple:
        if isinstance(value, list):
            value = tuple(value)
        ok = isinstance(value, tuple) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    elif origin is typing.Literal:
        ok = value in typing.get_args(expected)
        if not ok:
            raise RecipeError(f"{key} = {value!r}: must be one of {list(typing.get_args(expected))}")
    else:
        ok = True
    if not ok:
        name = getattr(expected, "__name__", str(expected))
        raise RecipeError(f"{key} = {value!r}: expected {name}, got {type(value).__name__}")
    return value


def _model_section(raw: dict[str, Any], source: str) -> ModelSection:
    raw = dict(raw)
    name = raw.pop("name", ModelSection.name)
    if not isinstance(name, str) or name not in list_models():
        raise RecipeError(f"model.name = {name!r}: unknown model; known: {', '.join(list_models())}")
    hints = typing.get_type_hints(type(get_config(name)))
    options = {}
    for key, value in raw.items():
        if key not in CFG_FIELDS or key in _DERIVED_MODEL_FIELDS:
            why = " (set by the dataset)" if key in _DERIVED_MODEL_FIELDS else ""
            raise RecipeError(f"unknown key 'model.{key}' in {source}{why}")
        options[key] = _check_type(f"model.{key}", value, hints[key])
    try:
        get_config(name, **options)
    except (KeyError, ValueError) as e:
        raise RecipeError(f"model: {e}") from None
    return ModelSection(name=name, options=options)


def _section(cls: type, prefix: str, raw: dict[str, Any], source: str) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        if key not in hints:
            raise RecipeError(f"unknown key '{prefix}.{key}' in {source}")
        kwargs[key] = _check_type(f"{prefix}.{key}", value, hints[key])
    return cls(**kwargs)


def _validate(r: Recipe) -> Recipe:
    d, t = r.data, r.train

    def need(cond: bool, key: str, msg: str) -> None:
        if not cond:
            raise RecipeError(f"{key} = {eval_key(r, key)!r}: {msg}")

    need(d.dataset in DATASETS, "data.dataset", f"must be one of {list(DATASETS)}")
    need(d.input_size >= 8, "data.input_size", "must be >= 8")
    need(0.0 < d.test_fraction < 1.0, "data.test_fraction", "must be in (0, 1)")
    need(d.synthetic_size >= 8, "data.synthetic_size", "must be >= 8")
    need(d.num_classes >= 2, "data.num_classes", "must be >= 2")
    need(d.in_chans in (1, 3), "data.in_chans", "must be 1 or 3")
    need(
        d.dataset not in ("cifar10", "imagefolder") or bool(d.path), "data.path", f"required for dataset {d.dataset!r}"
    )
    need(t.epochs >= 1, "train.epochs", "must be >= 1")
    need(t.batch_size >= 1, "train.batch_size", "must be >= 1")
    need(t.lr > 0, "train.lr", "must be > 0")
    need(0.0 <= t.momentum < 1.0, "train.momentum", "must be in [0, 1)")
    need(t.weight_decay >= 0, "train.weight_decay", "must be >= 0")
    need(t.warmup_epochs >= 0, "train.warmup_epochs", "must be >= 0")
    need(0.0 <= t.label_smoothing < 1.0, "train.label_smoothing", "must be in [0, 1)")
    need(t.agc_clip >= 0, "train.agc_clip", "must be >= 0 (0 disables AGC)")
    need(t.agc_eps > 0, "train.agc_eps", "must be > 0")
    need(0.0 <= t.ema_decay < 1.0, "train.ema_decay", "must be in [0, 1)")
    need(t.amp in ("auto", "off", "bf16", "fp16"), "train.amp", "must be auto, off, bf16 or fp16")
    need(t.grad_accum >= 1, "train.grad_accum", "must be >= 1")
    need(t.batch_size % t.grad_accum == 0, "train.grad_accum", f"must divide train.batch_size ({t.batch_size})")
    need(t.checkpoint_every >= 1, "train.checkpoint_every", "must be >= 1")
    need(t.device in ("auto", "cpu", "cuda"), "train.device", "must be auto, cpu or cuda")
    need(t.threads >= 0, "train.threads", "must be >= 0")
    return r


def eval_key(r: Recipe, dotted: str) -> Any:
    section, key = dotted.split(".", 1)
    return getattr(getattr(r, section), key)


def recipe_from_dict(raw: dict[str, Any], source: str = "<dict>") -> Recipe:
    unknown = set(raw) - {"model", "data", "train"}
    if unknown:
        raise RecipeError(f"unknown section(s) {sorted(unknown)} in {source}; expected model, data, train")
    for name in ("model", "data", "train"):
        if not isinstance(raw.get(name, {}), dict):
            raise RecipeError(f"'{name}' in {source} must be a table")
    recipe = Recipe(
        model=_model_section(raw.get("model", {}), source),
        data=_section(DataSection, "data", raw.get("data", {}), source),
        train=_section(TrainSection, "train", raw.get("train", {}), source),
        source=source,
    )
    return _validate(recipe)


def resolve_recipe_path(name_or_path: str) -> Path:
    """The recipe file for `name_or_path`.

    A path ending in .toml, or any existing path, is taken as is (it must be a file). Otherwise it
    is a recipe name: NAME.toml in ./models under the current working directory if that exists,
    else in the bundled nfdeploy/recipes/ (RECIPE_DIR); RecipeError lists the bundled names."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise RecipeError(f"recipe file not found: {p}")
        return p
    for d in (Path.cwd() / "models", RECIPE_DIR):
        cand = d / f"{name_or_path}.toml"
        if cand.is_file():
            return cand
    known = sorted(q.stem for q in RECIPE_DIR.glob("*.toml"))
    raise RecipeError(f"unknown recipe {name_or_path!r}; bundled recipes: {', '.join(known) or 'none'}")


def list_recipes() -> dict[str, str]:
    """The bundled recipes (nfdeploy/recipes/*.toml): name → one line, e.g.
    'nf_resnet_c8 on digits, 32x32, 30 epochs'. Reads the files' [model]/[data]/[train] tables
    without validating them; defaults fill what a recipe leaves out."""
    out = {}
    for path in sorted(RECIPE_DIR.glob("*.toml")):
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise RecipeError(f"{path} is not valid TOML: {e}") from None
        tables = {k: v for k, v in raw.items() if isinstance(v, dict)}
        model, data, train = (tables.get(k, {}) for k in ("model", "data", "train"))
        size = data.get("input_size", DataSection.input_size)
        out[path.stem] = (
            f"{model.get('name', ModelSection.name)} on {data.get('dataset', DataSection.dataset)}, "
            f"{size}x{size}, {train.get('epochs', TrainSection.epochs)} epochs"
        )
    return out


def parse_override(item: str) -> tuple[str, Any]:
    """'train.lr=0.05' → ('train.lr', 0.05); the value is parsed as TOML, else kept as a string."""
    if "=" not in item:
        raise RecipeError(f"override {item!r} must look like section.key=value")
    key, text = (s.strip() for s in item.split("=", 1))
    if key.count(".") != 1:
        raise RecipeError(f"override key {key!r} must look like section.key")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return key, value


def load_recipe(name_or_path: str = DEFAULT_RECIPE, overrides: list[str] | dict[str, Any] | None = None) -> Recipe:
    path = resolve_recipe_path(name_or_path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{path} is not valid TOML: {e}") from None
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides or [])
    for key, value in items:
        section, sub = key.split(".", 1)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise RecipeError(f"'{section}' in {path} must be a table")
        raw[section][sub] = value
    return recipe_from_dict(raw, str(path))


def recipe_from_resolved(resolved: dict[str, Any]) -> Recipe:
    """Rebuild a Recipe from a run dir's config.json ('recipe' entry)."""
    raw = {k: dict(v) for k, v in resolved.items() if k in ("model", "data", "train")}
    return recipe_from_dict(raw, resolved.get("source", "config.json"))


__all__ = [
    "DATASETS",
    "DEFAULT_RECIPE",
    "RECIPE_DIR",
    "DataSection",
    "ModelSection",
    "Recipe",
    "RecipeError",
    "TrainSection",
    "list_recipes",
    "load_recipe",
    "parse_override",
    "recipe_from_dict",
    "recipe_from_resolved",
    "resolve_recipe_path",
]
