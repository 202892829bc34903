"""Frozen-backbone features of a labelled split, computed once.

Every feature encoder here returns two tensors per image: the pooled output
that kNN uses (DINO eval_knn.py) and the features the linear probe uses
(DINO eval_linear.py), so one forward pass serves both protocols.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode, v2

from sslzoo.augment import eval_transform
from sslzoo.config import DataConfig
from sslzoo.data import data_info, load_dataset
from sslzoo.eval.protocol import LinearProtocol


class Transformed(Dataset):
    def __init__(self, base: Dataset, transform) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image, label = self.base[index]
        return self.transform(image), label


def train_transform(cfg: DataConfig, linear: LinearProtocol) -> v2.Compose:
    """The linear probe's training augmentation (eval_linear.py): random-resized crop and flip."""
    info = data_info(cfg)
    return v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(
                info.image_size, scale=tuple(linear.crop_scale), interpolation=InterpolationMode.BICUBIC, antialias=True
            ),
            v2.RandomHorizontalFlip(linear.flip_p),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(info.mean), list(info.std)),
        ]
    )


def eval_split(cfg: DataConfig, split: str, limit: int | None = None, transform=None) -> Dataset:
    """A labelled split (``train`` or ``test``) with the deterministic evaluation view
    (or ``transform``), optionally only its first ``limit`` images."""
    info = data_info(cfg)
    base = load_dataset(cfg, split)
    if limit is not None and limit < len(base):
        base = torch.utils.data.Subset(base, range(limit))
    if transform is None:
        transform = eval_transform(info.image_size, info.resize, list(info.mean), list(info.std))
    return Transformed(base, transform)


# --------------------------------------------------------------------------- encoders


class ViTProbeFeatures(nn.Module):
    """(pooled output, linear-probe features) of a timm ViT.

    The probe features are the [CLS] tokens of the last ``n_last_blocks`` blocks (all of them
    in a shallower ViT), each after the final norm, concatenated; with ``avgpool_patchtokens``
    the average of the last block's patch tokens is appended (DINO eval_linear.py).
    """

    def __init__(self, vit: VisionTransformer, n_last_blocks: int, avgpool_patchtokens: bool) -> None:
        super().__init__()
        self.vit, self.avgpool = vit, avgpool_patchtokens
        self.n_last_blocks = min(n_last_blocks, len(vit.blocks))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        final, blocks = self.vit.forward_intermediates(
            x, self.n_last_blocks, return_prefix_tokens=True, norm=True, output_fmt="NLC"
        )
        parts = [prefix[:, 0] for _, prefix in blocks]
        if self.avgpool:
            parts.append(blocks[-1][0].mean(dim=1))
        return self.vit.forward_head(final), torch.cat(parts, dim=-1)


class PooledFeatures(nn.Module):
    """(pooled output, pooled output): ResNets and any other backbone."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pooled = self.model(x)
        return pooled, pooled


class RawPixels(nn.Module):
    """The normalised image itself, flattened: the raw-pixel baseline."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        flat = x.flatten(1)
        return flat, flat


def feature_encoder(model: nn.Module, backbone: str, linear: LinearProtocol) -> nn.Module:
    """Wrap a plain timm/torchvision model as a (kNN features, probe features) encoder."""
    if isinstance(model, VisionTransformer):
        rule = linear.vit_rule(backbone)
        return ViTProbeFeatures(model, rule.n_last_blocks, rule.avgpool_patchtokens)
    return PooledFeatures(model)


def describe(encoder: nn.Module) -> dict[str, str]:
    """What each feature is, for the result files."""
    if isinstance(encoder, ViTProbeFeatures):
        probe = f"[CLS] of the last {encoder.n_last_blocks} block(s) after the final norm, concatenated"
        if encoder.avgpool:
            probe += ", plus the average-pooled patch tokens of the last block"
        return {"knn": "pooled output ([CLS] after the final norm)", "linear": probe}
    if isinstance(encoder, RawPixels):
        return {"knn": "normalised pixels", "linear": "normalised pixels"}
    return {"knn": "pooled output (global average pool)", "linear": "pooled output (global average pool)"}


# --------------------------------------------------------------------------- extraction


@torch.no_grad()
def extract(
    encode: nn.Module, dataset: Dataset, batch_size: int = 256, num_workers: int = 0, device: torch.device | str = "cpu"
) -> tuple[list[Tensor], Tensor]:
    """Each output of ``encode`` (one tensor or a tuple) over ``dataset`` in eval mode, and the labels."""
    was_training = encode.training
    encode.eval()
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    outputs: list[list[Tensor]] = []
    labels = []
    for images, targets in loader:
        out = encode(images.to(device))
        out = out if isinstance(out, tuple) else (out,)
        if not outputs:
            outputs = [[] for _ in out]
        for store, tensor in zip(outputs, out):
            store.append(tensor.float().cpu())
        labels.append(targets)
    encode.train(was_training)
    return [torch.cat(store) for store in outputs], torch.cat(labels)


def extract_features(
    encode: nn.Module, dataset: Dataset, batch_size: int = 256, num_workers: int = 0, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """(features, labels) of ``dataset`` under ``encode`` (one output) in eval mode."""
    (features, *_), labels = extract(encode, dataset, batch_size, num_workers, device)
    return features, labels
