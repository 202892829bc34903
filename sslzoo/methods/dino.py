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

from torch import Tensor

from sslzoo.backbones import Backbone
from sslzoo.heads import dino_head
from sslzoo.losses.dino import DINOLoss, distillation_terms
from sslzoo.methods.base import METHODS, Method, MethodCard, MethodSetup, StepOutput
from sslzoo.methods.distillation import DistillationConfig, SelfDistillation
from sslzoo.multicrop import Encoder
from sslzoo.schedules import Clock
from sslzoo.target import EMATarget


@METHODS.register("dino")
class DINO(Method):
    Config = DistillationConfig

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

    def __init__(self, setup: MethodSetup) -> None:
        super().__init__(setup)
        self.student = self.encoder()
        self.teacher = EMATarget(self.student, self.encoder(drop_path=0.0))  # no stochastic depth in the teacher
        self.loss = DINOLoss(self.hp.out_dim, self.hp.student_temp, self.hp.center_momentum)  # with the centre C
        self.distillation = SelfDistillation(self.hp, self.student, self.teacher, [self.loss])

    def encoder(self, drop_path: float | None = None) -> Encoder:
        hp = self.hp
        backbone = self.make_backbone(drop_path)
        return Encoder(
            backbone,
            dino_head(
                backbone.embed_dim,
                hp.out_dim,
                hp.proj_hidden_dim,
                hp.bottleneck_dim,
                hp.norm_last_layer,
                hp.use_bn_in_head,
            ),
        )

    def training_step(self, views: list[Tensor], clock: Clock) -> StepOutput:
        tau_s, tau_t = self.hp.student_temp, self.distillation.teacher_temp(clock)
        t, _ = self.teacher(views[: self.num_global])  # the teacher sees the global views only
        s, features = self.student(views)
        loss = self.loss(s.chunk(len(views)), t.chunk(self.num_global), tau_t)
        self.loss.observe(t)  # C is updated after the optimizer step
        batch = len(views[0])
        terms = distillation_terms(s[:batch], self.loss.teacher_probs(t[:batch], tau_t), tau_s)
        return StepOutput(
            loss,
            {"teacher_temp": tau_t, "momentum": self.distillation.momentum(clock), **terms},
            embeddings=s[:batch].detach(),
            features=features[:batch].detach(),
        )

    def before_optimizer_step(self, clock: Clock) -> None:
        self.distillation.freeze_prototypes(self.prototypes(), clock)

    def prototypes(self) -> list[Tensor]:
        """Parameters of the head's prototype (last) layer(s), frozen during the first epoch(s)."""
        return list(self.student.head.last_layer.parameters())

    def after_optimizer_step(self, clock: Clock) -> None:
        self.distillation.after_optimizer_step(clock)  # gt = m * gt + (1 - m) * gs; C = c * C + (1 - c) * mean(t)

    def eval_backbone(self) -> Backbone:
        return self.teacher.net.backbone  # DINO evaluates the teacher
