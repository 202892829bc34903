"""The comparison's plan: its settings (``benchmarks/compare.yaml`` and the command line) and each
method's validated config per seed, all checked before any run starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sslzoo.build import check_method
from sslzoo.config import RunConfig, build, dotted_keys, read_yaml, set_dotted
from sslzoo.errors import UserError
from sslzoo.methods import METHODS, method_class
from sslzoo.recipes import load_config

SETTINGS_FILE = Path(__file__).resolve().parent / "compare.yaml"
EVAL_PREFIX = "eval."
BUDGET_KEYS = {  # recipe keys that the budget settings own
    "seed": "seeds",
    "trainer.max_steps": "steps",
    "data.batch_size": "batch_size",
    "model.backbone": "backbone",
    "augment.local_crops": "local_crops",
    "trainer.precision": "precision",
    "trainer.online_probe": "online_probe",
    "trainer.snapshot_every": "curve_points",
}


@dataclass
class Settings:
    methods: list[str]
    recipes: list[str] | None
    recipe_suffix: str
    seeds: list[int]
    steps: int
    batch_size: int
    backbone: str
    local_crops: int
    precision: str
    online_probe: bool
    curve_points: int
    curve_train_limit: int | None
    curve_test_limit: int | None
    baselines: bool
    lowshot: bool
    finetune: bool
    reuse: bool
    out: str
    runs: str
    merge: list[str] | None


@dataclass
class Plan:
    """One method's recipe and the validated config of each seed."""

    method: str
    recipe: str
    configs: dict[int, RunConfig]
    overrides: dict[int, dict[str, Any]]


def as_list(value: Any) -> Any:
    """``"dino,byol"`` or ``0`` as a list; lists and null pass through."""
    if value is None or isinstance(value, list):
        return value
    return [yaml.safe_load(part.strip()) for part in str(value).split(",") if part.strip()]


def split_overrides(overrides: dict[str, Any]) -> tuple[Settings, dict[str, Any], dict[str, Any]]:
    """Parsed ``key=value`` pairs as (settings, overrides for every run's recipe, overrides for the
    evaluation protocol): ``eval.*`` keys go to the protocol, the settings file's keys to the
    settings, any other key to the recipes."""
    tree = read_yaml(SETTINGS_FILE)
    valid = dotted_keys(tree)
    train_overrides, eval_overrides = {}, {}
    for key, value in overrides.items():
        if key.startswith(EVAL_PREFIX):
            eval_overrides[key[len(EVAL_PREFIX) :]] = value
        elif "." in key or key not in tree:
            train_overrides[key] = value
        else:
            set_dotted(tree, key, value, valid)
    for key, setting in BUDGET_KEYS.items():
        if key in train_overrides:
            raise UserError(f"set {key} for every method with {setting}=, not {key}=")
    for key in ("methods", "recipes", "seeds", "merge"):
        tree[key] = as_list(tree[key])
    if tree["methods"] == ["all"]:
        tree["methods"] = METHODS.names()
    settings = build(Settings, tree, "")
    check_settings(settings)
    return settings, train_overrides, eval_overrides


def check_settings(settings: Settings) -> None:
    if settings.steps <= 0 or settings.batch_size <= 0 or settings.local_crops < 0:
        raise UserError("steps and batch_size must be positive and local_crops 0 or more")
    if not settings.seeds or len(set(settings.seeds)) != len(settings.seeds):
        raise UserError(f"seeds={settings.seeds} must be a non-empty list of distinct integers")
    if settings.curve_points < 0 or settings.steps % max(settings.curve_points, 1):
        raise UserError(
            f"curve_points={settings.curve_points} must be 0 (no curve) or divide steps={settings.steps}: "
            "the curve evaluates each 1/curve_points of the budget"
        )
    if any(n is not None and n <= 0 for n in (settings.curve_train_limit, settings.curve_test_limit)):
        raise UserError("curve_train_limit and curve_test_limit must be positive or null (the whole split)")


def run_dir(settings: Settings, method: str, seed: int) -> Path:
    """As given (relative to the working directory, which the runs share): results name no machine's paths."""
    return Path(settings.runs) / method / f"seed{seed}"


def plan_runs(settings: Settings, train_overrides: dict[str, Any]) -> list[Plan]:
    """Each method's config per seed, validated before any run starts (a typo fails in a second)."""
    if settings.recipes is not None:
        pairs = [(str(load_config(r).method.name), r) for r in settings.recipes]
    else:
        for name in settings.methods:
            method_class(name)  # an unknown name fails here, with the registered ones listed
        pairs = [(m, f"{m}_{settings.recipe_suffix}") for m in settings.methods]
    if len({m for m, _ in pairs}) != len(pairs):
        raise UserError("each method may appear once in methods= / recipes=")
    plans = []
    for method, recipe in pairs:
        plan = Plan(method, recipe, {}, {})
        for seed in settings.seeds:
            overrides = {
                "seed": seed,
                "resume": "none",
                "trainer.max_steps": settings.steps,
                "data.batch_size": settings.batch_size,
                "model.backbone": settings.backbone,
                "trainer.precision": settings.precision,
                "trainer.online_probe": settings.online_probe,
                "trainer.snapshot_every": settings.steps // settings.curve_points if settings.curve_points else 0,
                "logger.wandb": "off",
                **({"augment.local_crops": settings.local_crops} if method_class(method).supports_local_crops else {}),
                **train_overrides,
            }
            cfg = load_config(recipe, {**overrides, "trainer.out_dir": str(run_dir(settings, method, seed))})
            check_method(cfg)
            plan.configs[seed], plan.overrides[seed] = cfg, overrides
        plans.append(plan)
    check_same_data(plans)
    return plans


def check_same_data(plans: list[Plan]) -> None:
    datasets = {(p.configs[s].data.name, p.configs[s].data.root) for p in plans for s in p.configs}
    if len(datasets) > 1:
        raise UserError(f"the recipes train on different data {sorted(datasets)}: set data.name= (and data.root=)")
