"""The linear probe on frozen features (DINO eval_linear.py).

A linear classifier (optionally behind a BatchNorm without affine parameters, as
MAE's probe, He et al. 2022 §A.2) trained with SGD, momentum, no weight decay
and a cosine learning rate. Without augmentation the features are computed once
and the probe trains on the cached tensors; with augmentation they are
recomputed from random crops every epoch, as eval_linear.py does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from sslzoo.eval.protocol import LinearProtocol
from sslzoo.schedules import cosine

Batches = Callable[[int], Iterable[tuple[Tensor, Tensor]]]  # epoch -> (features, labels) batches


def linear_classifier(dim: int, num_classes: int, standardize: bool, init_std: float) -> nn.Sequential:
    """[BatchNorm1d(affine=False)] -> Linear, the weight ~ N(0, init_std), bias 0 (eval_linear.py)."""
    linear = nn.Linear(dim, num_classes)
    nn.init.normal_(linear.weight, std=init_std)
    nn.init.zeros_(linear.bias)
    layers = [nn.BatchNorm1d(dim, affine=False)] if standardize else []
    return nn.Sequential(*layers, linear)


def fit(
    classifier: nn.Module, batches: Batches, steps_per_epoch: int, p: LinearProtocol, device: torch.device
) -> list[float]:
    """Train ``classifier`` for ``p.epochs``; returns the mean training loss of each epoch."""
    peak_lr = p.scaled_lr()
    optimizer = torch.optim.SGD(classifier.parameters(), lr=peak_lr, momentum=p.momentum, weight_decay=p.weight_decay)
    total = p.epochs * steps_per_epoch
    step, losses = 0, []
    classifier.train()
    for epoch in range(p.epochs):
        epoch_loss, seen = 0.0, 0
        for x, y in batches(epoch):
            for group in optimizer.param_groups:
                group["lr"] = cosine(step, total, peak_lr, 0.0)
            loss = F.cross_entropy(classifier(x.to(device)), y.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            epoch_loss += loss.item() * len(y)
            seen += len(y)
            step += 1
        losses.append(epoch_loss / seen)
    classifier.eval()
    return losses


@torch.no_grad()
def top1(classifier: nn.Module, features: Tensor, labels: Tensor, device: torch.device, chunk: int = 4096) -> float:
    """Top-1 accuracy in [0, 1] of ``classifier`` (in eval mode) on ``features``."""
    classifier.eval()
    correct = 0
    for start in range(0, len(features), chunk):
        logits = classifier(features[start : start + chunk].to(device))
        correct += (logits.argmax(dim=1).cpu() == labels[start : start + chunk]).sum().item()
    return correct / len(features)


def shuffled_batches(features: Tensor, labels: Tensor, batch_size: int, seed: int) -> Batches:
    """Cached features in a new order every epoch, the order fixed by (seed, epoch)."""

    def batches(epoch: int) -> Iterable[tuple[Tensor, Tensor]]:
        order = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed + epoch))
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            yield features[index], labels[index]

    return batches


def augmented_batches(
    encoder: nn.Module, dataset: Dataset, p: LinearProtocol, seed: int, num_workers: int, device: torch.device
) -> Batches:
    """Probe features of freshly augmented training images every epoch (the encoder frozen)."""

    def batches(epoch: int) -> Iterable[tuple[Tensor, Tensor]]:
        torch.manual_seed(seed + epoch)  # the crops of this epoch
        loader = DataLoader(
            dataset,
            batch_size=p.batch_size,
            shuffle=True,
            num_workers=num_workers,
            generator=torch.Generator().manual_seed(seed + epoch),
        )
        encoder.eval()
        for images, labels in loader:
            with torch.no_grad():
                _, features = encoder(images.to(device))
            yield features.float(), labels

    return batches


def result(classifier: nn.Module, losses: list[float], test: tuple[Tensor, Tensor], p: LinearProtocol, device) -> dict:
    return {
        "linear_top1": top1(classifier, *test, device),
        "train_loss_per_epoch": losses,
        "epochs": p.epochs,
        "batch_size": p.batch_size,
        "peak_lr": p.scaled_lr(),
    }


def linear_probe(
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    num_classes: int,
    p: LinearProtocol,
    seed: int,
    device: torch.device | str = "cpu",
) -> dict:
    """Train on cached (features, labels) and report the offline ``linear_top1`` on ``test``, in [0, 1]."""
    device = torch.device(device)
    torch.manual_seed(seed)
    classifier = linear_classifier(train[0].shape[1], num_classes, p.standardize, p.init_std).to(device)
    steps_per_epoch = -(-len(train[0]) // p.batch_size)
    losses = fit(classifier, shuffled_batches(*train, p.batch_size, seed), steps_per_epoch, p, device)
    return {**result(classifier, losses, test, p, device), "train_top1": top1(classifier, *train, device)}


def linear_probe_augmented(
    encoder: nn.Module,
    train_dataset: Dataset,
    test: tuple[Tensor, Tensor],
    dim: int,
    num_classes: int,
    p: LinearProtocol,
    seed: int,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
) -> dict:
    """Train on features of augmented images recomputed every epoch; report ``linear_top1`` on ``test``."""
    device = torch.device(device)
    torch.manual_seed(seed)
    classifier = linear_classifier(dim, num_classes, p.standardize, p.init_std).to(device)
    steps_per_epoch = -(-len(train_dataset) // p.batch_size)
    batches = augmented_batches(encoder, train_dataset, p, seed, num_workers, device)
    losses = fit(classifier, batches, steps_per_epoch, p, device)
    return result(classifier, losses, test, p, device)
