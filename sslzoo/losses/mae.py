"""MAE's reconstruction loss (He et al. 2022, §3 "Reconstruction target"; models_mae.py ``forward_loss``).

For image n with patches x_n,i (each flattened to P = p * p * C values), predictions y_n,i and
mask m_n,i (1 where patch i was removed):

    t_n,i = (x_n,i - mean(x_n,i)) / sqrt(var(x_n,i) + 1e-6)    with norm_pix_loss (var unbiased), else x_n,i
    L = sum_n,i m_n,i * (1/P) ||y_n,i - t_n,i||^2 / sum_n,i m_n,i

the mean squared error over the removed patches only, as the paper computes it ("only on masked
patches", §3); the visible patches do not enter the loss. Under DDP every process has the same
number of removed patches (int(r N) per image), so the mean of the processes' losses that the
gradient all-reduce takes is the loss over the global batch.
"""

from __future__ import annotations

from torch import Tensor, nn

NORM_PIX_EPS = 1e-6  # models_mae.py forward_loss: (var + 1.e-6) ** .5


class MaskedPixelLoss(nn.Module):
    """Mean squared error of the predicted pixels of the removed patches, per-patch normalised targets optional."""

    def __init__(self, norm_pix_loss: bool) -> None:
        super().__init__()
        self.norm_pix_loss = norm_pix_loss

    def target(self, patches: Tensor) -> Tensor:
        """t: the patches' pixels (B, N, P), normalised per patch with ``norm_pix_loss``; in fp32."""
        patches = patches.float()
        if not self.norm_pix_loss:
            return patches
        mean, var = patches.mean(dim=-1, keepdim=True), patches.var(dim=-1, keepdim=True)  # var: unbiased, as torch's
        return (patches - mean) / (var + NORM_PIX_EPS).sqrt()

    def forward(self, prediction: Tensor, patches: Tensor, mask: Tensor) -> Tensor:
        """L for predictions and image patches (B, N, P) and the mask (B, N), True where a patch was removed."""
        per_patch = (prediction.float() - self.target(patches)).pow(2).mean(dim=-1)
        m = mask.float()
        return (per_patch * m).sum() / m.sum()
