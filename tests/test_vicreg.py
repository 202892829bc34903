"""VICReg: the loss against Eq. 1-6 computed directly (with the official code's two constants); the
expander's shape; the terms the run logs; the recipes' shape and the refused settings. The global-batch
statistics under DDP are checked in test_ddp.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sslzoo.build import build_method, check_method
from sslzoo.errors import UserError
from sslzoo.losses.vicreg import VICRegLoss, covariance_loss
from sslzoo.optim import scaled_lr
from sslzoo.recipes import load_config
from sslzoo.schedules import Clock


def paper_terms(z: list[list[float]], z_prime: list[list[float]], gamma: float = 1.0, eps: float = 1e-4) -> dict:
    """s (Eq. 5), v (Eq. 1) and c (Eq. 4) as printed, in plain Python (unbiased variance, 1/(n-1) covariance)."""
    n, d = len(z), len(z[0])

    def column(m, j):
        return [row[j] for row in m]

    def v(m):
        total = 0.0
        for j in range(d):
            x = column(m, j)
            mean = sum(x) / n
            var = sum((a - mean) ** 2 for a in x) / (n - 1)
            total += max(0.0, gamma - (var + eps) ** 0.5)
        return total / d

    def c(m):
        means = [sum(column(m, j)) / n for j in range(d)]
        total = 0.0
        for i in range(d):
            for j in range(d):
                if i != j:
                    cov = sum((row[i] - means[i]) * (row[j] - means[j]) for row in m) / (n - 1)
                    total += cov**2
        return total / d

    s = sum(sum((a - b) ** 2 for a, b in zip(z_i, zp_i)) for z_i, zp_i in zip(z, z_prime)) / n
    return {"s": s, "v": v(z) + v(z_prime), "c": c(z) + c(z_prime)}


def test_covariance_term_matches_lightlys_masked_gather_in_value_and_gradient():
    from lightly.loss.vicreg_loss import covariance_loss as lightly_covariance_loss

    torch.manual_seed(0)
    z = (3.0 * torch.randn(16, 32) + 1.0).requires_grad_()
    ours = covariance_loss(z)
    (grad,) = torch.autograd.grad(ours, z)
    theirs = lightly_covariance_loss(z)
    (grad_lightly,) = torch.autograd.grad(theirs, z)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    torch.testing.assert_close(grad, grad_lightly, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("scale", [0.3, 2.0])  # below and above the std target gamma = 1
def test_loss_is_eq_6_with_the_official_codes_constants(scale: float):
    torch.manual_seed(0)
    n, d = 7, 5
    z_a, z_b = scale * torch.randn(n, d), scale * torch.randn(n, d) + 0.5
    want = paper_terms(z_a.tolist(), z_b.tolist())
    loss = VICRegLoss(lambda_=25.0, mu=25.0, nu=1.0)
    terms = loss.terms(z_a, z_b)
    # main_vicreg.py: F.mse_loss averages over d too (s / d), and halves the sum of the two variance terms
    assert terms["invariance"].item() == pytest.approx(want["s"] / d, rel=1e-5)
    assert terms["variance"].item() == pytest.approx(want["v"] / 2, rel=1e-5)
    assert terms["covariance"].item() == pytest.approx(want["c"], rel=1e-5)
    total = 25.0 * want["s"] / d + 25.0 * want["v"] / 2 + 1.0 * want["c"]
    assert loss(z_a, z_b).item() == pytest.approx(total, rel=1e-5)
    assert (want["v"] > 0) == (scale < 1)  # the hinge is active only below gamma


def test_zero_coefficients_remove_their_terms():
    z_a, z_b = torch.randn(6, 4, requires_grad=True), torch.randn(6, 4)
    terms = VICRegLoss(1.0, 1.0, 1.0).terms(z_a, z_b)
    assert VICRegLoss(1.0, 0.0, 0.0)(z_a, z_b).item() == pytest.approx(terms["invariance"].item())
    assert VICRegLoss(0.0, 0.0, 1.0)(z_a, z_b).item() == pytest.approx(terms["covariance"].item())


def test_loss_is_fp32_under_autocast():
    z_a, z_b = torch.randn(6, 4).bfloat16(), torch.randn(6, 4).bfloat16()
    assert VICRegLoss(25.0, 25.0, 1.0)(z_a, z_b).dtype == torch.float32


def test_expander_and_logged_terms(tiny_config):
    torch.manual_seed(0)
    cfg = tiny_config("vicreg_fmnist", **{"method.proj_hidden_dim": 32, "method.out_dim": 24})
    method = build_method(cfg).train()
    layers = method.encoder.head.layers
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [32, 32, 24] and all(m.bias is None for m in linears)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in layers) == 2  # hidden layers only
    assert not isinstance(layers[-1], (nn.BatchNorm1d, nn.ReLU))  # the embedding is the last Linear's output
    out = method.training_step([torch.randn(8, 1, 28, 28) for _ in range(2)], Clock(0, 10, 10, 1))
    assert set(out.logs) == {"invariance", "variance", "covariance"}
    want = 25.0 * out.logs["invariance"] + 25.0 * out.logs["variance"] + out.logs["covariance"]
    assert out.loss.item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"method.mu_variance": -1.0}, "method.mu_variance"),
        ({"method.proj_layers": 0}, "method.proj_layers"),
        ({"method.zero_init_residual": True}, "method.zero_init_residual"),
    ],
)
def test_bad_settings_are_refused(overrides: dict, message: str):
    with pytest.raises(UserError, match=message):
        check_method(load_config("vicreg_fmnist", overrides))


def test_imagenet_recipe_follows_main_vicreg():
    cfg = load_config("vicreg_r50")
    hp, optim = cfg.method, cfg.optim
    assert (hp.proj_layers, hp.proj_hidden_dim, hp.out_dim) == (3, 8192, 8192)
    assert (hp.lambda_invariance, hp.mu_variance, hp.nu_covariance) == (25.0, 25.0, 1.0)
    assert optim.name == "lars" and optim.weight_decay == 1e-6 and optim.warmup_epochs == 10
    peak = scaled_lr(optim, 2048)
    assert peak == pytest.approx(1.6) and optim.min_lr == pytest.approx(0.001 * peak)
    assert cfg.data.batch_size * 32 == 2048 and cfg.trainer.epochs == 1000
    assert cfg.augment.blur_p == [1.0, 0.1] and cfg.augment.solarize_p == [0.0, 0.2]
