"""NT-Xent, SimCLR's normalised temperature-scaled cross-entropy (Chen et al. 2020, Eq. 1 and Algorithm 1).

    sim(u, v) = u^T v / (||u|| ||v||)
    l(i, j)   = -log  exp(sim(z_i, z_j) / tau) / sum_{k != i} exp(sim(z_i, z_k) / tau)
    L         = 1/(2N) sum_k [ l(2k-1, 2k) + l(2k, 2k-1) ]

Each of the 2N views is an anchor with one positive (the other view of its
image) and 2N-2 negatives (both views of every other image), N being the
*global* batch. Across processes the projections are gathered with gradient
(:func:`sslzoo.distributed.gather_with_grad`): a plain ``all_gather`` returns
tensors without gradient, so none flows through the candidates and a multi-GPU
run no longer follows the paper's gradient, though its loss value looks right.

Like lightly's ``NTXentLoss(gather_distributed=True)`` (which computes the same
value and gradients; tests/test_distributed_losses.py checks both), but it also
gives the positive-pair accuracy that google-research/simclr logs as
``contrast_acc`` (``positive_accuracy``, kept from the logits of the last call), for which lightly
exposes no logits. The mean over the 2N
anchors is the paper's L; objective.py sums the two directions, twice this
value: AdamW and LARS' trust ratio cancel that factor, except on the biases and
norms that LARS leaves unadapted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslzoo.distributed import gather_with_grad, rank


class NTXentLoss(nn.Module):
    """NT-Xent of two views' projections; ``z_a[i]`` and ``z_b[i]`` are two views of image ``i`` of this
    process's batch."""

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature  # tau
        self.positive_accuracy = torch.tensor(float("nan"))  # of the last call, detached

    def logits(self, z_a: Tensor, z_b: Tensor) -> tuple[Tensor, Tensor]:
        """Each of this process's 2n anchors against all 2N views (itself masked out), and its positive."""
        n = len(z_a)
        # Similarities in fp32 even under autocast: with tau = 0.1 a bf16 cosine
        # would put errors of ~0.04 on the logits.
        with torch.autocast(z_a.device.type, enabled=False):
            z = F.normalize(torch.cat([z_a, z_b]).float(), dim=1)  # this process's 2n anchors
            candidates = gather_with_grad(z)  # all 2N views, process by process: [z_a, z_b] of rank 0, 1, ...
            logits = z @ candidates.T / self.temperature
            local = torch.arange(2 * n, device=z.device)
            first = rank() * 2 * n  # where this process's views start among the candidates
            itself = first + local
            positive = first + (local + n) % (2 * n)  # view a <-> view b of the same image
            return logits.masked_fill(F.one_hot(itself, len(candidates)).bool(), float("-inf")), positive

    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        """L; also keeps ``positive_accuracy``, the share of anchors whose most similar candidate is their
        positive (simclr's ``contrast_acc``), from the same logits: no second gather."""
        logits, positive = self.logits(z_a, z_b)
        self.positive_accuracy = (logits.detach().argmax(dim=1) == positive).float().mean()
        return F.cross_entropy(logits, positive)
