"""SimCLR: a simple framework for contrastive learning (Chen et al. 2020, Algorithm 1).

f, g = encoder, projection head        # one network for both views, no target
for x in loader:                       # N images
    x_a, x_b = augment(x), augment(x)  # two symmetric views
    z = g(f(x_a, x_b))                 # 2N projections, BN over both views
    loss = NT-Xent(z_a, z_b, tau)      # 1 positive, 2N-2 negatives per view
    loss.backward(); update(f, g)      # LARS for ResNets
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from sslzoo.backbones import Backbone
from sslzoo.errors import UserError
from sslzoo.heads import mlp_head
from sslzoo.losses.ntxent import NTXentLoss
from sslzoo.methods.base import METHODS, Method, MethodCard, MethodSetup, StepOutput
from sslzoo.multicrop import Encoder
from sslzoo.schedules import Clock


@METHODS.register("simclr")
class SimCLR(Method):
    @dataclass
    class Config:
        name: str
        temperature: float  # tau of NT-Xent
        proj_layers: int  # linear layers of the projection head g
        proj_hidden_dim: int  # width of g's hidden layers
        out_dim: int  # dimension of z

    card = MethodCard(
        family="contrastive",
        target="none (both views through the same network)",
        predictor="none",
        negatives="in-batch: the 2N-2 other views of the global batch, gathered with gradient",
        loss="NT-Xent: cross-entropy of the positive among all other views, cosine / temperature",
        anti_collapse="negatives repel every other view (uniformity); large batches",
        crops="2 symmetric views",
    )

    def __init__(self, setup: MethodSetup) -> None:
        super().__init__(setup)
        backbone = self.make_backbone()
        self.encoder = Encoder(backbone, self.projection_head(backbone.embed_dim))
        self.loss = NTXentLoss(self.hp.temperature)

    @classmethod
    def check_setup(cls, setup: MethodSetup) -> None:
        super().check_setup(setup)
        if setup.hp.temperature <= 0:
            raise UserError(f"method.temperature={setup.hp.temperature} must be positive (SimCLR uses 0.1)")
        if setup.hp.proj_layers < 1:
            raise UserError(f"method.proj_layers={setup.hp.proj_layers} must be at least 1")

    def projection_head(self, in_dim: int) -> nn.Module:
        """g: Linear-BN-ReLU hidden layers, then Linear and a BN that scales but does not shift, no ReLU.

        google-research/simclr model.py ProjectionHead: the last LinearLayer has
        ``use_bias=False``, which also drops its BN's centre (shift).
        """
        hp = self.hp
        dims = [in_dim, *[hp.proj_hidden_dim] * (hp.proj_layers - 1), hp.out_dim]
        return mlp_head(dims, last_bn=True, last_bn_shift=False)

    def training_step(self, views: list[Tensor], clock: Clock) -> StepOutput:
        z, features = self.encoder(views)  # both views in one batch: the BNs see 2N samples, as in model.py
        z_a, z_b = z.chunk(2)
        batch = len(views[0])
        loss = self.loss(z_a, z_b)
        return StepOutput(
            loss,
            {"positive_accuracy": self.loss.positive_accuracy.item()},
            embeddings=z_a.detach(),
            features=features[:batch].detach(),
        )

    def eval_backbone(self) -> Backbone:
        return self.encoder.backbone
