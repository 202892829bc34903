"""Recipes: loading, inheritance, overrides and the user errors of the foundation issue."""

from __future__ import annotations

import pytest
import yaml

from sslzoo.config import available_recipes, parse_overrides, to_yaml
from sslzoo.errors import UserError
from sslzoo.recipes import load_config


def test_every_recipe_loads_and_has_the_interface_keys():
    for name in available_recipes():
        cfg = load_config(name)
        assert cfg.method.name and cfg.model.backbone and cfg.data.name
        assert cfg.trainer.precision in ("fp32", "bf16", "fp16")


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
        ("dino_fmnist", {"trainer.precision": "fp8"}, "choose one of fp32, bf16, fp16"),
        ("dino_fmnist", {"method.name": "dinov7"}, "unknown method 'dinov7'"),
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
