"""DINOv2's additions to DINO's and iBOT's losses (Oquab et al. 2023, §4; facebookresearch/dinov2 dinov2/loss/).

Sinkhorn-Knopp centring of the teacher (§4, from SwAV; dino_clstoken_loss.py and ibot_patch_loss.py
``sinkhorn_knopp_teacher``), on the teacher outputs t (B x K) of the whole global batch, eps = tau_t:

    Q = exp(t / tau_t)^T                               (K x B)
    3 times:  Q <- Q / (K * row sums)                  (each prototype gets 1/K of the mass)
              Q <- Q / (B * column sums)               (each sample gets 1/B)
    P_t = B * Q^T                                      (each row a distribution over the K prototypes)

KoLeo (§4, Sablayrolles et al. 2019; koleo_loss.py), on the student's [CLS] backbone features x
(n x D) of each global crop, L2-normalised:

    L_koleo = -1/n sum_i log(d_i + eps),   d_i = min_{j != i} || x_i - x_j ||

and the total (ssl_meta_arch.py forward_backward):

    L = w_dino L_DINO + w_koleo sum over the 2 global crops of L_koleo + w_ibot L_iBOT

L_DINO is DINO's loss and L_iBOT iBOT's masked-patch loss (each masked patch weighed by 1 / the masked
patches of its crop), both on the targets P_t above, or on DINO's centred P_t (``centering: centering``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from lightly.loss.koleo_loss import KoLeoLoss
from torch import Tensor

from sslzoo.distributed import is_distributed
from sslzoo.losses.dino import TeacherCentre

SINKHORN_KNOPP = "sinkhorn_knopp"  # train.centering's two values (ssl_default_config.yaml)
CENTERING = "centering"


@torch.no_grad()
def sinkhorn_knopp(teacher_out: Tensor, teacher_temp: float, iterations: int) -> Tensor:
    """Targets P_t (B, K) of the teacher's outputs, balanced over the global batch, in fp32
    (ibot_patch_loss.py ``sinkhorn_knopp_teacher``: B counts the rows of every process, all-reduced).

    Not lightly's SwAV ``sinkhorn``: it takes B as the local rows times the world size, which is
    DINOv2's [CLS] version and right when every process has as many rows; the masked patches differ
    in number between processes, and there each process's columns would get its own scale, which the
    all-reduced row sums then mix (tests/test_dinov2.py, two processes with 3 and 6 rows).
    """
    q = torch.exp(teacher_out.float() / teacher_temp).t()  # K x B
    k = q.shape[0]
    b = torch.tensor(float(q.shape[1]), device=q.device)
    total = q.sum()
    if is_distributed():
        dist.all_reduce(b)
        dist.all_reduce(total)
    q = q / total
    for _ in range(iterations):
        rows = q.sum(dim=1, keepdim=True)
        if is_distributed():
            dist.all_reduce(rows)
        q = q / rows / k  # each prototype: 1/K of the mass
        q = q / q.sum(dim=0, keepdim=True) / b  # each sample: 1/B
    return (q * b).t()


def teacher_targets(
    centre: TeacherCentre, teacher_out: Tensor, teacher_temp: float, centering: str, iterations: int
) -> Tensor:
    """P_t by ``centering``: Sinkhorn-Knopp, or DINO's centring and sharpening with ``centre`` (which then
    observes this step's teacher mean, committed after the optimizer step)."""
    if centering == SINKHORN_KNOPP:
        return sinkhorn_knopp(teacher_out, teacher_temp, iterations)
    centre.observe(teacher_out)
    return centre.teacher_probs(teacher_out, teacher_temp)


def koleo(features: Tensor) -> Tensor:
    """L_koleo of one crop's features (n, D), in fp32, over this process's batch as koleo_loss.py: the
    official code gathers nothing, so under DDP each GPU's nearest neighbours are among its own images.

    lightly's ``KoLeoLoss`` is the official one, except that it marks the diagonal with -2 instead of
    -1, which keeps a point from being its own neighbour when another one is antipodal."""
    with torch.autocast(features.device.type, enabled=False):
        return KoLeoLoss()(features.float())
