"""Encoders over lists of views, batching crops of equal size into one forward."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sslzoo.backbones import Backbone


def backbone_features(backbone: nn.Module, views: list[Tensor]) -> Tensor:
    """Pooled features of all ``views`` concatenated along the batch.

    Consecutive views of the same resolution go through the backbone in one
    forward (DINO's MultiCropWrapper): 2 globals, then all locals.
    """
    features, start = [], 0
    while start < len(views):
        end = start + 1
        while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
            end += 1
        features.append(backbone(torch.cat(views[start:end])))
        start = end
    return torch.cat(features)


class Encoder(nn.Module):
    """Backbone followed by a head, applied to a list of views at once."""

    def __init__(self, backbone: Backbone, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, views: list[Tensor]) -> tuple[Tensor, Tensor]:
        """(head outputs, backbone features), each concatenated over ``views``."""
        features = backbone_features(self.backbone, views)
        return self.head(features), features
