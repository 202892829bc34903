"""Recipes: a recipe file and its overrides as a validated run config.

A run's config is ``sslzoo/defaults.yaml`` (shared keys), then the recipe
(optionally ``inherit:``-ing another recipe; a section may start from a preset,
``augment: {preset: dino}`` for ``recipes/augment/dino.yaml``), then dotted
command-line overrides such as ``optim.lr=1e-3``. ``sslzoo.config`` types the
shared sections and leaves the ``method`` section to a dataclass it is given; this
module looks that dataclass up in the method registry, so that the config imports
no method and methods may import the config.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any

from sslzoo.config import (
    DEFAULTS_FILE,
    RECIPES_DIR,
    RunConfig,
    available_recipes,
    build,
    dotted_keys,
    read_yaml,
    set_dotted,
    with_added_keys,
)
from sslzoo.errors import UserError
from sslzoo.errors import require as need
from sslzoo.methods import method_class

PRESET_KEY = "preset"  # ``augment: {preset: dino}`` takes recipes/augment/dino.yaml


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


def resolve(recipe: str, overrides: dict[str, Any]) -> dict:
    """Defaults, recipe and overrides as one plain dict (not yet validated)."""
    tree = merge(read_yaml(DEFAULTS_FILE), load_recipe(recipe))
    tree["recipe"] = recipe
    valid = dotted_keys(tree)
    for key, value in overrides.items():
        set_dotted(tree, key, value, valid)
    return tree


def method_name(tree: dict) -> str:
    """The resolved tree's ``method.name`` (which method's ``Config`` types the ``method`` section)."""
    method_tree = tree.get("method")
    if not isinstance(method_tree, dict) or "name" not in method_tree:
        raise UserError("the recipe has no 'method.name'")
    return str(method_tree["name"])


def validate(tree: dict, method_schema: type) -> RunConfig:
    """Validate a resolved tree into a :class:`RunConfig`, its method section into ``method_schema``."""
    config = build(RunConfig, {**tree, "method": {}}, "")
    config.method = build(method_schema, tree["method"], "method")
    config.raw = tree
    check_ranges(config)
    return config


SEED_LIMIT = 2**32  # seeds in [0, 2**32): numpy's range, and far inside torch's 64 bits for seed + rank or + epoch


def check_ranges(cfg: RunConfig) -> None:
    need(0 <= cfg.seed < SEED_LIMIT, f"seed={cfg.seed} must be an integer in [0, {SEED_LIMIT - 1}]")
    need(cfg.data.batch_size > 0, "data.batch_size must be a positive integer")
    need(cfg.data.num_workers >= 0, "data.num_workers must be 0 or more")
    need(cfg.trainer.epochs > 0, "trainer.epochs must be a positive integer")
    need(cfg.trainer.max_steps is None or cfg.trainer.max_steps > 0, "trainer.max_steps must be positive or null")
    need(cfg.trainer.checkpoint_every > 0, "trainer.checkpoint_every must be a positive integer")
    need(cfg.trainer.snapshot_every >= 0, "trainer.snapshot_every must be 0 (off) or a positive integer")
    need(cfg.trainer.log_every > 0, "trainer.log_every must be a positive integer")
    need(cfg.optim.lr > 0, "optim.lr must be positive")
    need(cfg.optim.warmup_epochs >= 0, "optim.warmup_epochs must be 0 or more")
    need(0 < cfg.optim.cooldown_fraction <= 1, "optim.cooldown_fraction must lie in (0, 1]")
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


def validate_run(tree: dict) -> RunConfig:
    """Validate a resolved tree, its ``method`` section by the registered method's ``Config``."""
    return validate(tree, method_class(method_name(tree)).Config)


def validate_saved(tree: dict) -> RunConfig:
    """Validate the config a run or checkpoint saved, with the keys added to the code since at the values it
    trained with (``ADDED``)."""
    method_keys = {f.name: None for f in dataclasses.fields(method_class(method_name(tree)).Config)}
    return validate_run(with_added_keys(tree, {**read_yaml(DEFAULTS_FILE), "method": method_keys}))


def load_config(recipe: str, overrides: dict[str, Any] | None = None) -> RunConfig:
    """The validated config of ``recipe`` with dotted ``overrides`` applied."""
    return validate_run(resolve(recipe, overrides or {}))
