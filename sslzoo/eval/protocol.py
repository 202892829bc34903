"""The evaluation protocols (``sslzoo/eval/protocol.yaml``), typed and overridable."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sslzoo.config import build, dotted_keys, read_yaml, set_dotted
from sslzoo.errors import UserError
from sslzoo.errors import require as need

PROTOCOL_FILE = Path(__file__).resolve().parent / "protocol.yaml"


@dataclass
class KNNProtocol:
    ks: list[int]
    headline_k: int
    temperature: float


@dataclass
class ViTFeatures:
    backbone: str  # a backbone name, or "*" for any
    n_last_blocks: int
    avgpool_patchtokens: bool


@dataclass
class LinearProtocol:
    epochs: int
    batch_size: int
    lr: float
    lr_scaling: Literal["linear", "none"]
    momentum: float
    weight_decay: float
    init_std: float
    standardize: bool
    augment: bool
    crop_scale: list[float]
    flip_p: float
    vit_features: list[ViTFeatures]

    def scaled_lr(self) -> float:
        return self.lr * self.batch_size / 256 if self.lr_scaling == "linear" else self.lr

    def vit_rule(self, backbone: str) -> ViTFeatures:
        for rule in self.vit_features:
            if rule.backbone in (backbone, "*"):
                return rule
        raise UserError(f"linear.vit_features has no entry for {backbone}; add one or a '*' entry")


@dataclass
class LowShotLinear:
    steps: int  # SGD steps of each probe, whatever the subset's size
    batch_size: int  # at most this many images per step (the whole subset if smaller)
    lr: float  # not scaled by the batch
    weight_decay: float


@dataclass
class LowShotProtocol:
    fractions: list[float]
    shots: list[int]
    draws: int
    seed: int
    linear: LowShotLinear


@dataclass
class FinetuneRule:
    """The fine-tuning values that depend on the model (MAE FINETUNE.md, iBOT evaluation/README.md)."""

    backbone: str  # a backbone name, or "*" for any
    epochs: int  # the schedule's length in passes over the training split
    warmup_epochs: float
    batch_size: int
    blr: float  # base lr: lr = blr * batch / 256
    layer_decay: float  # block i's lr is scaled by layer_decay^(depth + 1 - i); ViTs only
    drop_path: float  # stochastic depth rate of the last block (timm: linear in depth)
    budget: int | None  # optimizer steps in all; None: epochs of the training split
    mixup: float  # timm Mixup alpha, 0: off
    cutmix: float  # timm CutMix alpha, 0: off
    crop_scale: list[float]  # RandomResizedCrop scale of the training images

    @property
    def mixes(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0


RULE_OVERRIDES = ("budget", "mixup", "cutmix", "crop_scale")  # finetune.KEY, when set, replaces every rule's KEY


@dataclass
class FinetuneProtocol:
    budget: int | None  # each of these four, when set, overrides the matching rule's value
    mixup: float | None
    cutmix: float | None
    crop_scale: list[float] | None
    betas: list[float]
    weight_decay: float
    min_lr: float
    label_smoothing: float
    mixup_prob: float
    switch_prob: float
    flip_p: float
    head_init_std: float
    seed: int
    backbones: list[FinetuneRule]

    def resolved(self, rule: FinetuneRule) -> FinetuneRule:
        """``rule`` with the command line's overrides (``finetune.budget=``, ``finetune.mixup=``, ...)."""
        given = {key: getattr(self, key) for key in RULE_OVERRIDES if getattr(self, key) is not None}
        return dataclasses.replace(rule, **given)

    def rule(self, backbone: str) -> FinetuneRule:
        """The first rule for ``backbone``, with the command line's overrides."""
        for rule in self.backbones:
            if rule.backbone in (backbone, "*"):
                return self.resolved(rule)
        raise UserError(f"finetune.backbones has no entry for {backbone}; add one or a '*' entry")


@dataclass
class OnlineProbeProtocol:
    lr: float
    momentum: float
    init_std: float
    seed: int


@dataclass
class Protocol:
    device: Literal["auto", "cpu", "cuda"]
    feature_batch_size: int
    num_workers: int
    train_limit: int | None
    test_limit: int | None
    seed: int
    knn: KNNProtocol
    linear: LinearProtocol
    lowshot: LowShotProtocol
    finetune: FinetuneProtocol
    online_probe: OnlineProbeProtocol


def protocol_keys() -> list[str]:
    return dotted_keys(read_yaml(PROTOCOL_FILE))


def load_protocol(overrides: dict[str, Any] | None = None) -> Protocol:
    """The protocol file with dotted ``overrides`` (``{"knn.ks": [20]}``) applied and checked."""
    tree = read_yaml(PROTOCOL_FILE)
    valid = dotted_keys(tree)
    for key, value in (overrides or {}).items():
        set_dotted(tree, key, value, valid)
    protocol = build(Protocol, tree, "")
    check(protocol)
    return protocol


