"""iBOT's masked image modelling loss (Zhou et al. 2022, Eq. 1 and Algorithm 1; main_ibot.py iBOTLoss).

For each global crop, at its masked patches i (m_i = 1):

    P_t = softmax((g_t(u)_i - C') / tau_t'),   P_s = softmax(g_s(u_hat)_i / tau_s)
    L_MIM = mean over crops of  sum_i m_i H(P_t, P_s) / max(1, sum_i m_i)
    C'   <- m' * C' + (1 - m') * mean over crops and all their patches of g_t(u)

The teacher sees the unmasked crop u, the student the masked u_hat of the same
crop. Crops without masked patches count as 0 in the mean (main_ibot.py).
The [CLS] term is DINO's loss (``sslzoo.losses.dino.DINOLoss``); this loss shares
its teacher side (``TeacherCentre``: centring, sharpening, the centre committed once
per optimizer step) with its own centre C' and temperature tau_t'.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sslzoo.losses.dino import TeacherCentre


class MaskedPatchLoss(TeacherCentre):
    """Patch-level self-distillation at the masked positions of the same crop, with its own centre."""

    def forward(self, student_patches: Tensor, teacher_patches: Tensor, masks: Tensor, teacher_temp: float) -> Tensor:
        """L_MIM over a batch of global crops (all views concatenated, equal batch per view).

        ``student_patches`` and ``teacher_patches`` (B, N, K): outputs of every patch token;
        ``masks`` (B, N), True where the student saw the mask token: only those patches enter
        the loss (main_ibot.py iBOTLoss). With one batch size per view, the mean over all crops
        is the mean over views of the per-view means.
        """
        targets = self.teacher_probs(teacher_patches[masks], teacher_temp)
        return self.cross_entropy(student_patches[masks], targets, masks)

    def cross_entropy(self, student_masked: Tensor, targets: Tensor, masks: Tensor) -> Tensor:
        """L_MIM from the outputs (M, K) at the M masked patches (in ``masks.nonzero()`` order) and the teacher's
        targets P_t there: this centre's ``teacher_probs``, or DINOv2's Sinkhorn-Knopp targets. Each masked patch
        weighs 1 / (masked patches of its crop), and the sum is divided by the number of crops
        (dinov2 ibot_patch_loss.py forward_masked with masks_weight)."""
        log_probs = F.log_softmax(student_masked.float() / self.student_temp, dim=-1)
        cross_entropy = torch.sum(-targets * log_probs, dim=-1)
        crop_of_patch = masks.nonzero()[:, 0]
        per_crop = cross_entropy.new_zeros(len(masks)).index_add(0, crop_of_patch, cross_entropy)
        return (per_crop / masks.sum(dim=1).clamp_min(1)).mean()
