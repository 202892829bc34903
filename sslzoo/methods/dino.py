"""DINO: self-distillation with no labels (Caron et al. 2021, Algorithm 1).

gs, gt = student, teacher            # same architecture; gt = EMA of gs
C = 0                                # centre
for x in loader:
    views = augment(x)               # 2 global + M local crops
    s = gs(all views); t = gt(global views)
    loss = H(t, s) over pairs of different views  (centring + sharpening in H)
    loss.backward(); update(gs)
    gt = m * gt + (1 - m) * gs       # m: cosine 0.996 -> 1
    C  = c * C + (1 - c) * mean(t)
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from sslzoo.backbones import Backbone
from sslzoo.config import Config as RunConfig
from sslzoo.heads import dino_head
from sslzoo.losses.dino import DINOLoss, distillation_terms
from sslzoo.methods.base import METHODS, Method, MethodCard, StepOutput
from sslzoo.multicrop import Encoder
from sslzoo.schedules import Clock, cosine, linear_warmup
from sslzoo.target import EMATarget


@METHODS.register("dino")
class DINO(Method):
    @dataclass
    class Config:
        name: str
        out_dim: int  # K, prototypes of the head's last layer
        hidden_dim: int
        bottleneck_dim: int
        norm_last_layer: bool
        use_bn_in_head: bool
        student_temp: float  # tau_s
        teacher_temp: float  # tau_t after warm-up
        warmup_teacher_temp: float  # tau_t at step 0
        warmup_teacher_temp_epochs: float
        center_momentum: float  # c
        momentum_teacher: float  # m at step 0, cosine to 1
        freeze_last_layer_epochs: float

    card = MethodCard(
        family="self-distillation",
        target="EMA teacher (momentum cosine to 1; 0.996 in the paper)",
        predictor="none",
        negatives="none",
        loss="cross-entropy between teacher and student softmax outputs",
        anti_collapse="centring (against one dominant dimension) + sharpening (against uniform)",
        crops="2 global + M local; teacher sees globals only",
    )
    supports_local_crops = True

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self.student = self.encoder()
        self.teacher = EMATarget(self.student, self.encoder(drop_path=0.0))  # no stochastic depth in the teacher
        self.loss = DINOLoss(self.hp.out_dim, self.hp.center_momentum)
        self.pending_center: Tensor | None = None

    def encoder(self, drop_path: float | None = None) -> Encoder:
        hp = self.hp
        backbone = self.make_backbone(drop_path)
        return Encoder(
            backbone,
            dino_head(
                backbone.embed_dim, hp.out_dim, hp.hidden_dim, hp.bottleneck_dim, hp.norm_last_layer, hp.use_bn_in_head
            ),
        )

    def teacher_temp(self, clock: Clock) -> float:
        hp = self.hp
        return linear_warmup(
            clock.step, clock.steps(hp.warmup_teacher_temp_epochs), hp.warmup_teacher_temp, hp.teacher_temp
        )

    def momentum(self, clock: Clock) -> float:
        return cosine(clock.step, clock.total_steps, self.hp.momentum_teacher, 1.0)

    def training_step(self, views: list[Tensor], clock: Clock) -> StepOutput:
        tau_s, tau_t = self.hp.student_temp, self.teacher_temp(clock)
        t, _ = self.teacher(views[: self.num_global])  # the teacher sees the global views only
        s, features = self.student(views)
        loss = self.loss(s.chunk(len(views)), t.chunk(self.num_global), tau_s, tau_t)
        self.pending_center = self.loss.batch_center(t)  # applied after the optimizer step
        batch = len(views[0])
        terms = distillation_terms(s[:batch], self.loss.teacher_probs(t[:batch], tau_t), tau_s)
        return StepOutput(
            loss,
            {"teacher_temp": tau_t, "momentum": self.momentum(clock), **terms},
            embeddings=s[:batch].detach(),
            features=features[:batch].detach(),
        )

    def before_optimizer_step(self, clock: Clock) -> None:
        # Freeze the prototypes during the first epoch(s) by dropping their
        # gradients, so the optimizer skips them (main_dino.py cancel_gradients_last_layer).
        if clock.step < clock.steps(self.hp.freeze_last_layer_epochs):
            for param in self.prototypes():
                param.grad = None

    def prototypes(self) -> list[Tensor]:
        """Parameters of the head's prototype (last) layer(s), frozen during the first epoch(s)."""
        return list(self.student.head.last_layer.parameters())

    def after_optimizer_step(self, clock: Clock) -> None:
        self.teacher.update(self.student, self.momentum(clock))
        if self.pending_center is not None:
            self.loss.update_center(self.pending_center)
            self.pending_center = None

    def eval_backbone(self) -> Backbone:
        return self.teacher.net.backbone  # DINO evaluates the teacher
