"""End-to-end fine-tuning: the whole backbone and a linear classifier, trained with the labels.

MAE's protocol (facebookresearch/mae main_finetune.py; iBOT's is BEiT's run_class_finetuning.py, the
same recipe): AdamW, a linear warm-up then a half cosine to ``min_lr``, layer-wise lr decay for ViTs
(BEiT; timm's ``param_groups_layer_decay``), no weight decay on biases, norms and the ViT's position
embedding and [CLS] token, drop path, timm's Mixup/CutMix with label smoothing, random-resized crops
and flips. The classifier reads the pooled output ([CLS] after the final norm for ViTs, the global
average pool for ResNets). Settings: ``finetune`` in ``sslzoo/eval/protocol.yaml``.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.layers import trunc_normal_
from timm.models.vision_transformer import VisionTransformer
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from torch import nn
from torch.utils.data import DataLoader, Dataset

from sslzoo.backbones import build_model, feature_dim
from sslzoo.data import data_info
from sslzoo.errors import require as need
from sslzoo.eval.evaluate import UNITS, Evaluator, Subject
from sslzoo.eval.features import eval_split, extract, train_transform
from sslzoo.eval.protocol import FinetuneProtocol, FinetuneRule
from sslzoo.schedules import Clock, warmup_cosine

LOG_POINTS = 10  # training-loss records per run


def with_classifier(model: nn.Module, num_classes: int, init_std: float) -> nn.Linear:
    """Put a linear classifier on a plain timm ViT (``head``) or torchvision ResNet (``fc``), in place:
    weight ~ truncated N(0, init_std), bias 0 (MAE). Returns the classifier."""
    head = nn.Linear(feature_dim(model), num_classes)
    trunc_normal_(head.weight, std=init_std)
    nn.init.zeros_(head.bias)
    if isinstance(model, VisionTransformer):
        model.head, model.num_classes = head, num_classes
    else:
        model.fc = head
    return head


def finetune_model(subject: Subject, rule: FinetuneRule, init_std: float) -> nn.Module:
    """A copy of the subject's backbone rebuilt with the rule's drop path, with a fresh classifier."""
    info = data_info(subject.data)
    model = build_model(subject.backbone, in_chans=info.channels, drop_path=rule.drop_path)
    model.load_state_dict(subject.model.state_dict(), strict=True)
    with_classifier(model, info.num_classes, init_std)
    return model


def parameter_groups(model: nn.Module, layer_decay: float | None, weight_decay: float) -> list[dict]:
    """timm's groups: biases, norms and ``no_weight_decay()`` names undecayed; with ``layer_decay`` (ViTs)
    each group carries ``lr_scale`` = layer_decay^(depth + 1 - i) for block i (stem 0, classifier 1; timm puts
    the final norm in the last block's group, MAE's param_groups_lrd in the classifier's)."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    if layer_decay is None:
        return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)
    return param_groups_layer_decay(model, weight_decay, no_weight_decay_list=skip, layer_decay=layer_decay)


def mixing(rule: FinetuneRule, ft: FinetuneProtocol, num_classes: int) -> Mixup | None:
    """timm's Mixup/CutMix (soft targets with label smoothing folded in), or None when both alphas are 0."""
    if not rule.mixes:
        return None
    return Mixup(
        mixup_alpha=rule.mixup, cutmix_alpha=rule.cutmix, prob=ft.mixup_prob, switch_prob=ft.switch_prob,
        mode="batch", label_smoothing=ft.label_smoothing, num_classes=num_classes,
    )  # fmt: skip


@dataclasses.dataclass
class Schedule:
    total: int  # optimizer steps
    warmup: int
    batch_size: int
    peak_lr: float
    min_lr: float

    def lr(self, step: int) -> float:
        return warmup_cosine(step, self.total, self.warmup, self.peak_lr, self.min_lr)


