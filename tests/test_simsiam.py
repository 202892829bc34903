"""SimSiam: the loss against Algorithm 1's D computed directly; the stop-gradient and its ablation; the
predictor, its switch and its fixed lr; the recipes' shape and the refused settings."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sslzoo.build import build_method, check_method
from sslzoo.errors import UserError
from sslzoo.losses.simsiam import SymmetrisedNegativeCosine
from sslzoo.optim import apply_schedules, build_optimizer, parameter_groups, scaled_lr
from sslzoo.recipes import load_config
from sslzoo.schedules import Clock

SMALL = {"method.proj_hidden_dim": 32, "method.out_dim": 16, "method.pred_hidden_dim": 8}


def D(p: list[list[float]], z: list[list[float]]) -> float:
    """Algorithm 1's D: minus the mean over the batch of the cosine of p_i and z_i, in plain Python."""
    total = 0.0
    for p_i, z_i in zip(p, z):
        dot = sum(a * b for a, b in zip(p_i, z_i))
        total -= dot / (sum(a * a for a in p_i) ** 0.5 * sum(b * b for b in z_i) ** 0.5)
    return total / len(p)


def test_loss_is_the_symmetrised_negative_cosine_of_algorithm_1():
    torch.manual_seed(0)
    p1, p2, z1, z2 = (s * torch.randn(6, 5) for s in (1.0, 2.0, 0.5, 3.0))
    want = D(p1.tolist(), z2.tolist()) / 2 + D(p2.tolist(), z1.tolist()) / 2
    loss = SymmetrisedNegativeCosine()
    assert loss(p1, p2, z1, z2).item() == pytest.approx(want, rel=1e-5)
    assert loss(z2, z1, z1, z2).item() == pytest.approx(-1.0, abs=1e-6)  # perfect agreement: the minimum, -1


def test_stop_gradient_stops_the_gradient_into_the_projections_and_the_ablation_lets_it_through():
    p1, p2, z1, z2 = (torch.randn(4, 3, requires_grad=True) for _ in range(4))
    SymmetrisedNegativeCosine(stop_gradient=True)(p1, p2, z1, z2).backward()
    assert p1.grad.abs().sum() > 0 and p2.grad.abs().sum() > 0 and z1.grad is None and z2.grad is None
    SymmetrisedNegativeCosine(stop_gradient=False)(p1, p2, z1, z2).backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0


def test_loss_is_fp32_under_autocast():
    p1, p2, z1, z2 = (torch.randn(4, 3).bfloat16() for _ in range(4))
    assert SymmetrisedNegativeCosine()(p1, p2, z1, z2).dtype == torch.float32


def build(tiny_config, **overrides):
    torch.manual_seed(0)
    cfg = tiny_config("simsiam_fmnist", **{**SMALL, **overrides})
    check_method(cfg)
    return build_method(cfg).train()


def test_one_network_for_both_views_with_the_predictor_on_top(tiny_config):
    method = build(tiny_config)
    assert not any("target" in name for name, _ in method.named_modules())  # no momentum encoder
    head = method.f.head
    assert isinstance(head.layers[-1], nn.BatchNorm1d) and not head.layers[-1].affine  # last BN: no affine
    assert [m.out_features for m in method.h.modules() if isinstance(m, nn.Linear)] == [8, 16]  # d -> d/2 -> d
    out = method.training_step([torch.randn(8, 1, 28, 28) for _ in range(2)], Clock(0, 10, 10, 1))
    assert -1 <= out.loss.item() <= 1
    out.loss.backward()
    assert all(p.grad is not None for p in method.parameters())


def test_without_predictor_p_is_z(tiny_config):
    method = build(tiny_config, **{"method.use_predictor": False, "method.fix_pred_lr": False})
    assert method.h is None and method.fixed_lr() == ()
    views = [torch.randn(8, 1, 28, 28)] * 2  # the same view twice: p = z on both sides, so cos = 1
    method.eval()  # BN with running statistics: both forwards give the same z
    assert method.training_step(views, Clock(0, 10, 10, 1)).loss.item() == pytest.approx(-1.0, abs=1e-5)


def test_the_predictor_keeps_the_peak_lr_while_the_rest_decays(tiny_config):
    cfg = tiny_config("simsiam_fmnist", **SMALL, **{"optim.lr_decay": "cosine"})  # main_simsiam.py's cosine
    method = build_method(cfg)
    assert method.fixed_lr() == ("h",)
    groups = parameter_groups(method, cfg.optim.exclude_bias_norm, method.lr_scales(), method.fixed_lr())
    fixed = {id(p) for g in groups if g["lr_fixed"] for p in g["params"]}
    assert fixed == {id(p) for p in method.h.parameters()}
    optimizer = build_optimizer(groups, cfg.optim, torch.device("cpu"))
    clock = Clock(step=80, total_steps=100, steps_per_epoch=10, epochs=10)
    lr, _ = apply_schedules(optimizer, cfg.optim, clock, peak_lr=0.1)
    assert lr < 0.05
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(0.1 if group["lr_fixed"] else lr)
    assert any(g["lr_fixed"] for g in optimizer.param_groups) and not all(g["lr_fixed"] for g in optimizer.param_groups)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"method.zero_init_residual": True}, "method.zero_init_residual"),
        ({"method.use_predictor": False}, "method.fix_pred_lr"),
        ({"augment.local_crops": 2}, "augment.local_crops=0"),
    ],
)
def test_bad_settings_are_refused(overrides: dict, message: str):
    with pytest.raises(UserError, match=message):
        check_method(load_config("simsiam_fmnist", overrides))


def test_imagenet_recipe_follows_main_simsiam():
    cfg = load_config("simsiam_r50")
    hp, optim, aug = cfg.method, cfg.optim, cfg.augment
    assert (hp.proj_hidden_dim, hp.out_dim, hp.pred_hidden_dim) == (2048, 2048, 512)
    assert hp.fix_pred_lr and hp.stop_gradient and hp.use_predictor and hp.zero_init_residual
    assert optim.name == "sgd" and optim.momentum == 0.9 and optim.weight_decay == 1e-4
    assert not optim.exclude_bias_norm and optim.warmup_epochs == 0
    assert scaled_lr(optim, 512) == pytest.approx(0.1)  # 0.05 x 512 / 256
    assert cfg.data.batch_size * 8 == 512 and cfg.trainer.epochs == 100
    assert aug.global_scale == [0.2, 1.0] and aug.jitter == [0.4, 0.4, 0.4, 0.1] and aug.blur_p == [0.5, 0.5]
    assert aug.solarize_p == [0.0, 0.0]
