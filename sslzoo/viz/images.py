"""The teaching lab on any weights and any images: what the figures draw, and the photos they draw it on.

A :class:`Source` is a backbone with the statistics of the data it expects: a training run's
(``run=``), or released weights (``ckpt=``, read by ``sslzoo.weights``: ImageNet statistics and
3 channels unless the checkpoint is an sslzoo one). ``images=`` names a picture or a folder of
pictures (class subfolders, if any, colour the embedding maps).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode, v2

from sslzoo.config import DataConfig
from sslzoo.data import DataInfo, data_info
from sslzoo.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class Source:
    """A backbone to draw, and the data it was trained (or is evaluated) on."""

    name: str  # the run folder's or the weights file's name
    method: str  # the method, or the layout of released weights
    model: nn.Module  # in eval mode
    data: DataConfig
    out_dir: Path  # where figures go without out=
    has_dataset: bool  # whether ``data`` can be read (a run's), so that images=N can take its test images

    @property
    def info(self) -> DataInfo:
        return data_info(self.data)

    def unnormalise(self, images: Tensor) -> Tensor:
        mean = torch.tensor(self.info.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.info.std).view(1, -1, 1, 1)
        return (images * std + mean).clamp(0, 1)


def open_source(run: str | None, ckpt: str | None, backbone: str | None, part: str | None, command: str) -> Source:
    """``run=`` or ``ckpt=`` (with ``backbone=`` and ``part=`` for released weights) as a :class:`Source`."""
    from sslzoo.eval.evaluate import from_weights
    from sslzoo.viz.runs import Run

    if (run is None) == (ckpt is None):
        raise UserError(f"{command} needs run= (a run folder) or ckpt= (a checkpoint or released weights), not both")
    if run is not None:
        if backbone is not None or part is not None:
            raise UserError("backbone= and part= apply to ckpt= weights; a run names its own")
        opened = Run.open(run)
        return Source(opened.name, opened.method, opened.backbone(), opened.data, opened.path, True)
    subject = from_weights(ckpt, backbone, part)
    method = subject.config["method"]["name"] if subject.config else str(subject.weights.get("layout"))
    return Source(subject.name, method, subject.model.eval(), subject.data, subject.out_dir, subject.config is not None)


def image_files(path: Path) -> list[Path]:
    """The picture ``path``, or every picture under the folder ``path`` (sorted); one-line errors if none."""
    if not path.exists():
        raise UserError(f"images={path} does not exist: name a picture or a folder of pictures")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"images={path} holds no pictures ({', '.join(IMAGE_SUFFIXES)})")
    return files


def folder_classes(root: Path, files: list[Path]) -> tuple[list[int], list[str]]:
    """Each file's class: its first-level subfolder under ``root`` (ImageFolder layout), or one class for all."""
    names = [
        p.relative_to(root).parts[0] if root.is_dir() and len(p.relative_to(root).parts) > 1 else "" for p in files
    ]
    classes = sorted(set(names))
    shown = [name or root.name for name in classes]
    return [classes.index(name) for name in names], shown


def read_picture(path: Path, channels: int):
    """The picture as a PIL image with the backbone's channels (greyscale for 1)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("L" if channels == 1 else "RGB")
    except (OSError, SyntaxError, ValueError) as err:
        raise UserError(f"cannot read the picture {path} ({err})") from None


def normalise(image, info: DataInfo) -> Tensor:
    tensor = v2.functional.to_dtype(v2.functional.to_image(image), torch.float32, scale=True)
    return v2.functional.normalize(tensor, list(info.mean), list(info.std))


def attention_view(image, size: int, patch: tuple[int, int], info: DataInfo) -> Tensor:
    """The picture with its shorter side resized to ``size``, centre-cropped to whole patches and normalised
    (DINO visualize_attention.py resizes, then trims the image to a multiple of the patch size)."""
    tensor = normalise(image, info)
    tensor = v2.functional.resize(tensor, size, interpolation=InterpolationMode.BICUBIC, antialias=True)
    height, width = tensor.shape[-2] // patch[0] * patch[0], tensor.shape[-1] // patch[1] * patch[1]
    if height == 0 or width == 0:
        raise UserError(f"size={size} is smaller than one {patch[0]}x{patch[1]} patch; raise size=")
    return v2.functional.center_crop(tensor, [height, width])


def square_view(image, info: DataInfo) -> Tensor:
    """The evaluation view of the backbone's data: resize, centre crop to its native size, normalise."""
    tensor = normalise(image, info)
    tensor = v2.functional.resize(tensor, info.resize, interpolation=InterpolationMode.BICUBIC, antialias=True)
    return v2.functional.center_crop(tensor, [info.image_size, info.image_size])
