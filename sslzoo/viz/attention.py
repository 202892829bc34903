"""Self-attention of the [CLS] token in the last block, per head (DINO Figure 1).

timm computes attention with a fused kernel that never materialises the
weights, so they are recomputed here from the last block's ``attn.qkv``
projection on that block's (normalised) input, captured by a forward hook:

    q, k = split(qkv(norm1(x)));  A = softmax(q k^T / sqrt(d_head))  per head

The thresholded masks keep, per head, the smallest set of patches that holds
``keep`` of the [CLS] attention mass (DINO Figure 3/4 use 60%; the official
visualize_attention.py ``--threshold``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.figure import Figure
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from sslzoo.errors import UserError
from sslzoo.eval.features import eval_split
from sslzoo.viz.runs import Run


@torch.no_grad()
def last_block_attention(model: VisionTransformer, images: Tensor) -> Tensor:
    """Attention weights (B, heads, N, N) of the last block, N tokens including the prefix tokens."""
    block = model.blocks[-1]
    attn = block.attn
    captured: list[Tensor] = []
    hook = attn.register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
    try:
        model(images)
    finally:
        hook.remove()
    x = captured[0]
    batch, tokens, _ = x.shape
    qkv = attn.qkv(x).reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    return (q @ k.transpose(-2, -1) * attn.scale).softmax(dim=-1)


def cls_attention(model: VisionTransformer, images: Tensor) -> Tensor:
    """[CLS]-to-patch attention (B, heads, H, W) of the last block."""
    weights = last_block_attention(model, images)[:, :, 0, model.num_prefix_tokens :]
    grid = model.patch_embed.dynamic_feat_size(images.shape[-2:])
    return weights.reshape(*weights.shape[:2], *grid)


def mass_mask(attention: Tensor, keep: float) -> Tensor:
    """Boolean mask of the fewest largest entries (last dim) that hold ``keep`` of the total mass."""
    values, order = attention.sort(dim=-1)
    cumulative = (values / values.sum(dim=-1, keepdim=True)).cumsum(dim=-1)
    kept = cumulative > 1 - keep
    return torch.zeros_like(kept).scatter(-1, order, kept)


def sample_images(run: Run, count: int) -> tuple[Tensor, list[int]]:
    """``count`` test images, one per class first (in class order), as normalised tensors."""
    dataset = eval_split(run.data, "test")
    labels = getattr(getattr(dataset, "base", None), "labels", None)
    if labels is None:  # datasets not held in memory: the first images in order
        picks = list(range(min(count, len(dataset))))
    else:
        firsts = [int((labels == c).nonzero()[0]) for c in labels.unique().tolist()]
        chosen = set(firsts)
        picks = (firsts + [i for i in range(count + len(firsts)) if i not in chosen])[:count]
    samples = [dataset[i] for i in picks]
    return torch.stack([image for image, _ in samples]), [label for _, label in samples]


def mask_overlay(image: np.ndarray, mask: Tensor, colour: tuple[float, float, float]) -> np.ndarray:
    """``image`` (H, W, C in [0, 1]) dimmed outside the patch ``mask`` (h, w) and tinted inside it."""
    pixels = F.interpolate(mask[None, None].float(), size=image.shape[:2], mode="nearest")  # patches -> pixels
    inside = pixels[0, 0, :, :, None].numpy()
    rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
    return rgb * (0.25 + 0.75 * inside) * (1 - 0.4 * inside) + 0.4 * inside * np.asarray(colour)


def attention_figure(run: Run, count: int, keep: float) -> Figure:
    """One row per test image: the image, each head's [CLS] attention, then each head's thresholded mask."""
    if not 0 < keep < 1:
        raise UserError(f"threshold={keep} must lie strictly between 0 and 1 (DINO uses 0.6)")
    if count < 1:
        raise UserError(f"images={count} must be at least 1")
    model = run.backbone()
    if not isinstance(model, VisionTransformer):
        raise UserError(f"{run.path} trained {run.config['model']['backbone']}, not a ViT: attention maps need a ViT")
    images, labels = sample_images(run, count)
    maps = cls_attention(model, images)  # (B, heads, h, w)
    masks = mass_mask(maps.flatten(2), keep).reshape(maps.shape)
    heads = maps.shape[1]
    shown = run.unnormalise(images).permute(0, 2, 3, 1).numpy()
    names = run.class_names()
    colours = colormaps["tab10"].colors

    fig = Figure(figsize=(1.1 * (2 * heads + 1), 1.15 * len(images) + 0.5), layout="constrained")
    axes = fig.subplots(len(images), 2 * heads + 1, squeeze=False)
    for row, (image, label) in enumerate(zip(shown, labels)):
        axes[row, 0].imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
        axes[row, 0].set_ylabel(names[label], fontsize=8)
        for head in range(heads):
            axes[row, 1 + head].imshow(maps[row, head].numpy(), cmap="inferno", interpolation="nearest")
            overlay = mask_overlay(image, masks[row, head], colours[head % len(colours)])
            axes[row, 1 + heads + head].imshow(overlay.clip(0, 1), interpolation="nearest")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_title("image", fontsize=8)
    for head in range(heads):
        colour = colours[head % len(colours)]
        axes[0, 1 + head].set_title(f"head {head + 1}", fontsize=8, color=colour)
        axes[0, 1 + heads + head].set_title(f"mask {head + 1}", fontsize=8, color=colour)
    fig.suptitle(
        f"{run.name} ({run.method}): last-block [CLS] self-attention per head, and masks keeping {keep:.0%} of it",
        fontsize=9,
    )
    return fig
