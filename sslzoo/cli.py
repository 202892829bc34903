"""``python train.py recipe=NAME key=value ...``: train a recipe."""

from __future__ import annotations

import sys

from sslzoo.config import available_recipes, parse_overrides
from sslzoo.errors import UserError, cli_entry
from sslzoo.rundir import RunDir

USAGE = """usage: python train.py recipe=NAME_OR_PATH [key=value ...]

Trains the recipe (recipes/NAME.yaml or a YAML path). Any recipe key can be
overridden with a dotted key, e.g. optim.lr=1e-3 trainer.max_steps=100.
Recipes: {recipes}"""


@cli_entry
def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE.format(recipes=", ".join(available_recipes())))
        return 0
    overrides = parse_overrides(argv)
    recipe = overrides.pop("recipe", None)
    if recipe is None:
        raise UserError(f"name a recipe: python train.py recipe=NAME ({', '.join(available_recipes())})")
    from sslzoo.recipes import load_config  # the method registry imports torch: not for --help

    cfg = load_config(str(recipe), overrides)

    from sslzoo.trainer import Stopped, train  # torch-heavy imports after the config is known good

    try:
        out_dir = train(cfg)
    except Stopped as stop:
        print(
            f"stopped by {stop}; the checkpoint in {cfg.trainer.out_dir} resumes with the same command", file=sys.stderr
        )
        raise SystemExit(128 + stop.signum) from None
    print(f"done: {RunDir(out_dir).backbone}")
    return 0
