"""SimCLR: NT-Xent against the paper's formula, the projection head, the recipes, a few training steps."""

from __future__ import annotations

import json
import math

import pytest
import torch
from lightly.loss import NTXentLoss as LightlyNTXentLoss
from torch import Tensor, nn

from sslzoo.backbones import build_model
from sslzoo.build import build_method, check_method
from sslzoo.checkpoint import load_checkpoint
from sslzoo.cli import train
from sslzoo.errors import UserError
from sslzoo.losses.ntxent import NTXentLoss
from sslzoo.optim import scaled_lr
from sslzoo.recipes import load_config
from sslzoo.schedules import Clock


def paper_nt_xent(z_a: Tensor, z_b: Tensor, tau: float) -> tuple[Tensor, float]:
    """SimCLR Eq. 1 written out: views 2k-1 and 2k of image k, one anchor at a time."""
    z = torch.stack([z_a, z_b], dim=1).reshape(2 * len(z_a), -1)  # z_1, z_2 from image 1, z_3, z_4 from image 2...
    n_views = len(z)

    def sim(u: Tensor, v: Tensor) -> Tensor:
        return torch.dot(u, v) / (u.norm() * v.norm())

    losses, hits = [], 0
    for i in range(n_views):
        j = i + 1 if i % 2 == 0 else i - 1  # the other view of the same image
        others = [k for k in range(n_views) if k != i]
        assert len(others) - 1 == n_views - 2  # one positive and 2N-2 negatives
        denominator = sum(torch.exp(sim(z[i], z[k]) / tau) for k in others)
        losses.append(-torch.log(torch.exp(sim(z[i], z[j]) / tau) / denominator))
        hits += max(others, key=lambda k: sim(z[i], z[k]).item()) == j
    return torch.stack(losses).mean(), hits / n_views


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_nt_xent_equals_the_papers_formula(tau: float) -> None:
    torch.manual_seed(0)
    z_a, z_b = torch.randn(6, 5), torch.randn(6, 5)
    z_b[:3] = z_a[:3] + 0.1 * torch.randn(3, 5)  # a few easy positives, so that accuracy is neither 0 nor 1
    criterion = NTXentLoss(tau)
    loss = criterion(z_a, z_b)
    accuracy = criterion.positive_accuracy.item()
    expected_loss, expected_accuracy = paper_nt_xent(z_a, z_b, tau)
    torch.testing.assert_close(loss, expected_loss)
    assert accuracy == pytest.approx(expected_accuracy)
    assert 0 < accuracy < 1


def test_nt_xent_gradients_equal_the_papers_formula() -> None:
    torch.manual_seed(1)
    z_a, z_b = torch.randn(5, 4, requires_grad=True), torch.randn(5, 4, requires_grad=True)
    grads = torch.autograd.grad(NTXentLoss(0.2)(z_a, z_b), (z_a, z_b))
    expected = torch.autograd.grad(paper_nt_xent(z_a, z_b, 0.2)[0], (z_a, z_b))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)


def test_each_anchor_has_one_positive_and_2n_minus_2_negatives() -> None:
    # Orthogonal views: every similarity is 0, so each anchor's softmax is uniform over
    # its 2N-1 candidates (the positive + 2N-2 negatives, itself excluded): L = log(2N-1).
    n = 4
    eye = torch.eye(2 * n)
    loss = NTXentLoss(0.1)(eye[:n], eye[n:])
    assert loss.item() == pytest.approx(math.log(2 * n - 1))


def test_nt_xent_agrees_with_lightly() -> None:
    torch.manual_seed(2)
    z_a, z_b = torch.randn(8, 16), torch.randn(8, 16)
    torch.testing.assert_close(NTXentLoss(0.1)(z_a, z_b), LightlyNTXentLoss(temperature=0.1)(z_a, z_b))


def test_nt_xent_is_computed_in_fp32_under_autocast() -> None:
    torch.manual_seed(3)
    z_a, z_b = torch.randn(8, 16), torch.randn(8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = NTXentLoss(0.1)(z_a, z_b)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, NTXentLoss(0.1)(z_a, z_b))


# --------------------------------------------------------------------------- the method


@pytest.fixture(scope="module")
def simclr():
    cfg = load_config("simclr_fmnist", {"trainer.device": "cpu"})
    return build_method(cfg)


def test_projection_head_is_simclrs(simclr) -> None:
    head = simclr.encoder.head.layers
    linears = [m for m in head if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(128, 512), (512, 512), (512, 128)]
    assert all(m.bias is None for m in linears)  # each is followed by a BN
    last_bn = head[-1]
    assert isinstance(last_bn, nn.BatchNorm1d)  # no ReLU after the last layer
    assert last_bn.weight is not None and last_bn.bias is None  # scale, no shift (BatchNorm center=False)
    assert sum(isinstance(m, nn.ReLU) for m in head) == 2


def test_training_step_outputs(simclr) -> None:
    torch.manual_seed(0)
    views = [torch.randn(8, 1, 28, 28), torch.randn(8, 1, 28, 28)]
    out = simclr.training_step(views, Clock(0, 10, 10, 10))
    assert out.loss.requires_grad and torch.isfinite(out.loss)
    assert 0.0 <= out.logs["positive_accuracy"] <= 1.0
    assert out.embeddings.shape == (8, 128) and not out.embeddings.requires_grad
    assert out.features.shape == (8, 128) and not out.features.requires_grad
    assert simclr.eval_backbone() is simclr.encoder.backbone
    simclr.zero_grad()
    out.loss.backward()
    first = next(simclr.encoder.backbone.model.patch_embed.parameters())  # the stem's first layer
    assert first.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"method.temperature": 0.0}, "method.temperature"),
        ({"augment.local_crops": 2}, "augment.local_crops=0"),
    ],
)
def test_bad_settings_are_refused(overrides: dict, message: str) -> None:
    cfg = load_config("simclr_fmnist", overrides)
    with pytest.raises(UserError, match=message):
        check_method(cfg)


def test_imagenet_recipe_follows_the_paper() -> None:
    cfg = load_config("simclr_r50")
    assert cfg.method.temperature == 0.1 and cfg.method.out_dim == 128
    assert cfg.optim.name == "lars" and cfg.optim.weight_decay == 1e-6 and cfg.optim.warmup_epochs == 10
    assert scaled_lr(cfg.optim, 4096) == pytest.approx(4.8)  # 0.075 x sqrt(4096) = 0.3 x 4096 / 256
    aug = cfg.augment
    assert aug.global_scale == [0.08, 1.0] and aug.jitter == [0.8, 0.8, 0.8, 0.2] and aug.jitter_p == 0.8
    assert aug.grayscale_p == 0.2 and aug.blur_p == [0.5, 0.5] and aug.solarize_p == [0.0, 0.0]
    assert cfg.trainer.epochs == 100


def test_fmnist_recipe_trains_and_exports_the_backbone(tiny_config) -> None:
    cfg = tiny_config("simclr_fmnist")
    run = train(cfg)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) and 0 <= r["positive_accuracy"] <= 1 for r in records)
    model = build_model(cfg.model.backbone, in_chans=1)
    model.load_state_dict(torch.load(run / "backbone.pt", weights_only=True), strict=True)
    # the exported backbone is the trained encoder's, not a fresh one
    state = load_checkpoint(run / "checkpoints" / "last.pt", "simclr", cfg.model.backbone)["model"]
    prefix = "encoder.backbone.model."
    trained = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    assert trained.keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, trained[key])