def check(p: Protocol) -> None:
    need(p.feature_batch_size > 0 and p.linear.batch_size > 0, "batch sizes must be positive integers")
    need(p.num_workers >= 0, "num_workers must be 0 or more")
    for name in ("train_limit", "test_limit"):
        limit = getattr(p, name)
        need(limit is None or limit > 0, f"{name} must be a positive integer or null")
    need(len(p.knn.ks) > 0 and all(k > 0 for k in p.knn.ks), "knn.ks must be a non-empty list of positive integers")
    need(p.knn.headline_k in p.knn.ks, f"knn.headline_k={p.knn.headline_k} must be one of knn.ks={p.knn.ks}")
    need(p.knn.temperature > 0, "knn.temperature must be positive")
    need(p.linear.epochs > 0, "linear.epochs must be a positive integer")
    need(p.linear.lr > 0 and p.online_probe.lr > 0, "learning rates must be positive")
    lo, hi = (p.linear.crop_scale + [0.0, 0.0])[:2]
    need(len(p.linear.crop_scale) == 2 and 0 < lo <= hi <= 1, "linear.crop_scale must be [min, max] in (0, 1]")
    need(all(r.n_last_blocks > 0 for r in p.linear.vit_features), "linear.vit_features n_last_blocks must be > 0")
    low = p.lowshot
    bad = [f for f in low.fractions if not 0 < f <= 1]
    need(not bad, f"fractions: {bad[0] if bad else 0:g} is outside (0, 1]; give label fractions such as 0.01,0.1")
    bad_shots = [s for s in low.shots if s <= 0]
    need(not bad_shots, f"shots: {bad_shots[0] if bad_shots else ''} is not positive; give images per class: 1,2,5")
    need(bool(low.fractions or low.shots), "lowshot needs at least one of fractions= and shots=")
    need(low.draws > 0, f"draws={low.draws} must be a positive integer")
    need(low.linear.steps > 0 and low.linear.batch_size > 0, "lowshot.linear steps and batch_size must be positive")
    need(low.linear.lr > 0 and low.linear.weight_decay >= 0, "lowshot.linear.lr must be positive, weight_decay >= 0")
    check_finetune(p.finetune)


def check_finetune(ft: FinetuneProtocol) -> None:
    steps = "must be a positive number of optimizer steps (or null)"
    need(ft.budget is None or ft.budget > 0, f"finetune budget={ft.budget} {steps}")
    check_regularisation("finetune", ft.mixup, ft.cutmix, ft.crop_scale)
    for r in map(ft.resolved, ft.backbones):
        at = f"finetune.backbones ({r.backbone})"
        need(r.budget is None or r.budget > 0, f"{at}: budget={r.budget} {steps}")
        need(r.epochs > 0 and r.batch_size > 0, f"{at}: epochs and batch_size must be positive integers")
        need(0 <= r.warmup_epochs <= r.epochs, f"{at}: warmup_epochs must be in [0, epochs]")
        need(r.blr > 0 and 0 < r.layer_decay <= 1, f"{at}: blr must be positive, layer_decay in (0, 1]")
        need(0 <= r.drop_path < 1, f"{at}: drop_path must be in [0, 1)")
        check_regularisation(at, r.mixup, r.cutmix, r.crop_scale)
        need(r.batch_size % 2 == 0 or not r.mixes, f"{at}: mixup and cutmix need an even batch_size")
    need(len(ft.betas) == 2 and all(0 <= b < 1 for b in ft.betas), "finetune.betas must be [beta1, beta2] in [0, 1)")
    need(ft.weight_decay >= 0 and ft.min_lr >= 0, "finetune.weight_decay and finetune.min_lr must be 0 or more")
    need(0 <= ft.label_smoothing < 1, "finetune.label_smoothing must be in [0, 1)")
    need(0 <= ft.mixup_prob <= 1 and 0 <= ft.switch_prob <= 1, "finetune.mixup_prob and switch_prob must be in [0, 1]")
    need(0 <= ft.flip_p <= 1 and ft.head_init_std > 0, "finetune.flip_p must be in [0, 1], head_init_std > 0")


def check_regularisation(at: str, mixup: float | None, cutmix: float | None, crop_scale: list[float] | None) -> None:
    """Mixup/CutMix alphas and a crop scale, each where given (None: not set)."""
    alphas = [a for a in (mixup, cutmix) if a is not None]
    need(all(a >= 0 for a in alphas), f"{at}: mixup and cutmix are alphas: 0 (off) or more")
    if crop_scale is not None:
        lo, hi = (crop_scale + [0.0, 0.0])[:2]
        need(len(crop_scale) == 2 and 0 < lo <= hi <= 1, f"{at}: crop_scale must be [min, max] in (0, 1]")


def to_dict(protocol: Protocol) -> dict:
    return dataclasses.asdict(protocol)
