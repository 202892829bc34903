"""MoCo v3's contrastive loss (Chen, Xie, He 2021, Eq. 1 and Algorithm 1).

    L(q, k) = 2 tau * CE(q k^T / tau, positives),   q, k L2-normalised

Each query q_i (a prediction of one view) has one positive, the momentum key k_i
of the other view of the same image, and as negatives the keys of every other
image in the global batch: keys are gathered from all processes without gradient
(they come from the momentum encoder), so on rank r query i's positive is key
r * B + i. The 2 tau factor (moco-v3 builder.py) makes the gradient's scale
independent of tau; the method sums L(q1, k2) + L(q2, k1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslzoo.distributed import gather_no_grad, rank


class ContrastiveLoss(nn.Module):
    """ctr(q, k) of one view's queries against the other view's momentum keys."""

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature  # tau

    def forward(self, queries: Tensor, keys: Tensor) -> Tensor:
        """InfoNCE of this process's (B, d) queries against the (world x B, d) gathered keys, times 2 tau."""
        q = F.normalize(queries.float(), dim=1)
        k = gather_no_grad(F.normalize(keys.detach().float(), dim=1))
        logits = q @ k.T / self.temperature
        positives = torch.arange(len(q), device=q.device) + rank() * len(q)
        return F.cross_entropy(logits, positives) * (2 * self.temperature)
