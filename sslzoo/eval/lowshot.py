"""Low-shot evaluation: kNN and the linear probe on a few labels (DINO Table 11, iBOT, MSN Table 1).

For each setting (a fraction of the training labels, or a number of images per class) a
class-balanced subset of the training split is drawn ``draws`` times, each draw with its own
fixed seed; the weighted kNN (DINO eval_knn.py) and the linear probe (``sslzoo.eval.linear``)
use only that subset's labels and are tested on the whole test split. The features of both
splits are computed once and shared by every draw. Each setting reports mean and std over
its draws (sample std; 0 for a single draw).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time

import torch
from torch import Tensor

from sslzoo.data import data_info
from sslzoo.errors import UserError
from sslzoo.eval.evaluate import UNITS, Evaluator, Features, Subject, shared_fields
from sslzoo.eval.knn import knn_top1
from sslzoo.eval.linear import linear_probe
from sslzoo.eval.protocol import LinearProtocol, LowShotLinear


def per_class_counts(labels: Tensor, kind: str, value: float) -> dict[int, int]:
    """Images to draw from each class: ``round(fraction x class size)`` (at least 1), or ``value`` shots."""
    classes, sizes = labels.unique(return_counts=True)
    if kind == "fraction":
        return {int(c): max(1, round(value * int(n))) for c, n in zip(classes, sizes)}
    smallest = int(sizes.min())
    if value > smallest:
        raise UserError(f"shots={int(value)} exceeds the {smallest} training images of the smallest class")
    return {int(c): int(value) for c in classes}


def balanced_draw(labels: Tensor, counts: dict[int, int], seed: int) -> Tensor:
    """Sorted indices of a class-balanced subset: ``counts[c]`` images of each class ``c``, drawn by ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    picks = []
    for cls, count in counts.items():
        members = (labels == cls).nonzero().flatten()
        picks.append(members[torch.randperm(len(members), generator=generator)[:count]])
    return torch.cat(picks).sort().values


def subset_protocol(linear: LinearProtocol, low: LowShotLinear, size: int) -> LinearProtocol:
    """The linear probe's protocol for a subset of ``size`` images: ``low.steps`` steps in all."""
    batch = min(low.batch_size, size)
    epochs = math.ceil(low.steps / math.ceil(size / batch))
    return dataclasses.replace(
        linear, epochs=epochs, batch_size=batch, lr=low.lr, lr_scaling="none", weight_decay=low.weight_decay
    )


def summary(values: list[float]) -> dict:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "draws": values}


def settings(fractions: list[float], shots: list[int]) -> list[tuple[str, float, str]]:
    """(kind, value, label) of each low-shot setting, fractions first."""
    return [("fraction", f, f"{100 * f:g}%") for f in fractions] + [("shots", s, f"{s}-shot") for s in shots]


def lowshot(evaluator: Evaluator, subject: Subject, f: Features) -> dict:
    """The low-shot record: kNN@headline k and linear top-1, mean +- std over the draws of each setting."""
    protocol, start = evaluator.protocol, time.perf_counter()
    low, device = protocol.lowshot, evaluator.device
    num_classes = data_info(subject.data).num_classes
    k = protocol.knn.headline_k
    results = []
    for kind, value, label in settings(low.fractions, low.shots):
        counts = per_class_counts(f.train_labels, kind, value)
        knn, linear, sizes = [], [], []
        for draw in range(low.draws):
            index = balanced_draw(f.train_labels, counts, low.seed + draw)
            labels = f.train_labels[index]
            top1 = knn_top1(
                f.knn_train[index].to(device), labels.to(device), f.knn_test.to(device), f.test_labels,
                [k], protocol.knn.temperature, num_classes,
            )  # fmt: skip
            knn.append(top1[k])
            p = subset_protocol(protocol.linear, low.linear, len(index))
            probe = linear_probe(
                (f.probe_train[index], labels), (f.probe_test, f.test_labels), num_classes, p, low.seed + draw, device
            )
            linear.append(probe["linear_top1"])
            sizes.append(len(index))
        results.append(
            {
                "setting": label,
                "kind": kind,
                "value": value,
                "train_images": sizes[0],
                "knn_k": min(k, sizes[0]),
                "knn_top1": summary(knn),
                "linear_top1": summary(linear),
                "linear_epochs": subset_protocol(protocol.linear, low.linear, sizes[0]).epochs,
            }
        )
    shared = shared_fields(subject, f, "linear", f.probe_train, start)
    return {
        "evaluation": "offline",
        "protocol": "low-shot",
        "description": (
            "offline kNN and linear probe trained on class-balanced subsets of the training labels "
            "(DINO/iBOT 1% and 10%, MSN 1/2/5 images per class), tested on the full test split; "
            "mean and sample std over draws"
        ),
        "units": UNITS,
        "draws": low.draws,
        "seeds": [low.seed + d for d in range(low.draws)],
        "knn_features": f.description["knn"],
        "results": results,
        **{key: value for key, value in shared.items() if key != "units"},
    }


def print_lowshot(record: dict) -> None:
    print(f"offline low-shot top-1 (%), mean +- std over {record['draws']} draw(s), features: {record['features']}")
    print(f"{'setting':>10} {'images':>7} {'kNN':>15} {'linear':>15}")
    for r in record["results"]:
        knn, linear = r["knn_top1"], r["linear_top1"]
        cells = [f"{100 * s['mean']:7.2f} +- {100 * s['std']:4.2f}" for s in (knn, linear)]
        print(f"{r['setting']:>10} {r['train_images']:7d} {cells[0]} {cells[1]}")
