"""The photometric half of the augmentation, batched, on the training device.

The loader workers crop and flip (uint8) and draw every other random parameter
of a view (:func:`draw_params`, under the per-sample seed); :func:`apply_params`
then applies colour jitter in its per-image random order, grayscale, Gaussian
blur, solarize and normalize to a whole batch at once, each image with its own
parameters. Given the same parameters it computes what torchvision's v2
functional ops compute image by image on float images (``tests/test_photometric.py``),
so the distributions are those of the per-image pipeline in :mod:`sslzoo.augment`.
That pipeline applies jitter to uint8 images, rounding down after each op; this
one keeps float values, a difference of at most a few 1/255 steps per pixel.
"""

from __future__ import annotations

import math
from enum import IntEnum

import torch
import torch.nn.functional as F
from torch import Tensor

SOLARIZE_THRESHOLD = 128 / 255  # torchvision RandomSolarize(threshold=128) on uint8 images (DINO, BYOL)
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, torchvision's rgb_to_grayscale


class P(IntEnum):
    """Columns of a view's parameter vector."""

    BRIGHTNESS = 0  # factor; 1 = unchanged
    CONTRAST = 1
    SATURATION = 2
    HUE = 3  # shift in turns; 0 = unchanged
    ORDER = 4  # four columns: the jitter ops' random order (0 brightness .. 3 hue), as ColorJitter
    GRAYSCALE = 8  # 1 = convert
    SIGMA = 9  # blur sigma; 0 = no blur
    SOLARIZE = 10  # 1 = solarize


NUM_PARAMS = 11


JITTER_DRAWS = 13  # uniforms per view: apply, three factors, hue, four order keys, grayscale, blur, sigma, solarize


