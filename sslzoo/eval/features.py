"""Frozen-backbone features of a labelled split, computed once."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from sslzoo.augment import eval_transform
from sslzoo.config import DataConfig
from sslzoo.data import data_info, load_dataset


class Transformed(Dataset):
    def __init__(self, base: Dataset, transform) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image, label = self.base[index]
        return self.transform(image), label


def eval_split(cfg: DataConfig, split: str, limit: int | None = None) -> Dataset:
    """A labelled split (``train`` or ``test``) with the deterministic evaluation view."""
    info = data_info(cfg)
    base = load_dataset(cfg, split)
    if limit is not None and limit < len(base):
        base = torch.utils.data.Subset(base, range(limit))
    return Transformed(base, eval_transform(info.image_size, info.resize, list(info.mean), list(info.std)))


@torch.no_grad()
def extract_features(
    encode: nn.Module, dataset: Dataset, batch_size: int = 256, num_workers: int = 0, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """(features, labels) of ``dataset`` under ``encode`` in eval mode."""
    was_training = encode.training
    encode.eval()
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    features, labels = [], []
    for images, targets in loader:
        features.append(encode(images.to(device)).float().cpu())
        labels.append(targets)
    encode.train(was_training)
    return torch.cat(features), torch.cat(labels)
