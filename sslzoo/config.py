"""Recipes: YAML files of hyperparameters, validated into typed dataclasses.

A run's config is ``sslzoo/defaults.yaml`` (shared keys), then the recipe
(optionally ``inherit:``-ing another recipe; a section may start from a preset,
``augment: {preset: dino}`` for ``recipes/augment/dino.yaml``), then dotted command-line
overrides such as ``optim.lr=1e-3``. The shared sections are typed here; the
``method`` section is typed by the method's own ``Config`` dataclass, which
the caller passes in (``sslzoo.recipes`` looks it up in the method registry,
so this module imports no method). Every
key is checked: unknown keys get the nearest valid key as a suggestion, and
values of the wrong type or outside their choices are refused.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from sslzoo.errors import UserError
from sslzoo.errors import require as need

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULTS_FILE = PACKAGE_DIR / "defaults.yaml"
RECIPES_DIR = PACKAGE_DIR.parent / "recipes"
YAML11_WORDS = {"on", "off", "yes", "no", "y", "n"}
PRESET_KEY = "preset"  # ``augment: {preset: dino}`` takes recipes/augment/dino.yaml
RENAMED = {  # old dotted key -> its name now: one name per concept across methods
    "method.momentum_teacher": "method.momentum",  # DINO, iBOT: the EMA momentum m (cosine to 1)
    "method.momentum_base": "method.momentum",  # BYOL, MoCo v3: the same m
    "method.hidden_dim": "method.proj_hidden_dim",  # DINO, iBOT, SimCLR: the projection head width
}


@dataclass
class ModelConfig:
    backbone: str
    drop_path: float  # stochastic depth of the online/student backbone (ViTs)


@dataclass
class DataConfig:
    name: Literal["fmnist", "cifar10", "cifar100", "stl10", "imagefolder", "synthetic"]
    root: str
    batch_size: int  # per device
    num_workers: int
    download: bool  # allow torchvision to download a missing dataset
    on_corrupt: Literal["skip", "error"]  # corrupt image files: skip and count, or stop


@dataclass
class AugmentConfig:
    """Multi-crop augmentation; lists with one entry per global crop."""

    global_crops: int
    global_size: int
    global_scale: list[float]
    local_crops: int
    local_size: int
    local_scale: list[float]
    flip_p: float
    jitter: list[float]  # brightness, contrast, saturation, hue
    jitter_p: float
    grayscale_p: float
    blur_sigma: list[float]
    blur_p: list[float]  # per global crop
    solarize_p: list[float]  # per global crop
    local_blur_p: float
    local_solarize_p: float
    photometric: Literal["batched", "per_image"]  # where jitter, blur, solarize run: the step's device or the loader


@dataclass
class OptimConfig:
    name: Literal["adamw", "sgd", "lars"]
    lr: float  # base lr, scaled by lr_scaling with the global batch
    lr_scaling: Literal["linear", "sqrt", "none"]  # lr*B/256 | lr*sqrt(B) | lr
    min_lr: float
    warmup_epochs: float
    weight_decay: float
    weight_decay_end: float
    exclude_bias_norm: bool  # no weight decay on biases and norms (LARS never decays or adapts them)
    momentum: float  # sgd / lars
    betas: list[float]  # adamw
    lars_trust_coefficient: float
    clip_grad: float  # 0 disables clipping
    clip_mode: Literal["per_param", "global"]


@dataclass
class TrainerConfig:
    epochs: int
    max_steps: int | None  # overrides epochs; schedules follow the shortened run
    out_dir: str
    device: Literal["auto", "cpu", "cuda"]
    precision: Literal["fp32", "bf16", "fp16"]
    checkpoint_every: int  # optimizer steps
    snapshot_every: int  # keep the evaluated backbone every N steps in snapshots/, with the training time; 0: off
    log_every: int
    compile: bool
    on_nonfinite: Literal["stop", "skip"]  # a NaN/inf loss stops the run, or skips the step
    online_probe: bool  # train a linear probe on detached features during pre-training (logs online_linear_top1)


@dataclass
class LoggerConfig:
    wandb: Literal["off", "offline", "online"]
    project: str


@dataclass
class Config:
    recipe: str
    seed: int
    resume: str  # auto | none | path to a checkpoint
    method: Any  # the method's own Config dataclass
    model: ModelConfig
    data: DataConfig
    augment: AugmentConfig
    optim: OptimConfig
    trainer: TrainerConfig
    logger: LoggerConfig
    raw: dict = field(repr=False, default_factory=dict)  # the resolved YAML, for config.yaml


# --------------------------------------------------------------------------- loading


def available_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def recipe_path(recipe: str) -> Path:
    """Resolve ``recipe=`` as a name in ``recipes/`` or as a path to a YAML file."""
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise UserError(f"recipe file {recipe} does not exist")
        return path
    path = RECIPES_DIR / f"{recipe}.yaml"
    if not path.is_file():
        names = available_recipes()
        near = difflib.get_close_matches(recipe, names, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise UserError(f"unknown recipe '{recipe}'{hint}; available: {', '.join(names)}")
    return path


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{where}: the YAML does not parse ({problem})") from None
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe must be a mapping of keys to values")
    return data


def merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def expand_presets(data: dict, path: Path) -> dict:
    """Each section's ``preset: NAME`` replaced by ``recipes/<section>/NAME.yaml``, the file's own keys on top."""
    out = dict(data)
    for section, value in data.items():
        if not isinstance(value, dict) or PRESET_KEY not in value:
            continue
        own = {k: v for k, v in value.items() if k != PRESET_KEY}
        name = str(value[PRESET_KEY])
        preset = RECIPES_DIR / section / f"{name}.yaml"
        if not preset.is_file():
            names = sorted(p.stem for p in (RECIPES_DIR / section).glob("*.yaml"))
            choices = f"choose one of {', '.join(names)}" if names else f"there are no {section} presets"
            raise UserError(f"{path}: {section}.{PRESET_KEY}={name} is not in recipes/{section}/; {choices}")
        out[section] = merge(read_yaml(preset), own)
    return out


def load_recipe(recipe: str, _seen: tuple[str, ...] = ()) -> dict:
    """The recipe, its presets expanded, merged over its ``inherit:`` chain (without the defaults)."""
    path = recipe_path(recipe)
    if str(path) in _seen:
        raise UserError(f"recipe {path} inherits from itself")
    data = expand_presets(read_yaml(path), path)
    parent = data.pop("inherit", None)
    if parent is None:
        return data
    return merge(load_recipe(str(parent), (*_seen, str(path))), data)


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": 1, "c": "x"}`` with YAML-typed values."""
    overrides: dict[str, Any] = {}
    for arg in args:
        key, sep, text = arg.partition("=")
        if not sep or not key:
            raise UserError(f"cannot read argument '{arg}': write overrides as key=value")
        if text.lower() in YAML11_WORDS:  # keep on/off/yes/no as words (logger.wandb=off)
            overrides[key] = text
            continue
        try:
            overrides[key] = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            overrides[key] = text
    return overrides


