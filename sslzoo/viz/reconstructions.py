"""MAE's reconstructions (He et al. 2022, Figure 2): per test image, the masked input, the reconstruction
and the original, side by side.

The reconstruction is the decoder's prediction at the removed patches with the visible patches pasted
back, as the paper's figures show it. A model trained with ``norm_pix_loss`` predicts each patch's
normalised pixels; they are drawn with the original patch's mean and standard deviation put back (the
figure's only use of the removed pixels), which the caption says.
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightly.models.utils import patchify, unpatchify
from matplotlib.figure import Figure
from torch import Tensor

from sslzoo.errors import UserError
from sslzoo.eval.evaluate import method_from_checkpoint
from sslzoo.losses.mae import NORM_PIX_EPS
from sslzoo.rundir import RunDir
from sslzoo.viz.attention import sample_images
from sslzoo.viz.images import Source


@torch.no_grad()
def reconstruct(method, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(masked input, reconstruction, original), normalised images (B, C, H, W), for a method with ``reconstruct``."""
    p, channels = method.patch_size, images.shape[1]
    y, m, _ = method.reconstruct(images)
    x = patchify(images, p)
    if method.loss.norm_pix_loss:  # back from per-patch normalised pixels
        mean, var = x.mean(dim=-1, keepdim=True), x.var(dim=-1, keepdim=True)
        y = y * (var + NORM_PIX_EPS).sqrt() + mean
    removed = m.unsqueeze(-1)
    masked = unpatchify(torch.where(removed, torch.zeros_like(x), x), p, channels)
    return masked, unpatchify(torch.where(removed, y, x), p, channels), images


def reconstruction_figure(run: str, count: int, seed: int) -> tuple[Figure, Path]:
    """Rows of test images of ``run``: masked input (removed patches at the dataset mean), reconstruction,
    original; the masks are drawn from ``seed``."""
    if count < 1:
        raise UserError(f"images={count} must be at least 1")
    checkpoint = RunDir(run).checkpoint
    if not checkpoint.is_file():
        raise UserError(f"{run} has no checkpoint ({checkpoint}): reconstructions need the decoder, in last.pt")
    method, cfg, state = method_from_checkpoint(checkpoint)
    if not hasattr(method, "reconstruct"):
        raise UserError(f"{run} trained {cfg.method.name}, which reconstructs no pixels: name an mae run")
    method.eval()
    source = Source(Path(run).resolve().name, cfg.method.name, method.eval_backbone().model, cfg.data, Path(run), True)
    pictures, captions = sample_images(source, count)
    torch.manual_seed(seed)
    panels = [source.unnormalise(part) for part in reconstruct(method, torch.stack(pictures))]

    fig = Figure(figsize=(3.6, 1.2 * count + 0.6), layout="constrained")
    axes = fig.subplots(count, 3, squeeze=False)
    titles = ["masked input", "reconstruction", "original"]
    for row in range(count):
        for col, panel in enumerate(panels):
            image = panel[row].permute(1, 2, 0).numpy()
            ax = axes[row, col]
            ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(titles[col], fontsize=8)
        axes[row, 0].set_ylabel(captions[row], fontsize=7)
    note = ";\npredicted patches drawn with the original's mean and std" if method.loss.norm_pix_loss else ""
    fig.suptitle(
        f"{source.name} (step {state['step']})\n{method.hp.mask_ratio:.0%} of the patches removed{note}", fontsize=7
    )
    return fig, Path(run)
