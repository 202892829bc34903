"""SwAV: the loss against Sinkhorn-Knopp and Eq. 1-3 computed directly, the queue, the prototypes, refusals."""

from __future__ import annotations

import pytest
import torch

from sslzoo.build import build_method, check_method
from sslzoo.errors import UserError
from sslzoo.losses.swav import SwAVLoss
from sslzoo.schedules import Clock

TAU, EPS, ITERATIONS = 0.1, 0.05, 3


def direct_sinkhorn(scores: torch.Tensor, eps: float, iterations: int) -> torch.Tensor:
    """The codes of Algorithm 1 (Caron et al. 2020): scale the rows of Q = exp(C^T Z / eps) to r = 1/K and its
    columns to c = 1/B, ``iterations`` times, then each column to sum 1; returns (B, K)."""
    q = torch.exp(scores.double() / eps).T
    q = q / q.sum()
    k, b = q.shape
    r, c = torch.full((k,), 1 / k, dtype=q.dtype), torch.full((b,), 1 / b, dtype=q.dtype)
    for _ in range(iterations):
        q = q * (r / q.sum(dim=1))[:, None]
        q = q * (c / q.sum(dim=0))[None, :]
    return (q / q.sum(dim=0, keepdim=True)).T


def direct_swav_loss(z: list[torch.Tensor], prototypes: torch.Tensor, queue: list[torch.Tensor] | None = None):
    """Eq. 1 with multi-crop: codes of the 2 global crops (with the queue's rows in Sinkhorn-Knopp, if any),
    each predicted by every other crop, -sum_k q^k log p^k, averaged."""
    c = prototypes.double()
    scores = [view.double() @ c.T for view in z]
    total = 0.0
    for t in range(2):
        rows = scores[t] if queue is None else torch.cat([scores[t], queue[t].double() @ c.T])
        q = direct_sinkhorn(rows, EPS, ITERATIONS)[: len(z[t])]
        per_view = 0.0
        for s, score in enumerate(scores):
            if s == t:
                continue
            log_p = score / TAU - torch.logsumexp(score / TAU, dim=1, keepdim=True)
            per_view += -(q * log_p).sum(dim=1).mean()
        total += per_view / (len(z) - 1)
    return total / 2


def unit(*shape: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(*shape), dim=-1)


def test_loss_matches_sinkhorn_and_the_swapped_cross_entropy():
    torch.manual_seed(0)
    z, prototypes = [unit(6, 8) for _ in range(5)], unit(11, 8)  # 2 global + 3 local crops, K = 11
    loss = SwAVLoss(TAU, EPS, ITERATIONS, num_global=2, queue_length=0, dim=8)
    got, used = loss(z, prototypes, fill_queue=False)
    assert not used and got.dim() == 0
    assert got.item() == pytest.approx(direct_swav_loss(z, prototypes).item(), rel=1e-5)


def test_codes_are_equipartitioned_assignments():
    """Each code sums to 1; with enough iterations each prototype gets B/K of the batch (the constraint of Eq. 3)."""
    torch.manual_seed(1)
    scores = unit(12, 8) @ unit(4, 8).T
    q = direct_sinkhorn(scores, EPS, 200)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(12, dtype=q.dtype))
    torch.testing.assert_close(q.sum(dim=0), torch.full((4,), 3.0, dtype=q.dtype), rtol=1e-4, atol=1e-4)


def test_the_queue_fills_and_then_joins_sinkhorn():
    """Batches enter newest first; once full, the queue's rows take part in the codes of the batch."""
    torch.manual_seed(2)
    prototypes = unit(5, 8)
    loss = SwAVLoss(TAU, EPS, ITERATIONS, num_global=2, queue_length=10, dim=8)  # trimmed to 2 batches of 4
    batches = [[unit(4, 8) for _ in range(3)] for _ in range(3)]
    for z in batches[:2]:
        got, used = loss(z, prototypes, fill_queue=True)
        assert not used
        assert got.item() == pytest.approx(direct_swav_loss(z, prototypes).item(), rel=1e-5)
    assert torch.equal(loss.queue.z[:, :4], torch.stack(batches[1][:2]))  # newest first
    assert torch.equal(loss.queue.z[:, 4:8], torch.stack(batches[0][:2]))
    assert not loss.queue.z[:, 8:].any()  # the rest of the length that is not a whole batch stays unused
    queue = [torch.cat([batches[1][t], batches[0][t]]) for t in range(2)]
    got, used = loss(batches[2], prototypes, fill_queue=True)
    assert used
    assert got.item() == pytest.approx(direct_swav_loss(batches[2], prototypes, queue).item(), rel=1e-5)
    assert torch.equal(loss.queue.z[:, 4:8], torch.stack(batches[1][:2]))  # the oldest batch dropped out


