"""``python train.py recipe=NAME key=value ...``: train a recipe."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from sslzoo.arguments import Option, Parser, asks_for_help
from sslzoo.config import RunConfig, available_recipes
from sslzoo.errors import UserError, cli_entry
from sslzoo.rundir import RunDir

if TYPE_CHECKING:  # the callbacks import torch: not for --help
    from sslzoo.callbacks import Callback

USAGE = """usage: python train.py recipe=NAME_OR_PATH [key=value ...]

Trains the recipe (recipes/NAME.yaml or a YAML path). Any recipe key can be
overridden with a dotted key, e.g. optim.lr=1e-3 trainer.max_steps=100.
Recipes: {recipes}"""
PARSER = Parser("train.py", {"recipe": Option(str | None, None, "a recipe name or YAML path")}, rest="recipe")


def attached_callbacks(cfg: RunConfig) -> list[Callback]:
    """What a run of ``cfg`` attaches to the training loop: the online probe when ``trainer.online_probe``."""
    from sslzoo.eval.online_probe import online_probe_callbacks

    return online_probe_callbacks(cfg)


def train(cfg: RunConfig) -> Path:
    """Train ``cfg`` to completion (or resume it), with its callbacks; returns the run folder."""
    from sslzoo.trainer import Trainer

    return Trainer(cfg, attached_callbacks(cfg)).fit()


@cli_entry
def main(argv: list[str]) -> int:
    if not argv or asks_for_help(argv):
        print(USAGE.format(recipes=", ".join(available_recipes())))
        return 0
    args = PARSER.parse(argv)
    recipe, overrides = args.options["recipe"], args.passed["recipe"]
    if recipe is None:
        raise UserError(f"name a recipe: python train.py recipe=NAME ({', '.join(available_recipes())})")
    from sslzoo.recipes import load_config  # the method registry imports torch: not for --help

    cfg = load_config(recipe, overrides)

    from sslzoo.runtime import Stopped  # torch-heavy imports after the config is known good

    try:
        out_dir = train(cfg)
    except Stopped as stop:
        print(
            f"stopped by {stop}; the checkpoint in {cfg.trainer.out_dir} resumes with the same command", file=sys.stderr
        )
        raise SystemExit(128 + stop.signum) from None
    print(f"done: {RunDir(out_dir).backbone}")
    return 0
