"""DINO's self-distillation loss (Caron et al. 2021, Eq. 2-3 and Algorithm 1).

    P_t = softmax((g_t(x) - C) / tau_t),   P_s = softmax(g_s(x') / tau_s)
    L   = mean over pairs (t global view, s any view, t != s) of  H(P_t, P_s)
    C  <- m * C + (1 - m) * mean over the batch of g_t(x)

The teacher side (centring, sharpening and the centre C) is ``TeacherCentre``,
which iBOT's patch loss shares. Unlike lightly's ``DINOLoss``, the centre is not
updated inside ``forward``: ``observe`` computes (and all-reduces) the teacher
mean and ``commit`` applies it once per optimizer step, which stays correct under
gradient accumulation and lets every rank call the all-reduce at the same point.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


class TeacherCentre(nn.Module):
    """The centre C of the teacher's outputs, the centred and sharpened P_t, and C's update once per step;
    with the student's fixed temperature tau_s (the teacher's tau_t follows a schedule: an argument)."""

    def __init__(self, out_dim: int, student_temp: float, center_momentum: float) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.pending_center: Tensor | None = None  # this step's batch mean, committed after the optimizer step

    def teacher_probs(self, teacher_out: Tensor, teacher_temp: float) -> Tensor:
        """Centred and sharpened teacher distribution P_t (in fp32)."""
        return F.softmax((teacher_out.float() - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def batch_center(self, teacher_out: Tensor) -> Tensor:
        """Mean teacher output over the global batch (all-reduced across processes)."""
        total = teacher_out.float().sum(dim=0, keepdim=True)
        count = torch.tensor(float(len(teacher_out)), device=total.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(total)
            dist.all_reduce(count)
        return total / count

    @torch.no_grad()
    def update_center(self, batch_center: Tensor) -> None:
        self.center.mul_(self.center_momentum).add_(batch_center * (1 - self.center_momentum))

    def observe(self, teacher_out: Tensor) -> None:
        """Keep this step's batch mean (B, K) of the teacher; ``commit`` applies it after the optimizer step."""
        self.pending_center = self.batch_center(teacher_out)

    def commit(self) -> None:
        """C <- m C + (1 - m) mean(t), once per optimizer step (nothing if no step was observed)."""
        if self.pending_center is not None:
            self.update_center(self.pending_center)
            self.pending_center = None


class DINOLoss(TeacherCentre):
    """H(P_t, P_s) over pairs of different views, with the [CLS] centre C."""

    def forward(self, student_out: list[Tensor], teacher_out: list[Tensor], teacher_temp: float) -> Tensor:
        """Cross-entropy averaged over all (teacher view, student view) pairs of different views.

        ``teacher_out`` holds the global views, ``student_out`` every view with the
        global views first, so view ``i`` of both is the same crop.
        """
        return self.cross_entropy(student_out, [self.teacher_probs(t, teacher_temp) for t in teacher_out])

    def cross_entropy(self, student_out: list[Tensor], targets: list[Tensor]) -> Tensor:
        """H(P_t, P_s) averaged over pairs of different views, given the teacher's targets P_t (one per global
        view): this centre's ``teacher_probs``, or DINOv2's Sinkhorn-Knopp targets (``losses/dinov2.py``)."""
        log_probs = [F.log_softmax(s.float() / self.student_temp, dim=-1) for s in student_out]
        total, pairs = 0.0, 0
        for t_index, target in enumerate(targets):
            for s_index, log_prob in enumerate(log_probs):
                if s_index == t_index:
                    continue  # same view: skipped (DINO Algorithm 1)
                total = total + torch.sum(-target * log_prob, dim=-1).mean()
                pairs += 1
        return total / pairs


@torch.no_grad()
def distillation_terms(student_out: Tensor, teacher_probs: Tensor, student_temp: float) -> dict[str, float]:
    """Teacher entropy H(P_t) and KL(P_t || P_s) on matching views (DINO Figure 7's collapse signals)."""
    log_ps = F.log_softmax(student_out.float() / student_temp, dim=-1)
    log_pt = torch.log(teacher_probs.clamp_min(1e-12))
    entropy = -(teacher_probs * log_pt).sum(-1).mean()
    kl = (teacher_probs * (log_pt - log_ps)).sum(-1).mean()
    return {"teacher_entropy": entropy.item(), "kl": kl.item()}