def set_dotted(tree: dict, key: str, value: Any, valid: list[str]) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            raise UserError(unknown_key_message(key, valid))
        node = child
    if parts[-1] not in node:
        raise UserError(unknown_key_message(key, valid))
    node[parts[-1]] = value


def unknown_key_message(key: str, valid: list[str]) -> str:
    if key in RENAMED:
        return f"{key} was renamed {RENAMED[key]}; write {RENAMED[key]} in the recipe, override or saved config"
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{near[0]}'?" if near else ""
    return f"unknown key '{key}'{hint}"


def dotted_keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        keys.append(name)
        if isinstance(value, dict):
            keys.extend(dotted_keys(value, f"{name}."))
    return keys


def resolve(recipe: str, overrides: dict[str, Any]) -> dict:
    """Defaults, recipe and overrides as one plain dict (not yet validated)."""
    tree = merge(read_yaml(DEFAULTS_FILE), load_recipe(recipe))
    tree["recipe"] = recipe
    valid = dotted_keys(tree)
    for key, value in overrides.items():
        set_dotted(tree, key, value, valid)
    return tree


# --------------------------------------------------------------------------- validation


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a type annotation, converting where lossless."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin is Literal:
        if value not in args:
            raise UserError(f"{key}={value!r} is not allowed; choose one of {', '.join(map(str, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return coerce(value, inner, key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{key} must be a list, got {value!r}")
        return [coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if annotation is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # "inf" and "nan" parse as floats but are never a hyperparameter
                raise UserError(f"{key} must be a finite number, got {value!r}")
            return float(value)
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif dataclasses.is_dataclass(annotation):
        return build(annotation, value, key)
    name = getattr(annotation, "__name__", str(annotation))
    raise UserError(f"{key} must be of type {name}, got {value!r}")


def build(cls: type, data: Any, prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from ``data``, refusing unknown or missing keys."""
    if not isinstance(data, dict):
        raise UserError(f"{prefix} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init and f.name != "raw"}
    for key in data:
        if key not in fields:
            valid = [f"{prefix}.{f}" if prefix else f for f in fields]
            raise UserError(unknown_key_message(f"{prefix}.{key}" if prefix else key, valid))
    kwargs = {}
    for name in fields:
        key = f"{prefix}.{name}" if prefix else name
        if name not in data:
            raise UserError(f"the recipe is missing the key '{key}'")
        kwargs[name] = coerce(data[name], hints[name], key)
    return cls(**kwargs)


def method_name(tree: dict) -> str:
    """The resolved tree's ``method.name`` (which method's ``Config`` types the ``method`` section)."""
    method_tree = tree.get("method")
    if not isinstance(method_tree, dict) or "name" not in method_tree:
        raise UserError("the recipe has no 'method.name'")
    return str(method_tree["name"])


def validate(tree: dict, method_schema: type) -> Config:
    """Validate a resolved tree into a :class:`Config`, its method section into ``method_schema``."""
    config = build(Config, {**tree, "method": {}}, "")
    config.method = build(method_schema, tree["method"], "method")
    config.raw = tree
    check_ranges(config)
    return config


def check_ranges(cfg: Config) -> None:
    need(cfg.data.batch_size > 0, "data.batch_size must be a positive integer")
    need(cfg.data.num_workers >= 0, "data.num_workers must be 0 or more")
    need(cfg.trainer.epochs > 0, "trainer.epochs must be a positive integer")
    need(cfg.trainer.max_steps is None or cfg.trainer.max_steps > 0, "trainer.max_steps must be positive or null")
    need(cfg.trainer.checkpoint_every > 0, "trainer.checkpoint_every must be a positive integer")
    need(cfg.trainer.snapshot_every >= 0, "trainer.snapshot_every must be 0 (off) or a positive integer")
    need(cfg.trainer.log_every > 0, "trainer.log_every must be a positive integer")
    need(cfg.optim.lr > 0, "optim.lr must be positive")
    need(cfg.optim.warmup_epochs >= 0, "optim.warmup_epochs must be 0 or more")
    need(
        cfg.optim.name != "lars" or cfg.optim.exclude_bias_norm,
        "optim.exclude_bias_norm=false has no effect with LARS, which never decays biases and norms; set it to true",
    )
    need(cfg.augment.global_crops >= 1, "augment.global_crops must be at least 1")
    need(cfg.augment.local_crops >= 0, "augment.local_crops must be 0 or more")
    for name in ("global_scale", "local_scale"):
        lo, hi = (getattr(cfg.augment, name) + [0.0, 0.0])[:2]
        need(
            len(getattr(cfg.augment, name)) == 2 and 0 < lo <= hi <= 1,
            f"augment.{name} must be [min, max] with 0 < min <= max <= 1",
        )
    for name in ("blur_p", "solarize_p"):
        need(
            len(getattr(cfg.augment, name)) == cfg.augment.global_crops,
            f"augment.{name} needs one probability per global crop ({cfg.augment.global_crops})",
        )
    probs = [
        cfg.augment.flip_p,
        cfg.augment.jitter_p,
        cfg.augment.grayscale_p,
        cfg.augment.local_blur_p,
        cfg.augment.local_solarize_p,
        *cfg.augment.blur_p,
        *cfg.augment.solarize_p,
    ]
    need(all(0 <= p <= 1 for p in probs), "augment probabilities must lie in [0, 1]")
    need(
        cfg.resume in ("auto", "none") or Path(cfg.resume).is_file(),
        f"resume={cfg.resume} is neither auto, none nor an existing checkpoint file",
    )


def to_yaml(cfg: Config) -> str:
    """The fully resolved config as YAML (what ``config.yaml`` in a run holds)."""
    tree = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "raw"}
    return yaml.safe_dump(tree, sort_keys=False)
