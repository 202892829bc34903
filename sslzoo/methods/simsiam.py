"""SimSiam: simple Siamese representation learning (Chen & He 2021, Algorithm 1).

f = backbone + projection MLP             # one network for both views: no target, no momentum
h = prediction MLP
for x in loader:
    x1, x2 = aug(x), aug(x)               # two random views (MoCo v2's augmentations)
    z1, z2 = f(x1), f(x2)                 # projections, n x d
    p1, p2 = h(z1), h(z2)                 # predictions, n x d
    L = D(p1, z2) / 2 + D(p2, z1) / 2     # D(p, z) = -cos(p, stopgrad(z))
    L.backward(); update(f, h)            # SGD; h at a fixed lr (--fix-pred-lr)

What prevents collapse is the stop-gradient (§4.1, Figure 2) together with the predictor
(§4.2, Table 1); there are no negatives and no momentum encoder. ``stop_gradient: false`` and
``use_predictor: false`` switch each off, for the ablations (benchmarks/ablations.py). Each view goes
through f in its own forward, so each BN sees one view's batch (builder.py ``self.encoder(x1)``,
``self.encoder(x2)``).
"""

from __future__ import annotations

from dataclasses import dataclass

from lightly.models.modules.heads import SimSiamPredictionHead, SimSiamProjectionHead
from torch import Tensor

from sslzoo.backbones import Backbone, check_zero_init_residual
from sslzoo.errors import UserError
from sslzoo.losses.simsiam import SymmetrisedNegativeCosine
from sslzoo.methods.base import METHODS, Method, MethodCard, MethodSetup, StepOutput
from sslzoo.multicrop import Encoder
from sslzoo.schedules import Clock


@METHODS.register("simsiam")
class SimSiam(Method):
    @dataclass
    class Config:
        name: str
        proj_hidden_dim: int  # width of the 3-layer projection MLP's hidden layers
        out_dim: int  # d, the size of z and p (--dim)
        pred_hidden_dim: int  # the predictor's bottleneck, d -> pred_hidden_dim -> d (--pred-dim)
        use_predictor: bool  # false: no h, p = z (§4.2, Table 1a: collapses)
        stop_gradient: bool  # false: gradients flow into z too (§4.1, Figure 2: collapses)
        fix_pred_lr: bool  # h keeps the peak lr, not decayed (§4.2, Table 1c; --fix-pred-lr)
        zero_init_residual: bool  # ResNets: each residual block starts as the identity

    card = MethodCard(
        family="self-distillation",
        target="none: the other view through the same network, stop-gradient (no momentum encoder)",
        predictor="2-layer bottleneck MLP (d -> d/4 -> d), at a fixed, undecayed lr",
        negatives="none",
        loss="negative cosine of each view's prediction and the other view's stop-gradient projection, halved",
        anti_collapse="stop-gradient + predictor (no negatives, no momentum, no centring)",
        crops="2 symmetric views (MoCo v2's augmentations)",
    )

    def __init__(self, setup: MethodSetup) -> None:
        super().__init__(setup)
        hp = self.hp
        backbone = self.make_backbone(zero_init=hp.zero_init_residual)
        # builder.py: Linear-BN-ReLU x 2, then Linear and a BN without affine parameters; its last
        # Linear's bias is frozen ("followed by BN"), which lightly's head leaves out (the BN cancels it)
        self.f = Encoder(backbone, SimSiamProjectionHead(backbone.embed_dim, hp.proj_hidden_dim, hp.out_dim))
        self.h = SimSiamPredictionHead(hp.out_dim, hp.pred_hidden_dim, hp.out_dim) if hp.use_predictor else None
        self.D = SymmetrisedNegativeCosine(hp.stop_gradient)

    @classmethod
    def check_setup(cls, setup: MethodSetup) -> None:
        super().check_setup(setup)
        hp = setup.hp
        check_zero_init_residual(hp.zero_init_residual, setup.backbone)
        if hp.fix_pred_lr and not hp.use_predictor:
            raise UserError("method.fix_pred_lr needs a predictor: set method.fix_pred_lr=false or use_predictor=true")

    def predict(self, z: Tensor) -> Tensor:
        return z if self.h is None else self.h(z)

    def training_step(self, views: list[Tensor], clock: Clock) -> StepOutput:
        (z1, y1), (z2, _) = (self.f([x]) for x in views)
        p1, p2 = self.predict(z1), self.predict(z2)
        return StepOutput(self.D(p1, p2, z1, z2), embeddings=z1.detach(), features=y1.detach())

    def fixed_lr(self) -> tuple[str, ...]:
        return ("h",) if self.hp.fix_pred_lr else ()

    def eval_backbone(self) -> Backbone:
        return self.f.backbone