def test_gradient_flows_through_predictions_not_codes():
    """A global crop's z gets the gradient of its prediction of the other global crop's code only: the code
    it gives the other views is a target (computed without gradient)."""
    torch.manual_seed(3)
    z = [unit(4, 8).requires_grad_() for _ in range(3)]  # 2 global crops + 1 local crop
    prototypes = unit(5, 8)
    loss, _ = SwAVLoss(TAU, EPS, ITERATIONS, num_global=2, queue_length=0, dim=8)(z, prototypes, fill_queue=False)
    loss.backward()
    c = prototypes.double()
    q_1 = direct_sinkhorn(z[1].detach().double() @ c.T, EPS, ITERATIONS)
    z_0 = z[0].detach().double().requires_grad_()
    log_p = torch.log_softmax(z_0 @ c.T / TAU, dim=1)
    (-(q_1 * log_p).sum(dim=1).mean() / 2 / 2).backward()  # 1/(V - 1) of the pairs, 1/2 of the codes
    torch.testing.assert_close(z[0].grad.double(), z_0.grad, rtol=1e-4, atol=1e-7)


def swav(tiny_config, **overrides):
    small = {"method.num_prototypes": 16, "method.proj_hidden_dim": 32, "data.batch_size": 4, **overrides}
    cfg = tiny_config("swav_fmnist", **small)
    return build_method(cfg), cfg


def views(cfg) -> list[torch.Tensor]:
    aug = cfg.augment
    sizes = [aug.global_size] * aug.global_crops + [aug.local_size] * aug.local_crops
    return [torch.randn(4, 1, size, size) for size in sizes]


def test_prototypes_are_unit_vectors_and_frozen_for_the_first_steps(tiny_config):
    torch.manual_seed(4)
    method, cfg = swav(tiny_config, **{"method.freeze_prototypes_niters": 2})
    assert method.prototypes.bias is None
    torch.testing.assert_close(method.prototypes.weight.norm(dim=1), torch.ones(16))
    for step, frozen in ((1, True), (2, False)):
        clock = Clock(step, 10, 5, 2)
        method(views(cfg), clock).loss.backward()
        method.before_optimizer_step(clock)
        assert (method.prototypes.weight.grad is None) == frozen
        method.zero_grad()
    with torch.no_grad():
        method.prototypes.weight.mul_(3.0)  # an optimizer step that leaves the sphere
    method.after_optimizer_step(Clock(2, 10, 5, 2))
    torch.testing.assert_close(method.prototypes.weight.norm(dim=1), torch.ones(16))


def test_the_queue_is_a_buffer_and_starts_at_epoch_queue_starts(tiny_config):
    torch.manual_seed(5)
    method, cfg = swav(tiny_config, **{"method.queue_length": 8, "method.epoch_queue_starts": 1.0})
    assert "loss.queue.z" in method.state_dict()  # checkpoints keep it
    method(views(cfg), Clock(4, 10, 5, 2))  # epoch 0
    assert not method.loss.queue.z.any()
    used = [method(views(cfg), Clock(step, 10, 5, 2)).logs["queue_used"] for step in (5, 6, 7)]
    assert used == [0.0, 0.0, 1.0]  # filled by 2 batches of 4, then used


ONE_GLOBAL_CROP = {"augment.global_crops": 1, "augment.blur_p": [0.5], "augment.solarize_p": [0.0]}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (ONE_GLOBAL_CROP, "augment.global_crops=2"),
        ({"method.epsilon": 0.0}, "method.epsilon=0.0 must be positive"),
        ({"method.temperature": -0.1}, "method.temperature=-0.1 must be positive"),
        ({"method.sinkhorn_iterations": 0}, "method.sinkhorn_iterations=0 must be at least 1"),
        ({"method.queue_length": -1}, "method.queue_length=-1 must be at least 0"),
    ],
)
def test_refused_settings(tiny_config, overrides, message):
    cfg = tiny_config("swav_fmnist", **overrides)
    with pytest.raises(UserError, match=message):
        check_method(cfg)
