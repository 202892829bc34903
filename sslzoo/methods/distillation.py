"""The self-distillation part that DINO and iBOT compose (neither inherits from the other).

Both train a student against an EMA teacher whose outputs are centred and
sharpened: the part holds their shared hyperparameters, the teacher's schedules
(temperature tau_t: linear warm-up, then constant; momentum m: cosine to its end value),
the prototype freeze of the first epoch(s), and the update after each
optimizer step, ``gt = m * gt + (1 - m) * gs`` and every centre's commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from sslzoo.losses.dino import TeacherCentre
from sslzoo.schedules import Clock, cosine, linear_warmup
from sslzoo.target import EMATarget, check_momentum


@dataclass
class DistillationConfig:
    """The ``method`` section of DINO's recipes (iBOT's adds its masked-modelling keys)."""

    name: str
    out_dim: int  # K, prototypes of the head's last layer
    proj_hidden_dim: int  # width of the head's hidden layers
    bottleneck_dim: int
    norm_last_layer: bool
    use_bn_in_head: bool
    student_temp: float  # tau_s
    teacher_temp: float  # tau_t after warm-up
    warmup_teacher_temp: float  # tau_t at step 0
    warmup_teacher_temp_epochs: float
    center_momentum: float  # c
    momentum: float  # m at step 0, cosine to momentum_end
    momentum_end: float  # m at the last step (1 in DINO and iBOT; DINOv2's final_momentum_teacher)
    freeze_last_layer_epochs: float

    def __post_init__(self) -> None:
        check_momentum("momentum", self.momentum)
        check_momentum("momentum_end", self.momentum_end)


class SelfDistillation:
    """The EMA teacher's schedules and updates, over networks and centres that the method owns."""

    def __init__(
        self, hp: DistillationConfig, student: nn.Module, teacher: EMATarget, centres: Sequence[TeacherCentre]
    ) -> None:
        self.hp = hp
        self.student = student
        self.teacher = teacher
        self.centres = list(centres)

    def temperature(self, clock: Clock, start: float, end: float) -> float:
        """A teacher temperature warming up linearly from ``start`` to ``end`` over warmup_teacher_temp_epochs."""
        return linear_warmup(clock.step, clock.steps(self.hp.warmup_teacher_temp_epochs), start, end)

    def teacher_temp(self, clock: Clock) -> float:
        return self.temperature(clock, self.hp.warmup_teacher_temp, self.hp.teacher_temp)

    def momentum(self, clock: Clock) -> float:
        return cosine(clock.step, clock.total_steps, self.hp.momentum, self.hp.momentum_end)

    def freeze_prototypes(self, prototypes: list[Tensor], clock: Clock) -> None:
        """Freeze the prototypes during the first epoch(s) by dropping their gradients, so the optimizer
        skips them (main_dino.py cancel_gradients_last_layer)."""
        if clock.step < clock.steps(self.hp.freeze_last_layer_epochs):
            for param in prototypes:
                param.grad = None

    def after_optimizer_step(self, clock: Clock) -> None:
        """gt = m * gt + (1 - m) * gs, then each centre C <- c * C + (1 - c) * mean(t) of this step."""
        self.teacher.update(self.student, self.momentum(clock))
        for centre in self.centres:
            centre.commit()
