"""Weighted k-nearest-neighbour classification (Wu et al. 2018; DINO eval_knn.py).

Features are L2-normalised; each of the k most similar training samples votes
for its class with weight exp(cosine similarity / T), T = 0.07.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def knn_predict_many(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    ks: list[int],
    temperature: float,
    num_classes: int,
    chunk: int = 1024,
) -> dict[int, Tensor]:
    """Predicted class of every test feature for each k, from one top-k search.

    The neighbours of the largest k are found once; ``topk`` sorts them, so the
    first k of them are the k nearest for every smaller k.
    """
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    labels = train_labels.to(train.device)
    k_max = min(max(ks), len(train))
    predictions: dict[int, list[Tensor]] = {k: [] for k in ks}
    for start in range(0, len(test), chunk):
        similarity = test[start : start + chunk] @ train.T
        top_sim, top_index = similarity.topk(k_max, dim=1)
        weights = (top_sim / temperature).exp()
        neighbour_labels = labels[top_index]
        for k in ks:
            k_used = min(k, k_max)
            votes = torch.zeros(len(top_sim), num_classes, device=train.device)
            votes.scatter_add_(1, neighbour_labels[:, :k_used], weights[:, :k_used])
            predictions[k].append(votes.argmax(dim=1).cpu())
    return {k: torch.cat(p) for k, p in predictions.items()}


def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    k: int,
    temperature: float,
    num_classes: int,
    chunk: int = 1024,
) -> Tensor:
    """Predicted class of every test feature."""
    return knn_predict_many(train_features, train_labels, test_features, [k], temperature, num_classes, chunk)[k]


def knn_top1(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    ks: list[int],
    temperature: float,
    num_classes: int,
) -> dict[int, float]:
    """Top-1 accuracy in [0, 1] of the weighted kNN classifier for each k."""
    predicted = knn_predict_many(train_features, train_labels, test_features, ks, temperature, num_classes)
    return {k: (p == test_labels.cpu()).float().mean().item() for k, p in predicted.items()}


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Top-1 accuracy in [0, 1] of the weighted kNN classifier."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    return knn_top1(train_features, train_labels, test_features, test_labels, [k], temperature, num_classes)[k]
