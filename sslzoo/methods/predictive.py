"""The skeleton BYOL and MoCo v3 share: an online network predicts a momentum target.

f, g, q = encoder, projector, predictor   # online network theta (q: online side only)
f', g'  = EMA copies of f, g               # target / momentum network xi, no gradient
for x in loader:
    v1, v2 = augment(x)                    # two asymmetric views
    p1, p2 = q(g(f(v1))), q(g(f(v2)))      # online predictions
    z1, z2 = g'(f'(v1)), g'(f'(v2))        # targets (keys), stop-gradient
    loss = loss(p1, z2) + loss(p2, z1)
    loss.backward(); update(theta)
    xi = m * xi + (1 - m) * theta          # once per optimizer step
    m  = 1 - (1 - m_base) (cos(pi k / K) + 1) / 2   # BYOL §3.2; MoCo v3 --moco-m-cos

Each view goes through the networks in its own forward, so every BatchNorm
normalises one view's batch, as both official codes do (byol_experiment.py
``apply_once_fn`` per view; moco-v3 builder.py ``base_encoder(x1)``, ``base_encoder(x2)``).
Subclasses hand in the pair loss module (and may adjust the backbone).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from sslzoo.backbones import Backbone
from sslzoo.errors import UserError
from sslzoo.heads import mlp_head
from sslzoo.methods.base import Method, MethodSetup, StepOutput
from sslzoo.multicrop import Encoder
from sslzoo.schedules import Clock, cosine
from sslzoo.target import EMATarget, check_momentum


class PredictiveSiamese(Method):
    """Online encoder + projector + predictor; EMA target of encoder + projector; symmetric two-view loss."""

    @dataclass
    class Config:
        name: str
        proj_layers: int  # linear layers of the projector g
        proj_hidden_dim: int  # width of g's hidden layers
        out_dim: int  # size of the projection z and the prediction p
        proj_last_bn: bool  # BN without scale and shift after g's last layer (MoCo v3, after SimCLR)
        pred_hidden_dim: int  # the predictor q is 2 layers: out_dim -> pred_hidden_dim -> out_dim
        pred_last_bn: bool  # the same BN after q's last layer
        pred_lr_scale: float  # q's lr / the scheduled lr (BYOL Appendix, Table 21: a faster predictor)
        use_predictor: bool  # false: no q, the projection itself is compared with the target
        momentum: float  # tau_base / m at step 0 (0 with momentum_cosine=false: target = online)
        momentum_cosine: bool  # cosine from momentum to 1 over the run; false: constant

    def __init__(self, setup: MethodSetup, loss: nn.Module) -> None:
        super().__init__(setup)
        self.loss = loss  # of one view's prediction against the other view's (stop-gradient) target
        backbone = self.make_backbone()
        self.online = Encoder(backbone, self.projector(backbone.embed_dim))
        self.predictor = self.make_predictor()
        # encoder + projector only (no predictor on the target side), without stochastic depth
        target = Encoder(self.make_backbone(drop_path=0.0), self.projector(backbone.embed_dim))
        self.target = EMATarget(self.online, target)

    @classmethod
    def check_setup(cls, setup: MethodSetup) -> None:
        super().check_setup(setup)
        hp = setup.hp
        check_momentum("momentum", hp.momentum)
        if hp.pred_lr_scale <= 0:
            raise UserError(f"method.pred_lr_scale={hp.pred_lr_scale} must be positive (1: the scheduled lr)")
        if hp.proj_layers < 1:
            raise UserError(f"method.proj_layers={hp.proj_layers} must be at least 1")

    def projector(self, in_dim: int) -> nn.Module:
        """g: Linear-BN-ReLU hidden layers, then Linear (and the optional affine-free BN)."""
        hp = self.hp
        dims = [in_dim, *[hp.proj_hidden_dim] * (hp.proj_layers - 1), hp.out_dim]
        return mlp_head(dims, last_bn=hp.proj_last_bn, last_bn_affine=False)

    def make_predictor(self) -> nn.Module:
        """q: same block shape as g with two layers, or the identity when ``use_predictor`` is off."""
        hp = self.hp
        if not hp.use_predictor:
            return nn.Identity()
        return mlp_head([hp.out_dim, hp.pred_hidden_dim, hp.out_dim], last_bn=hp.pred_last_bn, last_bn_affine=False)

    def lr_scales(self) -> dict[str, float]:
        return {"predictor": self.hp.pred_lr_scale} if self.hp.pred_lr_scale != 1 else {}

    def momentum(self, clock: Clock) -> float:
        if not self.hp.momentum_cosine:
            return self.hp.momentum
        return cosine(clock.step, clock.total_steps, self.hp.momentum, 1.0)

    def training_step(self, views: list[Tensor], clock: Clock) -> StepOutput:
        online = [self.online([view]) for view in views]  # per view: (projection z, features y)
        p1, p2 = (self.predictor(z) for z, _ in online)
        z1_target, z2_target = (self.target([view])[0] for view in views)
        loss_p1_z2 = self.loss(p1, z2_target)
        loss_p2_z1 = self.loss(p2, z1_target)
        z1, y1 = online[0]
        return StepOutput(
            loss_p1_z2 + loss_p2_z1,
            {"momentum": self.momentum(clock), "loss_p1_z2": loss_p1_z2.item(), "loss_p2_z1": loss_p2_z1.item()},
            embeddings=z1.detach(),
            features=y1.detach(),
        )

    def after_optimizer_step(self, clock: Clock) -> None:
        self.target.update(self.online, self.momentum(clock))

    def eval_backbone(self) -> Backbone:
        return self.online.backbone  # both papers evaluate the online encoder
