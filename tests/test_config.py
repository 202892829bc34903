"""Recipes: loading, inheritance, overrides and the user errors of the foundation issue."""

from __future__ import annotations

import pytest
import yaml

from sslzoo.arguments import parse_overrides
from sslzoo.config import RECIPES_DIR, available_recipes, to_yaml
from sslzoo.errors import UserError
from sslzoo.recipes import load_config, validate_run


def test_every_recipe_loads_and_has_the_interface_keys():
    for name in available_recipes():
        cfg = load_config(name)
        assert cfg.method.name and cfg.model.backbone and cfg.data.name
        assert cfg.trainer.precision in ("fp32", "bf16", "fp16", "auto")


def test_dotted_overrides_are_typed():
    overrides = parse_overrides(["optim.lr=1e-3", "trainer.max_steps=100", "data.batch_size=64", "logger.wandb=off"])
    cfg = load_config("dino_fmnist", overrides)
    assert cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.trainer.max_steps == 100 and cfg.data.batch_size == 64
    assert cfg.logger.wandb == "off"


def test_inherit_and_recipe_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("inherit: dino_fmnist\nmethod:\n  teacher_temp: 0.07\n")
    cfg = load_config(str(path))
    assert cfg.method.teacher_temp == 0.07 and cfg.method.student_temp == 0.1


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config("dino_fmnist", {"optim.lr": 2e-3})
    tree = yaml.safe_load(to_yaml(cfg))
    assert tree["optim"]["lr"] == 2e-3 and tree["method"]["name"] == "dino"


@pytest.mark.parametrize(
    ("recipe", "overrides", "message"),
    [
        ("dino_fmnst", {}, "did you mean 'dino_fmnist'"),
        ("dino_fmnist", {"optim.lrr": 1.0}, "did you mean 'optim.lr'"),
        ("dino_fmnist", {"method.teacher_tmp": 1.0}, "did you mean 'method.teacher_temp'"),
        ("dino_fmnist", {"data.batch_size": "many"}, "data.batch_size must be of type int"),
        ("dino_fmnist", {"data.batch_size": 0}, "data.batch_size must be a positive integer"),
        ("dino_fmnist", {"trainer.precision": "fp8"}, "choose one of fp32, bf16, fp16, auto"),
        ("dino_fmnist", {"method.name": "dinov7"}, "unknown method 'dinov7'"),
        ("dino_fmnist", {"seed": -1}, "seed=-1 must be an integer in .0, 4294967295."),
        ("dino_fmnist", {"seed": 2**32}, "seed=4294967296 must be an integer in .0, 4294967295."),
    ],
)
def test_user_errors_name_the_problem(recipe, overrides, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")) as err:
        load_config(recipe, overrides)
    assert "\n" not in str(err.value)


def test_broken_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("method:\n  name: dino\n  out_dim: [1, 2\n")
    with pytest.raises(UserError, match=r"broken.yaml:\d+"):
        load_config(str(path))


def write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_a_preset_fills_its_section_under_the_recipes_own_keys(tmp_path):
    recipe = write(tmp_path / "r.yaml", "inherit: dino_vits16\naugment:\n  preset: byol\n  global_scale: [0.3, 1.0]\n")
    aug = load_config(recipe).augment
    assert aug.local_crops == 0 and aug.blur_p == [1.0, 0.1]  # from recipes/augment/byol.yaml, over the parent's
    assert aug.global_scale == [0.3, 1.0]  # the file's own key wins over its preset
    assert load_config("dino_vits16").augment.local_crops == 8  # recipes/augment/dino.yaml


def test_a_child_overrides_only_the_keys_it_lists(tmp_path):
    recipe = write(tmp_path / "r.yaml", "inherit: dino_fmnist\naugment:\n  local_crops: 2\n")
    child, parent = load_config(recipe), load_config("dino_fmnist")
    assert child.augment.local_crops == 2
    assert {**vars(child.augment), "local_crops": parent.augment.local_crops} == vars(parent.augment)


def test_an_unknown_preset_is_refused_in_one_line(tmp_path):
    recipe = write(tmp_path / "r.yaml", "inherit: dino_fmnist\naugment:\n  preset: dinoo\n")
    with pytest.raises(UserError, match=r"augment.preset=dinoo .*choose one of .*dino") as err:
        load_config(recipe)
    assert "\n" not in str(err.value)


def comments(path) -> dict[str, str]:
    """``section.key`` -> the comment on its line, for every two-level key of a recipe."""
    found, section = {}, ""
    for line in path.read_text().splitlines():
        name, _, comment = line.partition("#")
        key = name.split(":")[0].strip()
        if line and not line[0].isspace() and ":" in name:
            section = key
        elif key:
            found[f"{section}.{key}"] = comment
    return found


def leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out.update(leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


@pytest.mark.parametrize("recipe", [name for name in available_recipes() if name.endswith("_fmnist")])
def test_each_cpu_recipe_inherits_its_imagenet_parent_and_lists_only_changes(recipe):
    own = yaml.safe_load((RECIPES_DIR / f"{recipe}.yaml").read_text())
    parent = own.pop("inherit")
    assert not parent.endswith("_fmnist") and load_config(parent).method.name == load_config(recipe).method.name
    parent_values = leaves(yaml.safe_load(to_yaml(load_config(parent))))
    repeated = {key for key, value in leaves(own).items() if parent_values.get(key) == value}
    why = comments(RECIPES_DIR / f"{recipe}.yaml")
    assert all("CPU budget" in why[key] or "%" in why[key] for key in repeated)  # a measured or budget choice


@pytest.mark.parametrize(
    ("recipe", "old", "new"),
    [
        ("dino_fmnist", "method.momentum_teacher", "method.momentum"),
        ("byol_fmnist", "method.momentum_base", "method.momentum"),
        ("mocov3_fmnist", "method.momentum_base", "method.momentum"),
        ("simclr_fmnist", "method.hidden_dim", "method.proj_hidden_dim"),
        ("ibot_fmnist", "method.hidden_dim", "method.proj_hidden_dim"),
    ],
)
def test_a_renamed_key_names_its_new_name_in_one_line(tmp_path, recipe, old, new):
    message = f"{old} was renamed {new};"
    with pytest.raises(UserError, match=message) as err:  # a command-line override
        load_config(recipe, {old: 0.99})
    assert "\n" not in str(err.value)
    section, key = old.split(".")
    with pytest.raises(UserError, match=message):  # an existing recipe
        load_config(write(tmp_path / "old.yaml", f"inherit: {recipe}\n{section}:\n  {key}: 0.99\n"))
    saved = yaml.safe_load(to_yaml(load_config(recipe)))  # a checkpoint's config from before the rename
    new_key = new.split(".")[1]
    saved[section] = {(key if k == new_key else k): v for k, v in saved[section].items()}
    with pytest.raises(UserError, match=message):
        validate_run(saved)