def schedule(rule: FinetuneRule, ft: FinetuneProtocol, train_images: int) -> Schedule:
    """The run's length (the budget, else the rule's epochs) and lr (blr * batch / 256, MAE);
    the batch is capped at the split's size (and kept even for mixup)."""
    batch = min(rule.batch_size, train_images)
    batch -= batch % 2 if rule.mixes else 0
    need(batch > 0, f"the training split has {train_images} image(s): too few for a batch")
    steps_per_epoch = train_images // batch  # drop_last, as MAE's loader
    total = rule.budget if rule.budget is not None else rule.epochs * steps_per_epoch
    warmup = Clock(0, total, steps_per_epoch, rule.epochs).steps(rule.warmup_epochs)
    return Schedule(total, warmup, batch, rule.blr * batch / 256, ft.min_lr)


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train: Dataset,
    plan: Schedule,
    rule: FinetuneRule,
    ft: FinetuneProtocol,
    num_classes: int,
    device: torch.device,
    num_workers: int = 0,
) -> list[dict]:
    """Train ``model`` for ``plan.total`` steps; returns the mean training loss at ``LOG_POINTS`` points."""
    torch.manual_seed(ft.seed)  # augmentation and drop path draw from the global generators (MAE seeds both)
    np.random.seed(ft.seed)  # timm's Mixup draws its lambda and its choice from numpy
    mix = mixing(rule, ft, num_classes)
    order = torch.Generator().manual_seed(ft.seed)
    loader = DataLoader(train, plan.batch_size, shuffle=True, drop_last=True, num_workers=num_workers, generator=order)
    every = max(1, plan.total // LOG_POINTS)
    step, running, seen, log = 0, 0.0, 0, []
    model.train()
    while step < plan.total:
        for images, labels in loader:
            if step == plan.total:
                break
            for group in optimizer.param_groups:
                group["lr"] = plan.lr(step) * group.get("lr_scale", 1.0)
            images, targets = images.to(device), labels.to(device)
            smoothing = ft.label_smoothing
            if mix is not None:
                images, targets = mix(images, targets)  # soft targets, smoothing included
                smoothing = 0.0
            loss = F.cross_entropy(model(images), targets, label_smoothing=smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step, running, seen = step + 1, running + loss.item(), seen + 1
            if step % every == 0 or step == plan.total:
                log.append({"step": step, "loss": running / seen, "lr": plan.lr(step - 1)})
                print(f"  step {step:6d}/{plan.total}  loss {running / seen:.4f}  lr {plan.lr(step - 1):.2e}")
                running, seen = 0.0, 0
    model.eval()
    return log


def top1(model: nn.Module, test: Dataset, evaluator: Evaluator) -> float:
    """Top-1 accuracy in [0, 1] on ``test`` (the deterministic evaluation view), in eval mode."""
    p = evaluator.protocol
    (logits,), labels = extract(model, test, p.feature_batch_size, p.num_workers, evaluator.device)
    return (logits.argmax(dim=1) == labels).float().mean().item()


def finetune(evaluator: Evaluator, subject: Subject) -> dict:
    """Fine-tune a copy of the subject's backbone under ``protocol.finetune``; the record of the run."""
    p, device = evaluator.protocol, evaluator.device
    ft, info = p.finetune, data_info(subject.data)
    rule = ft.rule(subject.backbone)
    crops = dataclasses.replace(p.linear, crop_scale=rule.crop_scale, flip_p=ft.flip_p)
    train = eval_split(subject.data, "train", p.train_limit, train_transform(subject.data, crops))
    test = evaluator.split(subject.data, "test")
    plan = schedule(rule, ft, len(train))
    torch.manual_seed(ft.seed)
    model = finetune_model(subject, rule, ft.head_init_std).to(device)
    layer_decay = rule.layer_decay if isinstance(model, VisionTransformer) else None
    groups = parameter_groups(model, layer_decay, ft.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=plan.peak_lr, betas=tuple(ft.betas))
    print(
        f"fine-tuning {subject.backbone}: {plan.total} steps of {plan.batch_size}, lr {plan.peak_lr:.2e}, "
        f"layer decay {layer_decay}, drop path {rule.drop_path}, mixup {rule.mixup} / cutmix {rule.cutmix}, "
        f"crop scale {rule.crop_scale}"
    )
    start = time.perf_counter()
    log = fit(model, optimizer, train, plan, rule, ft, info.num_classes, device, p.num_workers)
    train_s = time.perf_counter() - start
    accuracy = top1(model, test, evaluator)
    return {
        "evaluation": "offline",
        "protocol": "fine-tuning",
        "description": (
            "end-to-end fine-tuning of the whole backbone with a linear classifier (MAE main_finetune.py: "
            "AdamW, warm-up + cosine, layer-wise lr decay for ViTs, drop path, mixup/cutmix, label "
            "smoothing), top-1 on the test split's evaluation view"
        ),
        "finetune_top1": accuracy,
        "units": UNITS,
        "classifier_input": "pooled output ([CLS] after the final norm for ViTs, global average pool for ResNets)",
        "steps": plan.total,
        "warmup_steps": plan.warmup,
        "batch_size": plan.batch_size,
        "epochs_seen": plan.total * plan.batch_size / len(train),
        "peak_lr": plan.peak_lr,
        "layer_decay": layer_decay,
        "drop_path": rule.drop_path,
        "rule": dataclasses.asdict(rule),
        "train_loss": log,
        "train_images": len(train),
        "test_images": len(test),
        "subject": subject.describe(),
        "train_s": train_s,
        "eval_s": time.perf_counter() - start - train_s,
    }


def print_finetune(record: dict) -> None:
    print(
        f"offline fine-tuning top-1: {100 * record['finetune_top1']:.2f}% ({record['steps']} steps of "
        f"{record['batch_size']}, {record['epochs_seen']:.2f} epochs, {record['train_s'] / 60:.1f} min)"
    )
