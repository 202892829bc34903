"""Multi-crop augmentation (DINO §3.1, SwAV) with per-crop probabilities.

One pipeline serves every method: two global views with their own blur and
solarize probabilities (BYOL Table 6's asymmetric views; DINO's global 1/2)
and optional local views. Works on one-channel images (Fashion-MNIST), where
saturation, hue and grayscale have no meaning and are left out.

It runs in one of two places (``augment.photometric``):

- ``per_image``: the whole pipeline in the loader workers, torchvision image by image (:class:`MultiCrop`);
- ``batched``: the workers crop and flip and draw the other parameters (:class:`CropsAndParams`); the
  training step applies them to the batch on its device (:class:`DeviceViews`, :mod:`sslzoo.photometric`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from sslzoo.config import AugmentConfig
from sslzoo.photometric import apply_params, blur_kernel_size, draw_params

CROP_RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's aspect-ratio range (torchvision's default, as every paper's code)


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


def geometric_steps(spec: CropSpec, aug: AugmentConfig) -> list:
    return [
        v2.RandomResizedCrop(spec.size, scale=spec.scale, interpolation=InterpolationMode.BICUBIC, antialias=True),
        v2.RandomHorizontalFlip(aug.flip_p),
    ]


def colour_jitter(aug: AugmentConfig, channels: int) -> tuple[float, float, float, float]:
    """Brightness, contrast, saturation, hue; the last two only for colour images."""
    brightness, contrast, saturation, hue = aug.jitter
    colour = channels == 3
    return brightness, contrast, saturation if colour else 0.0, hue if colour else 0.0


def view_transform(
    spec: CropSpec, aug: AugmentConfig, channels: int, mean: list[float], std: list[float]
) -> v2.Compose:
    """The random pipeline of one view (of a ``tv_tensors.Image``): crop, flip, colour, blur, solarize, normalise."""
    steps = [
        *geometric_steps(spec, aug),
        v2.RandomApply(
            [v2.ColorJitter(*colour_jitter(aug, channels))],
            p=aug.jitter_p,
        ),
    ]
    if channels == 3:
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

    def seeded(self, image: Tensor, seed: int) -> list[Tensor]:
        """The views under the global RNG seeded by ``seed`` (torchvision's transforms draw from it),
        leaving the caller's RNG state as it was."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self(image)


class CroppedViews(NamedTuple):
    """uint8 crops and each crop's photometric parameters (one entry per view; batched by the loader)."""

    images: list[Tensor]
    params: list[Tensor]


CROP_TRIES = 10  # RandomResizedCrop's tries before its centred fallback


def draw_crop(
    height: int, width: int, scale: tuple[float, float], generator: torch.Generator
) -> tuple[int, int, int, int]:
    """A RandomResizedCrop box (top, left, height, width), drawn as torchvision draws it (Szegedy et al.
    2015): up to ten tries at a uniform share of the area and a log-uniform aspect ratio in [3/4, 4/3],
    else the whole image clipped to that ratio, centred. The uniforms of every try and of the position
    come from one call (one-number draws cost a loader worker more than the crop itself)."""
    u = torch.rand(2 * CROP_TRIES + 2, generator=generator).tolist()
    area = height * width
    log_low, log_high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for i in range(CROP_TRIES):
        target = area * (scale[0] + (scale[1] - scale[0]) * u[2 * i])
        ratio = math.exp(log_low + (log_high - log_low) * u[2 * i + 1])
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            return int(u[-2] * (height - h + 1)), int(u[-1] * (width - w + 1)), h, w
    ratio = width / height
    w, h = width, height
    if ratio < CROP_RATIO[0]:
        h = round(w / CROP_RATIO[0])
    elif ratio > CROP_RATIO[1]:
        w = round(h * CROP_RATIO[1])
    return (height - h) // 2, (width - w) // 2, h, w


class CropsAndParams:
    """Image -> :class:`CroppedViews`: crop and flip on uint8, and the draw of every other parameter,
    all from one generator (no global RNG state to save and restore per image)."""

    def __init__(self, aug: AugmentConfig, channels: int) -> None:
        self.specs = crop_specs(aug)
        self.jitter = colour_jitter(aug, channels)
        self.aug, self.grayscale_p = aug, aug.grayscale_p if channels == 3 else 0.0
        self.to_image = v2.ToImage()

    def __call__(self, image: Tensor, generator: torch.Generator | None = None) -> CroppedViews:
        if generator is None:  # one draw from the global RNG seeds this image's generator
            generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))
        image = self.to_image(image).as_subclass(Tensor)
        height, width = image.shape[-2:]
        crops, params = [], []
        for spec in self.specs:
            top, left, h, w = draw_crop(height, width, spec.scale, generator)
            crop = TF.resized_crop(
                image, top, left, h, w, [spec.size, spec.size], InterpolationMode.BICUBIC, antialias=True
            )
            if torch.rand(1, generator=generator) < self.aug.flip_p:
                crop = TF.horizontal_flip(crop)
            crops.append(crop)
            params.append(
                draw_params(
                    self.jitter,
                    self.aug.jitter_p,
                    self.grayscale_p,
                    tuple(self.aug.blur_sigma),
                    spec.blur_p,
                    spec.solarize_p,
                    generator,
                )
            )
        return CroppedViews(crops, params)

    def seeded(self, image: Tensor, seed: int) -> CroppedViews:
        return self(image, torch.Generator().manual_seed(seed))


class DeviceViews:
    """The training step's view of a loader batch: the views on ``device``, with the photometric
    stage applied there to each batch of crops when the workers left it out."""

    def __init__(self, aug: AugmentConfig, mean: list[float], std: list[float]) -> None:
        self.kernel_size = blur_kernel_size(aug.blur_sigma[1])
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, views: list[Tensor] | CroppedViews, device: torch.device, **to_kwargs) -> list[Tensor]:
        if not isinstance(views, CroppedViews):
            return [v.to(device, non_blocking=True, **to_kwargs) for v in views]
        return [
            apply_params(
                images.to(device, non_blocking=True), params, self.kernel_size, self.mean, self.std
            ).contiguous(**to_kwargs)
            for images, params in zip(views.images, views.params)
        ]


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
