"""Multi-crop augmentation (DINO §3.1, SwAV) with per-crop probabilities.

One pipeline serves every method: two global views with their own blur and
solarize probabilities (BYOL Table 6's asymmetric views; DINO's global 1/2)
and optional local views. Works on one-channel images (Fashion-MNIST), where
saturation, hue and grayscale have no meaning and are left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.transforms import InterpolationMode, v2

from sslzoo.config import AugmentConfig


@dataclass(frozen=True)
class CropSpec:
    """One view: its size, crop scale range and per-view probabilities."""

    size: int
    scale: tuple[float, float]
    blur_p: float
    solarize_p: float


def crop_specs(aug: AugmentConfig) -> list[CropSpec]:
    """Global crops first, then local crops, in the order the views are returned."""
    specs = [
        CropSpec(aug.global_size, tuple(aug.global_scale), aug.blur_p[i], aug.solarize_p[i])
        for i in range(aug.global_crops)
    ]
    specs += [
        CropSpec(aug.local_size, tuple(aug.local_scale), aug.local_blur_p, aug.local_solarize_p)
    ] * aug.local_crops
    return specs


def blur_kernel_size(max_sigma: float) -> int:
    """An odd kernel covering +-3 sigma, close to PIL's exact Gaussian blur used by DINO/BYOL."""
    return 2 * math.ceil(3 * max_sigma) + 1


def view_transform(
    spec: CropSpec, aug: AugmentConfig, channels: int, mean: list[float], std: list[float]
) -> v2.Compose:
    """The random pipeline of one view (of a ``tv_tensors.Image``): crop, flip, colour, blur, solarize, normalise."""
    brightness, contrast, saturation, hue = aug.jitter
    colour = channels == 3
    steps = [
        v2.RandomResizedCrop(spec.size, scale=spec.scale, interpolation=InterpolationMode.BICUBIC, antialias=True),
        v2.RandomHorizontalFlip(aug.flip_p),
        v2.RandomApply(
            [v2.ColorJitter(brightness, contrast, saturation if colour else 0.0, hue if colour else 0.0)],
            p=aug.jitter_p,
        ),
    ]
    if colour:
        steps.append(v2.RandomGrayscale(aug.grayscale_p))
    steps += [
        v2.RandomApply(
            [v2.GaussianBlur(blur_kernel_size(aug.blur_sigma[1]), sigma=tuple(aug.blur_sigma))], p=spec.blur_p
        ),
        v2.RandomSolarize(threshold=128, p=spec.solarize_p),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
    ]
    return v2.Compose(steps)


class MultiCrop:
    """Image -> list of augmented views (globals first, then locals)."""

    def __init__(self, aug: AugmentConfig, channels: int, mean: list[float], std: list[float]) -> None:
        self.specs = crop_specs(aug)
        self.transforms = [view_transform(s, aug, channels, mean, std) for s in self.specs]
        self.to_image = v2.ToImage()

    def __call__(self, image: Tensor) -> list[Tensor]:
        image = self.to_image(image)  # once per image, not per view
        return [transform(image) for transform in self.transforms]


def eval_transform(size: int, resize: int, mean: list[float], std: list[float]) -> v2.Compose:
    """Deterministic evaluation view: resize, centre crop, normalise."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(resize, interpolation=InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )
