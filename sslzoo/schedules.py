"""Per-iteration schedules (the lr ramp and cosines of MoCo v3, BYOL and SimCLR; BYOL's tau schedule).

Lengths are in optimizer steps; :class:`Clock` turns the recipes' epochs into
steps so that a run shortened by ``trainer.max_steps`` keeps the same shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def cosine(step: int, total: int, start: float, end: float) -> float:
    """Half-cosine from ``start`` (step 0) to ``end`` (step ``total``)."""
    if total <= 0:
        return end
    progress = min(max(step / total, 0.0), 1.0)
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * progress))


def warmup_cosine(step: int, total: int, warmup: int, peak: float, end: float, warmup_start: float = 0.0) -> float:
    """Linear warm-up from ``warmup_start`` to ``peak`` over ``warmup`` steps, then cosine to ``end``.

    The peak comes at step ``warmup``, as in moco-v3's adjust_learning_rate (and BYOL's and SimCLR's
    schedules); dino's cosine_scheduler (np.linspace) reaches it at ``warmup - 1``.
    """
    if step < warmup:
        return warmup_start + (peak - warmup_start) * step / warmup
    return cosine(step - warmup, total - warmup, peak, end)


def warmup_hold_cooldown(step: int, total: int, warmup: int, cooldown: int, peak: float, end: float) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, held there, then over the last ``cooldown`` steps a
    (1 - sqrt) decay to ``end``: the warmup-stable-decay schedule of Hägele et al. 2024 ("Scaling Laws and
    Compute-Optimal Training Beyond Fixed Training Durations": a (1 - sqrt) cooldown over the last 20% of a
    language model's run matched its cosine), which keeps the held lr's progress and ends on settled weights."""
    if step < warmup:
        return peak * step / warmup
    start = total - cooldown
    if step < start or cooldown <= 0:
        return peak
    progress = min((step - start) / cooldown, 1.0)
    return end + (peak - end) * (1 - math.sqrt(progress))


def linear_warmup(step: int, warmup: int, start: float, end: float) -> float:
    """Linear from ``start`` to ``end`` over ``warmup`` steps, then constant (DINO's teacher temperature,
    which main_dino.py steps once per epoch and completes an epoch earlier)."""
    if step >= warmup:
        return end
    return start + (end - start) * step / warmup


@dataclass(frozen=True)
class Clock:
    """Where the run is: the step, and how epochs map onto steps."""

    step: int
    total_steps: int
    steps_per_epoch: int
    epochs: int  # the recipe's epochs: the length the schedules were written for

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    def steps(self, epochs: float) -> int:
        """A schedule length given in epochs, as steps of this (possibly shortened) run."""
        return round(epochs / self.epochs * self.total_steps)

    def at(self, step: int) -> Clock:
        return Clock(step, self.total_steps, self.steps_per_epoch, self.epochs)
