"""VICReg: variance-invariance-covariance regularisation (Bardes, Ponce, LeCun 2022, Algorithm 1).

f = backbone; h = expander                   # one network for both views, no target, no predictor
for x in loader:
    x_a, x_b = aug(x), aug(x)                # two views (BYOL's augmentations)
    z_a, z_b = h(f(x_a)), h(f(x_b))          # embeddings, N x D
    sim_loss = mse(z_a, z_b)                 # invariance s
    std_loss = hinge(1, std(z_a)) + hinge(1, std(z_b))       # variance v, over the (global) batch
    cov_loss = off_diagonal(cov(z_a))^2.sum() / D + ...      # covariance c
    loss = lambda * sim_loss + mu * std_loss + nu * cov_loss
    loss.backward(); update(f, h)            # LARS

Collapse is prevented by the variance term alone, which keeps every embedding dimension's std above
gamma = 1; the covariance term decorrelates the dimensions (against dimensional collapse). No
negatives, stop-gradient, predictor, momentum encoder or normalisation of the embeddings.
Each view goes through the network in its own forward (main_vicreg.py ``VICReg.forward``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from sslzoo.backbones import Backbone, check_zero_init_residual
from sslzoo.errors import UserError
from sslzoo.heads import mlp_head
from sslzoo.losses.vicreg import VICRegLoss
from sslzoo.methods.base import METHODS, Method, MethodCard, MethodSetup, StepOutput
from sslzoo.multicrop import Encoder
from sslzoo.schedules import Clock


@METHODS.register("vicreg")
class VICReg(Method):
    @dataclass
    class Config:
        name: str
        proj_layers: int  # linear layers of the expander h (--mlp 8192-8192-8192: 3)
        proj_hidden_dim: int  # width of h's hidden layers
        out_dim: int  # D, the embedding size
        lambda_invariance: float  # lambda (--sim-coeff)
        mu_variance: float  # mu (--std-coeff)
        nu_covariance: float  # nu (--cov-coeff)
        zero_init_residual: bool  # ResNets: each residual block starts as the identity

    card = MethodCard(
        family="redundancy reduction",
        target="none (both views through the same network, gradients through both)",
        predictor="none",
        negatives="none",
        loss="lambda MSE(z_a, z_b) + mu hinge on each dimension's std + nu off-diagonal covariance^2 / D",
        anti_collapse="variance hinge keeps every dimension's std >= 1; covariance decorrelates dimensions",
        crops="2 asymmetric views (BYOL's augmentations)",
    )

    def __init__(self, setup: MethodSetup) -> None:
        super().__init__(setup)
        hp = self.hp
        backbone = self.make_backbone(zero_init=hp.zero_init_residual)
        # main_vicreg.py Projector: Linear-BN-ReLU blocks, then a Linear without bias. Its hidden Linear
        # layers have a bias, which the BN after each cancels; mlp_head leaves it out.
        dims = [backbone.embed_dim, *[hp.proj_hidden_dim] * (hp.proj_layers - 1), hp.out_dim]
        self.encoder = Encoder(backbone, mlp_head(dims))
        self.loss = VICRegLoss(hp.lambda_invariance, hp.mu_variance, hp.nu_covariance)

    @classmethod
    def check_setup(cls, setup: MethodSetup) -> None:
        super().check_setup(setup)
        hp = setup.hp
        if hp.proj_layers < 1:
            raise UserError(f"method.proj_layers={hp.proj_layers} must be at least 1")
        for key in ("lambda_invariance", "mu_variance", "nu_covariance"):
            if getattr(hp, key) < 0:
                raise UserError(f"method.{key}={getattr(hp, key)} must be >= 0 (0 removes the term)")
        check_zero_init_residual(hp.zero_init_residual, setup.backbone)

    def training_step(self, views: list[Tensor], clock: Clock) -> StepOutput:
        (z_a, y_a), (z_b, _) = (self.encoder([x]) for x in views)
        terms = self.loss.terms(z_a, z_b)
        return StepOutput(
            self.loss.combine(terms),
            {name: value.item() for name, value in terms.items()},
            embeddings=z_a.detach(),
            features=y_a.detach(),
        )

    def eval_backbone(self) -> Backbone:
        return self.encoder.backbone
