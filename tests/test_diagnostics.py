"""Collapse diagnostics on constructed inputs, each against an independent computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sslzoo.diagnostics import collapse_metrics, effective_rank, embedding_std
from sslzoo.losses.dino import DINOLoss, distillation_terms


def numpy_effective_rank(x: np.ndarray) -> float:
    """exp of the entropy of the normalised eigenvalues of the covariance (Roy & Vetterli 2007)."""
    eigenvalues = np.clip(np.linalg.eigvalsh(np.cov(x.astype(np.float64), rowvar=False)), 0, None)
    p = eigenvalues / eigenvalues.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


@pytest.mark.parametrize("scale", [1e-3, 1.0, 100.0])
def test_a_collapsed_embedding_has_std_0_and_rank_1(scale: float) -> None:
    point = torch.randn(1, 256) * scale
    collapsed = point.repeat(128, 1)
    assert embedding_std(collapsed) == pytest.approx(0.0, abs=1e-6)
    assert effective_rank(collapsed) == pytest.approx(1.0)
    assert collapse_metrics(collapsed) == {"embed_std": embedding_std(collapsed), "embed_rank": 1.0}


def test_embeddings_along_one_direction_have_rank_1_but_nonzero_std() -> None:
    direction, offset = torch.randn(64), torch.randn(64)
    line = torch.randn(200, 1) * direction + offset  # every point on one line: dimensional collapse
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-3)
    assert embedding_std(line) > 0.01


def test_k_equal_orthogonal_directions_have_rank_k() -> None:
    k, d = 5, 32
    x = torch.zeros(2 * k, d)
    x[:k, :k] = torch.eye(k)
    x[k:, :k] = -torch.eye(k)  # centred, covariance with k equal eigenvalues
    assert effective_rank(x) == pytest.approx(k, rel=1e-5)


def test_spread_embeddings_have_std_1_over_sqrt_d_and_full_rank() -> None:
    torch.manual_seed(0)
    d = 16
    x = torch.randn(8192, d)  # isotropic: uniform directions on the sphere after L2 normalisation
    assert embedding_std(x) == pytest.approx(1 / math.sqrt(d), rel=0.03)
    assert effective_rank(x) == pytest.approx(d, rel=0.02)


def test_effective_rank_matches_an_eigendecomposition_of_the_covariance() -> None:
    torch.manual_seed(1)
    x = torch.randn(300, 20) @ torch.diag(torch.logspace(0, -2, 20)) + 3.0
    assert effective_rank(x) == pytest.approx(numpy_effective_rank(x.numpy()), rel=1e-4)


def test_embedding_std_matches_a_direct_computation() -> None:
    torch.manual_seed(2)
    x = torch.randn(100, 8) + torch.tensor([4.0] + [0.0] * 7)
    normalised = x.numpy() / np.linalg.norm(x.numpy(), axis=1, keepdims=True)
    assert embedding_std(x) == pytest.approx(normalised.std(axis=0, ddof=1).mean(), rel=1e-5)


# --------------------------------------------------------------------------- DINO's terms (Figure 7)


def test_a_uniform_teacher_has_maximal_entropy() -> None:
    k = 64
    student = torch.randn(8, k)
    uniform = torch.full((8, k), 1 / k)
    terms = distillation_terms(student, uniform, student_temp=0.1)
    assert terms["teacher_entropy"] == pytest.approx(math.log(k), rel=1e-6)
    peaked = F.softmax(torch.randn(8, k) / 0.04, dim=-1)
    assert distillation_terms(student, peaked, student_temp=0.1)["teacher_entropy"] < math.log(k)


def test_a_one_hot_teacher_has_zero_entropy() -> None:
    one_hot = F.one_hot(torch.arange(8) % 4, 16).float()
    assert distillation_terms(torch.randn(8, 16), one_hot, 0.1)["teacher_entropy"] == pytest.approx(0.0, abs=1e-6)


def test_kl_matches_torch_and_vanishes_when_the_student_matches_the_teacher() -> None:
    torch.manual_seed(3)
    tau_s = 0.1
    student, teacher = torch.randn(16, 32), F.softmax(torch.randn(16, 32), dim=-1)
    expected = F.kl_div(F.log_softmax(student / tau_s, dim=-1), teacher, reduction="batchmean")
    assert distillation_terms(student, teacher, tau_s)["kl"] == pytest.approx(expected.item(), rel=1e-5)
    matching = tau_s * torch.log(teacher)  # softmax(matching / tau_s) == teacher
    assert distillation_terms(matching, teacher, tau_s)["kl"] == pytest.approx(0.0, abs=1e-5)


def test_center_momentum_1_keeps_the_centre_at_zero() -> None:
    """The 'no centring' ablation: C <- 1 * C + 0 * mean(t) leaves C = 0, so P_t = softmax(g_t / tau_t)."""
    loss = DINOLoss(out_dim=8, student_temp=0.1, center_momentum=1.0)
    for _ in range(3):
        loss.update_center(loss.batch_center(torch.randn(16, 8) + 5))
    assert torch.equal(loss.center, torch.zeros(1, 8))
    teacher = torch.randn(4, 8)
    assert torch.allclose(loss.teacher_probs(teacher, 0.04), F.softmax(teacher / 0.04, dim=-1))