def draw_params(
    jitter: tuple[float, float, float, float],
    jitter_p: float,
    grayscale_p: float,
    blur_sigma: tuple[float, float],
    blur_p: float,
    solarize_p: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One view's parameters from ``generator`` (default: the global torch RNG), with the distributions of
    torchvision's RandomApply(ColorJitter), RandomGrayscale, RandomApply(GaussianBlur) and RandomSolarize.

    All uniforms come from one call rather than one call per number (with the crop's draws batched too,
    200 steps of simclr_fmnist took 9% less wall time: README, "Where the augmentation runs");
    the random order of the jitter ops is the argsort of four uniforms, a uniform permutation as
    ColorJitter's ``randperm``."""
    u = torch.rand(JITTER_DRAWS, generator=generator).tolist()
    brightness, contrast, saturation, hue = jitter
    factors, shift, order = [1.0, 1.0, 1.0], 0.0, [0.0, 1.0, 2.0, 3.0]
    if u[0] < jitter_p:
        for i, strength in enumerate((brightness, contrast, saturation)):
            if strength > 0:
                low = max(0.0, 1 - strength)
                factors[i] = low + (1 + strength - low) * u[1 + i]
        if hue > 0:
            shift = hue * (2 * u[4] - 1)
        order = [float(i) for i in sorted(range(4), key=u[5:9].__getitem__)]
    sigma = blur_sigma[0] + (blur_sigma[1] - blur_sigma[0]) * u[11] if u[10] < blur_p else 0.0
    columns = [*factors, shift, *order, float(u[9] < grayscale_p), sigma, float(u[12] < solarize_p)]  # P's order
    return torch.tensor(columns)


# --------------------------------------------------------------------------- batched ops on (B, C, H, W) in [0, 1]


def _per_image(values: Tensor) -> Tensor:
    return values.view(-1, 1, 1, 1)


def _gray(x: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    factor = _per_image(factor)
    return (factor * x + (1 - factor) * other).clamp(0, 1)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    return (x * _per_image(factor)).clamp(0, 1)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    return x if x.shape[1] == 1 else _blend(x, _gray(x), factor)


def _rgb_to_hsv(x: Tensor) -> Tensor:
    r, g, b = x.unbind(1)
    value, argmax = x.max(dim=1)
    chroma = value - x.min(dim=1).values
    has_chroma = chroma > 0
    saturation = torch.where(value > 0, chroma / value.clamp_min(1e-12), torch.zeros_like(value))
    safe = torch.where(has_chroma, chroma, torch.ones_like(chroma))
    hue = torch.stack([((g - b) / safe) % 6, (b - r) / safe + 2, (r - g) / safe + 4], dim=1)
    hue = hue.gather(1, argmax.unsqueeze(1)).squeeze(1) / 6
    hue = torch.where(has_chroma, hue, torch.zeros_like(hue))
    return torch.stack([hue, saturation, value], dim=1)


def _hsv_to_rgb(x: Tensor) -> Tensor:
    hue, saturation, value = x.unbind(1)
    # f(n) = V - V S max(0, min(k, 4 - k, 1)), k = (n + 6 H) mod 6, for n = 5, 3, 1 (R, G, B)
    channels = []
    for n in (5, 3, 1):
        k = (n + 6 * hue) % 6
        channels.append(value - value * saturation * torch.minimum(k, 4 - k).clamp(0, 1))
    return torch.stack(channels, dim=1)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    hsv = _rgb_to_hsv(x)
    hue = (hsv[:, 0] + _per_image(shift)[:, 0]) % 1.0
    shifted = _hsv_to_rgb(torch.stack([hue, hsv[:, 1], hsv[:, 2]], dim=1))
    return torch.where(_per_image(shift) != 0, shifted, x)


JITTER_OPS = (
    (adjust_brightness, P.BRIGHTNESS),
    (adjust_contrast, P.CONTRAST),
    (adjust_saturation, P.SATURATION),
    (adjust_hue, P.HUE),
)


def color_jitter(x: Tensor, params: Tensor) -> Tensor:
    """Each image's four jitter ops in its own order (an unjittered image has factors 1 and shift 0)."""
    order = params[:, P.ORDER : P.ORDER + 4].long()
    for position in range(4):
        for op_index, (op, column) in enumerate(JITTER_OPS):
            chosen = order[:, position] == op_index
            if chosen.any():
                x = torch.where(_per_image(chosen), op(x, params[:, column]), x)
    return x


def grayscale(x: Tensor, chosen: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    return torch.where(_per_image(chosen.bool()), _gray(x).expand_as(x), x)


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Separable Gaussian blur with reflect padding, each image with its own sigma (0 = none)."""
    batch, channels, height, width = x.shape
    offsets = torch.arange(kernel_size, dtype=x.dtype, device=x.device) - (kernel_size - 1) / 2
    safe_sigma = torch.where(sigma > 0, sigma, torch.ones_like(sigma)).to(x.dtype)
    kernel = torch.softmax(-((offsets / safe_sigma[:, None]) ** 2) / 2, dim=1)  # (B, k), sums to 1
    kernel = kernel.repeat_interleave(channels, dim=0)  # one per (image, channel) group
    pad = kernel_size // 2
    flat = F.pad(x.reshape(1, batch * channels, height, width), (pad, pad, pad, pad), mode="reflect")
    flat = F.conv2d(flat, kernel.view(-1, 1, 1, kernel_size), groups=batch * channels)
    flat = F.conv2d(flat, kernel.view(-1, 1, kernel_size, 1), groups=batch * channels)
    return torch.where(_per_image(sigma > 0), flat.view_as(x), x)


def solarize(x: Tensor, chosen: Tensor) -> Tensor:
    return torch.where(_per_image(chosen.bool()) & (x >= SOLARIZE_THRESHOLD), 1 - x, x)


def apply_params(
    images: Tensor, params: Tensor, kernel_size: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> Tensor:
    """uint8 crops (B, C, H, W) and their (B, NUM_PARAMS) parameters -> normalised float views."""
    x = images.float() / 255
    params = params.to(x.device, torch.float32)
    x = color_jitter(x, params)
    x = grayscale(x, params[:, P.GRAYSCALE])
    x = gaussian_blur(x, params[:, P.SIGMA], kernel_size)
    x = solarize(x, params[:, P.SOLARIZE])
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


def blur_kernel_size(max_sigma: float) -> int:
    """An odd kernel covering +-3 sigma, close to PIL's exact Gaussian blur used by DINO/BYOL."""
    return 2 * math.ceil(3 * max_sigma) + 1
