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

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.figure import Figure
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from sslzoo.errors import UserError
from sslzoo.eval.features import eval_split
from sslzoo.viz.images import Source, attention_view, image_files, read_picture
from sslzoo.viz.runs import CLASS_NAMES


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


def sample_images(source: Source, count: int) -> tuple[list[Tensor], list[str]]:
    """``count`` test images of the source's dataset, one per class first (in class order), normalised."""
    dataset = eval_split(source.data, "test")
    labels = getattr(getattr(dataset, "base", None), "labels", None)
    if labels is None:  # datasets not held in memory: the first images in order
        picks = list(range(min(count, len(dataset))))
    else:
        firsts = [int((labels == c).nonzero()[0]) for c in labels.unique().tolist()]
        chosen = set(firsts)
        picks = (firsts + [i for i in range(count + len(firsts)) if i not in chosen])[:count]
    samples = [dataset[i] for i in picks]
    names = CLASS_NAMES.get(source.data.name)
    return [image for image, _ in samples], [names[label] if names else str(label) for _, label in samples]


def folder_images(source: Source, path: Path, size: int) -> tuple[list[Tensor], list[str]]:
    """Every picture of ``images=PATH`` at ``size`` pixels on its shorter side (default: the backbone's own)."""
    model = source.model
    side = size or model.patch_embed.img_size[0]
    files = image_files(path)
    views = [
        attention_view(read_picture(f, source.info.channels), side, model.patch_embed.patch_size, source.info)
        for f in files
    ]
    return views, [f.name for f in files]


def mask_overlay(image: np.ndarray, mask: Tensor, colour: tuple[float, float, float]) -> np.ndarray:
    """``image`` (H, W, C in [0, 1]) dimmed outside the patch ``mask`` (h, w) and tinted inside it."""
    pixels = F.interpolate(mask[None, None].float(), size=image.shape[:2], mode="nearest")  # patches -> pixels
    inside = pixels[0, 0, :, :, None].numpy()
    rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
    return rgb * (0.25 + 0.75 * inside) * (1 - 0.4 * inside) + 0.4 * inside * np.asarray(colour)


def attention_figure(source: Source, images: int | Path, keep: float, size: int = 0) -> Figure:
    """One row per image: the image, each head's [CLS] attention, then each head's thresholded mask.

    ``images``: how many test images of the source's dataset, or a picture / folder of pictures, drawn
    at ``size`` pixels on the shorter side (0: the backbone's native size); the position embeddings are
    interpolated to the image's patch grid (timm ``dynamic_img_size``, DINO's interpolate_pos_encoding).
    """
    if not 0 < keep < 1:
        raise UserError(f"threshold={keep} must lie strictly between 0 and 1 (DINO uses 0.6)")
    if size < 0:
        raise UserError(f"size={size} must be a positive number of pixels (or 0: the backbone's own)")
    model = source.model
    if not isinstance(model, VisionTransformer):
        raise UserError(f"{source.name} is a {type(model).__name__}, not a ViT: attention maps need a ViT")
    if isinstance(images, int):
        if images < 1:
            raise UserError(f"images={images} must be at least 1")
        if not source.has_dataset:
            raise UserError("released weights come without a dataset: pass images=FOLDER (or a picture) to draw on")
        pictures, captions = sample_images(source, images)
    else:
        pictures, captions = folder_images(source, images, size)
    maps = [cls_attention(model, picture[None])[0] for picture in pictures]  # each (heads, h, w)
    heads = maps[0].shape[0]
    colours = colormaps["tab10"].colors

    fig = Figure(figsize=(1.1 * (2 * heads + 1), 1.15 * len(pictures) + 0.5), layout="constrained")
    axes = fig.subplots(len(pictures), 2 * heads + 1, squeeze=False)
    for row, (picture, caption, attention) in enumerate(zip(pictures, captions, maps)):
        image = source.unnormalise(picture[None])[0].permute(1, 2, 0).numpy()
        masks = mass_mask(attention.flatten(1), keep).reshape(attention.shape)
        axes[row, 0].imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
        axes[row, 0].set_ylabel(caption, fontsize=8)
        for head in range(heads):
            axes[row, 1 + head].imshow(attention[head].numpy(), cmap="inferno", interpolation="nearest")
            overlay = mask_overlay(image, masks[head], colours[head % len(colours)])
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
        f"{source.name} ({source.method}): last-block [CLS] self-attention per head, and masks keeping {keep:.0%}",
        fontsize=9,
    )
    return fig
