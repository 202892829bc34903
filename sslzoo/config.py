"""The run config's schema (typed dataclasses) and the typed YAML under it.

The shared sections of a run's config are typed here; the ``method`` section is
typed by the method's own ``Config`` dataclass (this module imports no method).
Reading a YAML file, setting dotted keys, and building a dataclass from a tree
check every key: unknown keys get the nearest valid key (or, for a renamed key,
its new name), and values of the wrong type or outside their choices are
refused in one line. ``sslzoo.recipes`` resolves recipes into a validated config.
"""

from __future__ import annotations

import copy
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

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULTS_FILE = PACKAGE_DIR / "defaults.yaml"
RECIPES_DIR = PACKAGE_DIR.parent / "recipes"
RENAMED = {  # old dotted key -> its name now: one name per concept across methods
    "method.momentum_teacher": "method.momentum",  # DINO, iBOT: the EMA momentum m (cosine to momentum_end)
    "method.momentum_base": "method.momentum",  # BYOL, MoCo v3: the same m
    "method.hidden_dim": "method.proj_hidden_dim",  # DINO, iBOT, SimCLR: the projection head width
}
ADDED = {  # dotted key added since runs were first saved -> the value that trains as the code did before it
    "method.momentum_end": 1.0,  # DINO, iBOT, DINOv2: the teacher momentum's cosine went to 1
    "optim.lr_decay": "cosine",  # every lr decayed by a half cosine to optim.min_lr
    "optim.cooldown_fraction": 0.2,  # unused unless optim.lr_decay=cooldown, which came with it
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
    lr_decay: Literal["cosine", "none", "cooldown"]  # after the warm-up: cosine to min_lr | held | held, then to min_lr
    cooldown_fraction: float  # lr_decay=cooldown: the last fraction of the run's steps, decaying to min_lr
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
    precision: Literal["fp32", "bf16", "fp16", "auto"]  # auto: bf16 where the device computes it natively
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
class RunConfig:
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


# --------------------------------------------------------------------------- typed YAML


def available_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


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


def with_added_keys(saved: dict, current: dict) -> dict:
    """A run's saved config tree with each ``ADDED`` key that it lacks and ``current`` has, at the value the
    run trained with: a run saved before a key existed then equals today's config of the same training."""
    tree = copy.deepcopy(saved)
    for key, before in ADDED.items():
        *sections, leaf = key.split(".")
        node, now = tree, current
        for section in sections:
            node, now = node.get(section), now.get(section)
            if not isinstance(node, dict) or not isinstance(now, dict):
                break
        else:
            if leaf in now and leaf not in node:
                node[leaf] = before
    return tree


def dotted_keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        keys.append(name)
        if isinstance(value, dict):
            keys.extend(dotted_keys(value, f"{name}."))
    return keys


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


def to_yaml(cfg: RunConfig) -> str:
    """The fully resolved config as YAML (what ``config.yaml`` in a run holds)."""
    tree = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "raw"}
    return yaml.safe_dump(tree, sort_keys=False)
