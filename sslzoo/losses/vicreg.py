"""VICReg's variance-invariance-covariance loss (Bardes, Ponce, LeCun 2022, Eq. 1-6).

For the embeddings Z, Z' (n x d) of two views:

    s(Z, Z')  = 1/n sum_i || z_i - z'_i ||^2                            invariance (Eq. 5)
    S(x, eps) = sqrt(Var(x) + eps)
    v(Z)      = 1/d sum_j max(0, gamma - S(z^j, eps))                    variance (Eq. 1), gamma 1, eps 1e-4
    C(Z)      = 1/(n-1) sum_i (z_i - mean z)(z_i - mean z)^T
    c(Z)      = 1/d sum_{i != j} C(Z)_{i,j}^2                             covariance (Eq. 4)
    l(Z, Z')  = lambda s(Z, Z') + mu [v(Z) + v(Z')] + nu [c(Z) + c(Z')]  (Eq. 6)

computed as the official code computes it (facebookresearch/vicreg main_vicreg.py ``VICReg.forward``),
for which lambda = mu = 25, nu = 1 were tuned. It differs from Eq. 5-6 as printed by two constants:
the invariance is ``F.mse_loss``, the mean over the n x d entries (s / d), and the variance term is
``mu [v(Z) + v(Z')] / 2``. lightly's ``invariance_loss``, ``variance_loss`` and ``covariance_loss``
compute these terms exactly as main_vicreg.py does; lightly's ``VICRegLoss`` returns only their
weighted sum, and this module returns the terms too, so that the run logs them.

Under DDP the variance and covariance are statistics of the *global* batch: the embeddings are
gathered with gradient (main_vicreg.py ``FullGatherLayer``: all-gather, then the gradients all-reduced;
:func:`sslzoo.distributed.gather_with_grad`, lightly's ``GatherLayer``, does the same) and C divides
by N_global - 1. The invariance stays the local mean, which DDP's gradient average makes the global one.
"""

from __future__ import annotations

import torch
from lightly.loss.vicreg_loss import invariance_loss, variance_loss
from torch import Tensor, nn

from sslzoo.distributed import gather_with_grad


def covariance_loss(z: Tensor) -> Tensor:
    """c(Z) (Eq. 4) of embeddings ``z`` (n x d), as lightly's ``covariance_loss`` computes it.

    Deviation from lightly: the diagonal is subtracted instead of gathered away with a boolean mask,
    whose nonzero, index and index_put (and their backward) were among the largest ops of VICReg's CPU
    step: its fp32 step 837 images/s against 678 (README, "bf16 on CPUs with AMX"). Same value; the test
    compares the two.
    """
    z = z - z.mean(dim=0)
    cov = z.T @ z / (len(z) - 1)
    off_diagonal = cov - torch.diag(cov.diagonal())
    return off_diagonal.pow(2).sum() / z.shape[1]


class VICRegLoss(nn.Module):
    """lambda s + mu v + nu c of two views' embeddings ``z_a``, ``z_b`` (this process's batch)."""

    def __init__(self, lambda_: float, mu: float, nu: float, eps: float = 1e-4) -> None:
        super().__init__()
        self.lambda_, self.mu, self.nu, self.eps = lambda_, mu, nu, eps

    def terms(self, z_a: Tensor, z_b: Tensor) -> dict[str, Tensor]:
        """The unweighted invariance, variance and covariance terms, of the embeddings cast to fp32 (under
        autocast the covariance's matmul still runs in the autocast dtype, as the official code's under AMP)."""
        z_a, z_b = z_a.float(), z_b.float()
        invariance = invariance_loss(z_a, z_b)
        z_a, z_b = gather_with_grad(z_a), gather_with_grad(z_b)
        return {
            "invariance": invariance,
            "variance": 0.5 * (variance_loss(z_a, self.eps) + variance_loss(z_b, self.eps)),
            "covariance": covariance_loss(z_a) + covariance_loss(z_b),
        }

    def combine(self, terms: dict[str, Tensor]) -> Tensor:
        return self.lambda_ * terms["invariance"] + self.mu * terms["variance"] + self.nu * terms["covariance"]

    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        return self.combine(self.terms(z_a, z_b))
