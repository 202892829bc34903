"""What every registered method provides, checked for each name in the registry
(``sslzoo/methods/__init__.py``): registering a method runs these tests on it.

- recipes at both scales: ``<name>_fmnist`` (the CPU one) and at least one ``<name>_*`` ImageNet recipe
  (``data.name: imagefolder``), each naming the method and accepted by its ``check_setup``;
- a card (``MethodCard``) with every field filled in, a known family, and a row in the README's method table;
- a finite, differentiable loss on a tiny batch, with detached embeddings and probe features;
- a training step under bf16 autocast on the CPU, its loss in fp32 and its weights fp32;
- a checkpoint round trip: resuming from a checkpoint continues exactly as the uninterrupted run;
- the evaluation backbone: part of the method (so checkpointed), trained by its steps, and exported
  as a ``state_dict`` that loads strictly into ``build_model`` (``backbone.pt``).

Each runs the method's ``*_fmnist`` recipe on a batch of 8 on the CPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from sslzoo.backbones import build_model
from sslzoo.build import build_method, check_method
from sslzoo.config import RunConfig, available_recipes
from sslzoo.data import data_info
from sslzoo.methods import METHODS, MethodCard, method_class
from sslzoo.recipes import load_config
from sslzoo.schedules import Clock
from sslzoo.trainer import Trainer
from sslzoo.viz.cards import FAMILIES

README = Path(__file__).resolve().parent.parent / "README.md"
BATCH = 8
STEPS = 4  # the run's length: the schedules of a 4-step run


def recipe_configs(name: str) -> dict[str, RunConfig]:
    """Every recipe named ``<name>_*``."""
    return {r: load_config(r) for r in available_recipes() if r.startswith(f"{name}_")}


def small(tiny_config: Callable[..., RunConfig], name: str, **overrides: object) -> RunConfig:
    return tiny_config(f"{name}_fmnist", **{"data.batch_size": BATCH, "trainer.max_steps": STEPS, **overrides})


def random_views(cfg: RunConfig) -> list[torch.Tensor]:
    """One batch of normalised views, of the sizes the recipe's crops have."""
    aug, channels = cfg.augment, data_info(cfg.data).channels
    sizes = [aug.global_size] * aug.global_crops + [aug.local_size] * aug.local_crops
    return [torch.randn(BATCH, channels, size, size) for size in sizes]


def loader_batches(trainer: Trainer, count: int) -> list:
    batches = iter(trainer.loader)
    return [next(batches)[0] for _ in range(count)]


def step(trainer: Trainer, views) -> dict:
    """One optimizer step, then the clock moves on as in ``Trainer.fit``."""
    record = trainer.step(views)
    trainer.clock = trainer.clock.at(trainer.clock.step + 1)
    return record


@pytest.fixture(params=METHODS.names())
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def test_recipes_at_both_scales(name: str) -> None:
    configs = recipe_configs(name)
    assert f"{name}_fmnist" in configs, f"{name} has no CPU recipe recipes/{name}_fmnist.yaml"
    imagenet = [r for r, cfg in configs.items() if cfg.data.name == "imagefolder"]
    assert imagenet, f"{name} has no ImageNet recipe (recipes/{name}_*.yaml with data.name: imagefolder)"
    assert configs[f"{name}_fmnist"].data.name == "fmnist"
    for recipe, cfg in configs.items():
        assert cfg.method.name == name, f"{recipe} trains {cfg.method.name}"
        check_method(cfg)


def test_card_is_filled_in_and_in_the_readme(name: str) -> None:
    card = method_class(name).card
    assert isinstance(card, MethodCard)
    empty = [f.name for f in dataclasses.fields(card) if not str(getattr(card, f.name)).strip()]
    assert not empty, f"{name}'s card leaves {empty} empty"
    assert card.family in FAMILIES, f"{name}'s family {card.family!r} is none of {FAMILIES}"
    methods_section = README.read_text().split("## Methods", 1)[1].split("\n## ", 1)[0]
    assert f"`{name}_fmnist`" in methods_section, f"the README's method table has no row for {name}"


def test_finite_loss_on_a_tiny_batch(name: str, tiny_config) -> None:
    cfg = small(tiny_config, name)
    torch.manual_seed(0)
    method = build_method(cfg).train()
    out = method(random_views(cfg), Clock(0, STEPS, STEPS, cfg.trainer.epochs))
    assert out.loss.dim() == 0 and torch.isfinite(out.loss) and out.loss.requires_grad
    assert all(isinstance(v, (int, float)) for v in out.logs.values()), "logs are plain numbers"
    for part in (out.embeddings, out.features):  # the collapse diagnostics and the online probe read these
        assert part is not None and len(part) == BATCH and not part.requires_grad
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.parameters())


def test_step_under_bf16_autocast(name: str, tiny_config) -> None:
    torch.manual_seed(0)
    trainer = Trainer(small(tiny_config, name, **{"trainer.precision": "bf16"}))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = trainer.method(random_views(trainer.cfg), trainer.clock)
    assert out.loss.dtype == torch.float32, f"{name} computes its loss in {out.loss.dtype} under bf16"
    (views,) = loader_batches(trainer, 1)
    record = step(trainer, views)
    assert torch.isfinite(torch.tensor(record["loss"]))
    assert all(p.dtype == torch.float32 for p in trainer.method.parameters())  # fp32 master weights


def test_checkpoint_round_trip(name: str, tiny_config) -> None:
    """Saved after step 1 and resumed, the run's step 2 gives the loss and weights of the run that went on."""
    trainer = Trainer(small(tiny_config, name))
    first, second = loader_batches(trainer, 2)
    step(trainer, first)
    trainer.save_checkpoint()
    went_on = step(trainer, second)

    resumed = Trainer(small(tiny_config, name, resume="auto"))
    resumed.maybe_resume()
    assert resumed.clock.step == 1
    assert step(resumed, second)["loss"] == went_on["loss"]
    theirs = resumed.method.state_dict()
    for key, value in trainer.method.state_dict().items():
        assert torch.equal(value, theirs[key]), f"{key} differs after resuming"


def test_eval_backbone_is_trained_and_exported(name: str, tiny_config) -> None:
    trainer = Trainer(small(tiny_config, name))
    backbone = trainer.method.eval_backbone()
    assert any(module is backbone for module in trainer.method.modules()), "not part of the method's checkpoint"
    initial = {k: v.clone() for k, v in trainer.eval_backbone_state().items()}
    for views in loader_batches(trainer, 2):
        step(trainer, views)
    exported = trainer.eval_backbone_state()
    fresh = build_model(trainer.cfg.model.backbone, in_chans=data_info(trainer.cfg.data).channels)
    fresh.load_state_dict(exported, strict=True)  # what backbone.pt holds
    assert any(not torch.equal(initial[k], v) for k, v in exported.items()), "the exported backbone never trained"
