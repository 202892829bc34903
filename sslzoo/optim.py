"""Optimizers (AdamW, SGD, LARS), parameter groups, lr/wd schedules, clipping."""

from __future__ import annotations

import math
from collections.abc import Collection

import torch
from torch import nn

from sslzoo.config import OptimConfig
from sslzoo.schedules import Clock, cosine, warmup_cosine, warmup_hold_cooldown


class LARS(torch.optim.Optimizer):
    """LARS as moco-v3 moco/optimizer.py and dino utils.LARS compute it (BYOL's optax LARS is the same rule).

    For each tensor p with gradient g, and its group's lr, weight decay wd and trust coefficient eta:

        u = g + wd * p;  u = eta * ||p|| / ||u|| * u    tensors with ndim > 1 (factor 1 if a norm is 0)
        u = g                                          biases and norms (ndim <= 1): no decay, no adaptation
        mu = momentum * mu + u;  p = p - lr * mu

    lightly's LARS divides by ||g|| + wd * ||p|| instead and adapts by the group's weight decay.
    """

    def __init__(self, params: list[dict], lr: float, momentum: float, trust_coefficient: float) -> None:
        super().__init__(params, dict(lr=lr, weight_decay=0.0, momentum=momentum, trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self) -> None:  # type: ignore[override]  # no closure, as the official optimizers
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                update = param.grad
                if param.ndim > 1:
                    update = update.add(param, alpha=group["weight_decay"])
                    param_norm, update_norm = torch.linalg.vector_norm(param), torch.linalg.vector_norm(update)
                    trust = group["trust_coefficient"] * param_norm / update_norm
                    update = update * torch.where((param_norm > 0) & (update_norm > 0), trust, 1.0)
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param)
                buffer = state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                param.add_(buffer, alpha=-group["lr"])


def parameter_groups(
    module: nn.Module,
    exclude_bias_norm: bool,
    lr_scales: dict[str, float] | None = None,
    fixed_lr: Collection[str] = (),
) -> list[dict]:
    """Trainable parameters grouped by weight decay (biases/norms without), lr multiplier and lr schedule.

    MoCo v3's AdamW decays every parameter (``exclude_bias_norm: false``); :class:`LARS`
    never decays or adapts 1-D tensors, whatever the group says.
    ``lr_scales`` maps a submodule's or a parameter's name to a multiplier of the scheduled lr;
    the submodules in ``fixed_lr`` keep the peak lr throughout, neither warmed up nor decayed.
    """
    lr_scales = lr_scales or {}
    groups: dict[tuple[bool, float, bool], list[nn.Parameter]] = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        decay = not (exclude_bias_norm and param.ndim <= 1)
        scale = next((s for prefix, s in lr_scales.items() if name == prefix or name.startswith(prefix + ".")), 1.0)
        fixed = any(name.startswith(prefix + ".") for prefix in fixed_lr)
        groups.setdefault((decay, scale, fixed), []).append(param)
    return [
        {"params": params, "apply_weight_decay": decay, "lr_scale": scale, "lr_fixed": fixed}
        for (decay, scale, fixed), params in sorted(groups.items(), key=lambda item: (not item[0][0], *item[0][1:]))
    ]


def scaled_lr(cfg: OptimConfig, global_batch: int) -> float:
    """The peak learning rate for this global batch (the papers' scaling rules)."""
    if cfg.lr_scaling == "linear":
        return cfg.lr * global_batch / 256
    if cfg.lr_scaling == "sqrt":
        return cfg.lr * math.sqrt(global_batch)
    return cfg.lr


def build_optimizer(groups: list[dict], cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    if cfg.name == "adamw":
        fused = device.type == "cuda"
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=0.0, fused=fused)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=0.0)
    return LARS(groups, lr=cfg.lr, momentum=cfg.momentum, trust_coefficient=cfg.lars_trust_coefficient)


def apply_schedules(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, clock: Clock, peak_lr: float
) -> tuple[float, float]:
    """Set this step's lr (warm-up, then by ``lr_decay`` a cosine to ``min_lr``, held at the peak, or held
    and cooled down to ``min_lr`` over the last ``cooldown_fraction`` of the run; the peak lr on
    ``lr_fixed`` groups) and weight decay (cosine) on every group; returns the scheduled lr and weight decay."""
    warmup = clock.steps(cfg.warmup_epochs)
    if cfg.lr_decay == "cooldown":
        cooldown = round(cfg.cooldown_fraction * clock.total_steps)
        lr = warmup_hold_cooldown(clock.step, clock.total_steps, warmup, cooldown, peak_lr, cfg.min_lr)
    else:
        end_lr = peak_lr if cfg.lr_decay == "none" else cfg.min_lr
        lr = warmup_cosine(clock.step, clock.total_steps, warmup, peak_lr, end_lr)
    wd = cosine(clock.step, clock.total_steps, cfg.weight_decay, cfg.weight_decay_end)
    for group in optimizer.param_groups:
        # .get: optimizer states saved before lr_scale and lr_fixed existed
        group["lr"] = (peak_lr if group.get("lr_fixed", False) else lr) * group.get("lr_scale", 1.0)
        group["weight_decay"] = wd if group["apply_weight_decay"] else 0.0
    return lr, wd


def clip_gradients(module: nn.Module, cfg: OptimConfig) -> None:
    """Clip by global norm, or each parameter's own norm as DINO's utils.clip_gradients does."""
    if cfg.clip_grad <= 0:
        return
    params = [p for p in module.parameters() if p.grad is not None]
    if cfg.clip_mode == "global":
        torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
        return
    for param in params:
        torch.nn.utils.clip_grad_norm_(param, cfg.clip_grad)
