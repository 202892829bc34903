"""The skeleton BYOL and MoCo v3 share (sslzoo/methods/predictive.py), tested on both:
targets get no gradient and have no predictor, each prediction is paired with the
other view's target, the momentum schedule and update, the ablation switches, and
a few training steps on Fashion-MNIST."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sslzoo.backbones import build_model
from sslzoo.build import build_method, check_method
from sslzoo.errors import UserError
from sslzoo.optim import parameter_groups
from sslzoo.schedules import Clock
from sslzoo.trainer import Trainer

RECIPES = ["byol_fmnist", "mocov3_fmnist"]
SMALL_HEADS = {"method.proj_hidden_dim": 64, "method.pred_hidden_dim": 64, "method.out_dim": 32}


def build(tiny_config, recipe: str, **overrides):
    torch.manual_seed(0)
    cfg = tiny_config(recipe, **{**SMALL_HEADS, **overrides})
    check_method(cfg)
    return build_method(cfg).train()


def random_views(batch: int = 8) -> list[torch.Tensor]:
    return [torch.randn(batch, 1, 28, 28) for _ in range(2)]


@pytest.mark.parametrize("recipe", RECIPES)
def test_target_has_no_predictor_and_receives_no_gradient(tiny_config, recipe):
    method = build(tiny_config, recipe)
    out = method.training_step(random_views(), Clock(0, 10, 10, 1))
    out.loss.backward()
    target_params = list(method.target.parameters())
    assert target_params and all(not p.requires_grad and p.grad is None for p in target_params)
    assert all(p.grad is not None for p in method.predictor.parameters())
    trained = [p for p in method.online.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in trained)
    # the target is a copy of encoder + projector: the same keys, none of the predictor's
    assert method.target.net.state_dict().keys() == method.online.state_dict().keys()
    n_predictor = sum(p.numel() for p in method.predictor.parameters())
    n_target = sum(p.numel() for p in target_params)
    assert n_predictor > 0 and n_target == sum(p.numel() for p in method.online.parameters())


def test_target_starts_as_the_online_network_without_stochastic_depth(tiny_config):
    # two blocks: on the one-block deep stem timm's rates (linear from 0 at the first block) leave none
    method = build(tiny_config, "byol_fmnist", **{"model.drop_path": 0.1, "model.backbone": "vit_convstem_micro_28"})
    for (name, online), target in zip(method.online.state_dict().items(), method.target.net.state_dict().values()):
        assert torch.equal(online, target), name
    online_rates = [getattr(block.drop_path1, "drop_prob", 0.0) for block in method.online.backbone.model.blocks]
    assert max(online_rates) > 0
    assert all(isinstance(block.drop_path1, nn.Identity) for block in method.target.net.backbone.model.blocks)


@pytest.mark.parametrize("recipe", RECIPES)
def test_each_prediction_meets_the_other_views_target(tiny_config, recipe):
    """loss = pair(q(g(f(v1))), g'(f'(v2))) + pair(q(g(f(v2))), g'(f'(v1))), each view in its own forward."""
    method = build(tiny_config, recipe)
    with torch.no_grad():  # make the target differ from the online network
        for param in method.target.parameters():
            param.add_(0.05 * torch.randn_like(param))
    v1, v2 = random_views()
    out = method.training_step([v1, v2], Clock(0, 10, 10, 1))

    def online(v):
        return method.predictor(method.online.head(method.online.backbone(v)))

    def target(v):
        with torch.no_grad():
            return method.target.net.head(method.target.net.backbone(v))

    want = method.loss(online(v1), target(v2)) + method.loss(online(v2), target(v1))
    swapped = method.loss(online(v1), target(v1)) + method.loss(online(v2), target(v2))
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert out.loss.item() != pytest.approx(swapped.item(), rel=1e-3)
    assert out.logs["loss_p1_z2"] + out.logs["loss_p2_z1"] == pytest.approx(out.loss.item(), rel=1e-6)
    assert torch.allclose(out.embeddings, method.online.head(method.online.backbone(v1)), atol=1e-5)
    assert out.features.shape == (len(v1), method.online.backbone.embed_dim) and not out.features.requires_grad


@pytest.mark.parametrize("recipe", RECIPES)
def test_momentum_follows_the_cosine_schedule(tiny_config, recipe):
    """tau_k = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2 (BYOL §3.2), or constant without the cosine."""
    method = build(tiny_config, recipe, **{"method.momentum": 0.9, "method.momentum_cosine": True})
    total = 40
    for k in (0, 7, 20, 33, 40):
        want = 1 - (1 - 0.9) * (math.cos(math.pi * k / total) + 1) / 2
        assert method.momentum(Clock(k, total, 10, 4)) == pytest.approx(want, abs=1e-12)
    constant = build(tiny_config, recipe, **{"method.momentum": 0.9, "method.momentum_cosine": False})
    assert {constant.momentum(Clock(k, total, 10, 4)) for k in (0, 20, 40)} == {0.9}


@pytest.mark.parametrize("recipe", RECIPES)
def test_target_update_is_one_ema_step(tiny_config, recipe):
    method = build(tiny_config, recipe)
    clock = Clock(3, 10, 10, 1)
    with torch.no_grad():
        for param in method.online.parameters():
            param.add_(torch.randn_like(param))
    before = [p.clone() for p in method.target.parameters()]
    method.after_optimizer_step(clock)
    m = method.momentum(clock)
    assert 0 < m < 1 and method.target.updates == 1
    for old, new, theta in zip(before, method.target.parameters(), method.online.parameters()):
        torch.testing.assert_close(new, m * old + (1 - m) * theta)


@pytest.mark.parametrize("recipe", RECIPES)
def test_pred_lr_scale_speeds_up_the_predictor_only(tiny_config, recipe):
    """BYOL Appendix (Table 21): the predictor trained at lambda times the lr of the rest."""
    assert build(tiny_config, recipe, **{"method.pred_lr_scale": 1.0}).lr_scales() == {}
    method = build(tiny_config, recipe, **{"method.pred_lr_scale": 10.0})
    groups = parameter_groups(method, exclude_bias_norm=True, lr_scales=method.lr_scales())
    fast = {id(p) for g in groups if g["lr_scale"] == 10.0 for p in g["params"]}
    assert fast == {id(p) for p in method.predictor.parameters()}


def test_trainer_steps_the_predictor_at_its_scaled_lr(tiny_config):
    """The loop takes the method's lr scales: after a step the predictor's groups hold 10x the others' lr."""
    trainer = Trainer(tiny_config("byol_fmnist", **{**SMALL_HEADS, "method.pred_lr_scale": 10.0}))
    trainer.fit()
    predictor = {id(p) for p in trainer.method.predictor.parameters()}
    lrs = {all(id(p) in predictor for p in g["params"]): g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs[False] > 0 and lrs[True] == pytest.approx(10 * lrs[False])


def test_ablation_switches_no_predictor_and_zero_momentum(tiny_config):
    """use_predictor=false compares the projection itself; momentum 0 (constant) makes the target the online net."""
    method = build(
        tiny_config,
        "byol_fmnist",
        **{"method.use_predictor": False, "method.momentum": 0.0, "method.momentum_cosine": False},
    )
    assert isinstance(method.predictor, nn.Identity)
    views = random_views()
    out = method.training_step(views, Clock(0, 10, 10, 1))
    z1 = method.online.head(method.online.backbone(views[0]))
    z2_target = method.target.net.head(method.target.net.backbone(views[1])).detach()
    assert out.logs["loss_p1_z2"] == pytest.approx(method.loss(z1, z2_target).item(), rel=1e-5)
    out.loss.backward()
    with torch.no_grad():
        for param in method.online.parameters():
            if param.grad is not None:
                param.sub_(0.1 * param.grad)
    method.after_optimizer_step(Clock(0, 10, 10, 1))
    for online, target in zip(method.online.parameters(), method.target.parameters()):
        assert torch.equal(online, target) and not target.requires_grad


@pytest.mark.parametrize("recipe", RECIPES)
def test_few_steps_on_fashion_mnist(tiny_config, recipe):
    cfg = tiny_config(recipe, **SMALL_HEADS)
    trainer = Trainer(cfg)
    run = trainer.fit()
    method = trainer.method
    assert method.target.updates == cfg.trainer.max_steps  # once per optimizer step
    records = [line for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    assert len(records) == cfg.trainer.max_steps
    for key in ('"momentum"', '"loss_p1_z2"', '"loss_p2_z1"'):
        assert key in records[-1]
    backbone = build_model(cfg.model.backbone, in_chans=1)
    state = torch.load(run / "backbone.pt", weights_only=True)
    backbone.load_state_dict(state, strict=True)
    for key, value in method.eval_backbone().model.state_dict().items():
        assert torch.equal(state[key], value), key  # the online encoder is the one evaluated
    assert method.eval_backbone() is method.online.backbone


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("momentum", [-0.1, 1.5])
def test_a_target_momentum_outside_0_1_is_refused_in_one_line(tiny_config, recipe, momentum):
    cfg = tiny_config(recipe, **{"method.momentum": momentum})
    with pytest.raises(UserError, match=rf"method\.momentum={momentum} must lie in \[0, 1\]"):
        check_method(cfg)
