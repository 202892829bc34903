"""BYOL: the loss against Eq. 2 computed directly; the recipes' shape. The online/target
skeleton BYOL shares with MoCo v3 is tested in test_predictive.py."""

from __future__ import annotations

import pytest
import torch

from sslzoo.build import check_method
from sslzoo.losses.byol import RegressionLoss
from sslzoo.recipes import load_config

regression_loss = RegressionLoss()


def test_regression_loss_is_the_squared_distance_of_normalised_vectors():
    """Eq. 2: || p / ||p|| - z' / ||z'|| ||^2, averaged over the batch."""
    torch.manual_seed(0)
    p, z = torch.randn(6, 5), 3 * torch.randn(6, 5)
    want = 0.0
    for p_i, z_i in zip(p.tolist(), z.tolist()):
        p_norm = sum(x * x for x in p_i) ** 0.5
        z_norm = sum(x * x for x in z_i) ** 0.5
        want += sum((a / p_norm - b / z_norm) ** 2 for a, b in zip(p_i, z_i)) / len(p)
    assert regression_loss(p, z).item() == pytest.approx(want, rel=1e-5)
    assert regression_loss(p, p).item() == pytest.approx(0.0, abs=1e-6)
    assert regression_loss(p, -p).item() == pytest.approx(4.0, rel=1e-6)


def test_regression_loss_stops_the_gradient_into_the_target():
    p = torch.randn(4, 3, requires_grad=True)
    z = torch.randn(4, 3, requires_grad=True)
    regression_loss(p, z).backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert z.grad is None


@pytest.mark.parametrize("recipe", ["byol_r50", "byol_fmnist"])
def test_recipes_validate_with_the_paper_head(recipe):
    cfg = load_config(recipe)
    check_method(cfg)
    hp = cfg.method
    assert (hp.proj_layers, hp.out_dim, hp.proj_last_bn, hp.pred_last_bn) == (2, 256, False, False)
    assert cfg.augment.blur_p == [1.0, 0.1] and cfg.augment.solarize_p == [0.0, 0.2]
