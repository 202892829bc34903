"""SwAV's swapped prediction (Caron et al. 2020, Eq. 1-3 and §3.1; facebookresearch/swav main_swav.py).

    z     = g(f(x)) / ||g(f(x))||,  C = [c_1 .. c_K] prototypes of unit norm
    p_s^k = exp(z_s^T c_k / tau) / sum_k' exp(z_s^T c_k' / tau)                       (Eq. 2)
    Q*    = Diag(u) exp(C^T Z / eps) Diag(v), rows summing to 1/K, columns to 1/B   (Eq. 3: Sinkhorn-Knopp)
    q_t   = B Q*[:, t]                                                              (the code of global crop t)
    L     = 1/|T| sum_{t in T} 1/(V - 1) sum_{s != t} - sum_k q_t^k log p_s^k      (Eq. 1 with multi-crop, §3.2)

T are the global crops (``crops_for_assign 0 1``) and V counts every crop. Q* is
computed over the *global* batch: the official ``distributed_sinkhorn``
all-reduces the total and the row sums, as lightly's ``sinkhorn`` does with
``gather_distributed=True`` (it divides the rows by K one step later, which the
column normalisation cancels). lightly's ``SwaVLoss`` (with that ``sinkhorn``)
computes L; this module adds what it leaves to the caller: the scores in fp32, and
main_swav.py's queue of earlier batches' projections, whose scores join the
batch's in Sinkhorn-Knopp (codes are kept for the batch only).
"""

from __future__ import annotations

import torch
from lightly.loss.swav_loss import SwaVLoss as LightlySwaVLoss
from torch import Tensor, nn

from sslzoo.distributed import gather_no_grad, rank, world_size


class ProjectionQueue(nn.Module):
    """The projections z of the global crops of the last batches, newest first (main_swav.py ``queue``).

    main_swav.py keeps one queue per process, of ``queue_length // world_size`` rows, and
    trims ``queue_length`` to a multiple of the global batch. Here every process holds
    the queue of the whole global batch in one buffer, so that the checkpoint (written by
    rank 0) and DDP's buffer broadcast (from rank 0) keep every process's rows; each
    process reads its own share, the rows that came from it. Rows are in the global
    batch's order (the sampler deals sample j of a global batch to rank j mod world_size),
    so the buffer does not depend on the number of processes.
    """

    def __init__(self, crops: int, length: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("z", torch.zeros(crops, length, dim))

    def blocks(self, local_batch: int) -> Tensor:
        """The rows in use as (crops, batches, global batch, dim): queue_length minus its rest modulo the global
        batch, as main_swav.py trims it."""
        batch = local_batch * world_size()
        rows = self.z.shape[1] - self.z.shape[1] % batch
        return self.z[:, :rows].view(self.z.shape[0], rows // batch, batch, self.z.shape[2])

    def in_use(self, local_batch: int) -> bool:
        """Whether the queue is long enough for one global batch and full (main_swav.py: its last row is set)."""
        blocks = self.blocks(local_batch)
        return blocks.shape[1] > 0 and bool(blocks[:, -1, -1].any())

    def local(self, local_batch: int) -> Tensor:
        """This process's rows, (crops, rows / world_size, dim)."""
        blocks = self.blocks(local_batch)
        return blocks[:, :, rank() :: world_size()].reshape(self.z.shape[0], -1, self.z.shape[2])

    @torch.no_grad()
    def push(self, z: Tensor) -> None:
        """Add this step's projections (crops, local batch, dim) of every process; the oldest batch drops out."""
        blocks = self.blocks(z.shape[1])
        if blocks.shape[1] == 0:
            return
        crops, batch, dim = z.shape
        by_rank = gather_no_grad(z.transpose(0, 1).contiguous()).view(world_size(), batch, crops, dim)
        blocks[:, 1:] = blocks[:, :-1].clone()
        blocks[:, 0] = by_rank.transpose(0, 1).reshape(-1, crops, dim).transpose(0, 1)  # rank r's i-th: i * W + r


class SwAVLoss(nn.Module):
    """L of Eq. 1 over multi-crop views, with Sinkhorn-Knopp codes of the global crops over the global batch."""

    def __init__(
        self, temperature: float, epsilon: float, iterations: int, num_global: int, queue_length: int, dim: int
    ) -> None:
        super().__init__()
        self.num_global = num_global
        self.swapped = LightlySwaVLoss(temperature, iterations, epsilon, sinkhorn_gather_distributed=True)
        self.queue = ProjectionQueue(num_global, queue_length, dim)

    def forward(self, z: list[Tensor], prototypes: Tensor, fill_queue: bool) -> tuple[Tensor, bool]:
        """L for the views' normalised projections ``z`` (global crops first) and unit prototypes C (K, D);
        and whether the queue's scores took part.

        With ``fill_queue`` (from epoch_queue_starts on), the global crops' projections enter
        the queue after this step's codes are computed, and once it is full its scores
        against the current C take part in Sinkhorn-Knopp (main_swav.py ``train``).
        """
        # Scores in fp32 even under autocast: exp(score / 0.05) turns a bf16 rounding of 4e-3 into 8% of Q.
        with torch.autocast(prototypes.device.type, enabled=False):
            c = prototypes.float()
            scores = [view.float() @ c.T for view in z]
            batch = len(z[0])
            used = fill_queue and self.queue.in_use(batch)
            with torch.no_grad():  # the queue only shapes the codes
                queue_scores = [rows @ c.T for rows in self.queue.local(batch)] if used else None
            loss = self.swapped(scores[: self.num_global], scores[self.num_global :], queue_scores)
        if fill_queue:
            self.queue.push(torch.stack(z[: self.num_global]).detach().float())
        return loss.squeeze(0), used
