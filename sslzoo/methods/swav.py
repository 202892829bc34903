"""SwAV: swapping assignments between views (Caron et al. 2020, Algorithm 1 with multi-crop, §3.2).

# f: convnet + projection head g; C: K prototypes (D x K); tau: temperature
for x in loader:                                   # B images
    x_1 .. x_V = multi-crop(x)                     # 2 global crops (t in T) + V - 2 local crops
    z = normalize(g(f(x_1 .. x_V)), dim=1)         # projections, V x (B x D)
    scores = z @ C                                 # prototype scores, V x (B x K)
    with no_grad:                                  # codes of the global crops only, over the global batch
        q_t = sinkhorn(scores_t [, queue scores])  # eps 0.05, 3 iterations; from epoch 15 (batch 256) the
                                                   # last 3840 z_t also take part
    p_s = softmax(scores_s / tau)
    loss = mean_t mean_{s != t} -sum(q_t * log p_s)   # swapped prediction
    loss.backward(); update(f, g, C)               # C: no update in the first epoch (freeze_prototypes_niters)
    C = normalize(C, dim=0)                        # prototypes back onto the unit sphere

Equipartition (Q's rows sum to 1/K) keeps the codes from collapsing onto one prototype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from lightly.models.modules.heads import SwaVProjectionHead
from torch import Tensor, nn

from sslzoo.backbones import Backbone
from sslzoo.errors import UserError
from sslzoo.losses.swav import SwAVLoss
from sslzoo.methods.base import METHODS, Method, MethodCard, MethodSetup, StepOutput
from sslzoo.multicrop import Encoder
from sslzoo.schedules import Clock


@METHODS.register("swav")
class SwAV(Method):
    @dataclass
    class Config:
        name: str
        proj_hidden_dim: int  # width of g's hidden layer (main_swav.py --hidden_mlp)
        out_dim: int  # D, the projection z (--feat_dim)
        num_prototypes: int  # K (--nmb_prototypes)
        temperature: float  # tau
        epsilon: float  # eps of Sinkhorn-Knopp
        sinkhorn_iterations: int
        freeze_prototypes_niters: int  # optimizer steps without prototype updates
        queue_length: int  # projections kept from earlier batches, over all processes; 0: no queue
        epoch_queue_starts: float  # the epoch from which the queue fills and, once full, is used

    card = MethodCard(
        family="clustering",
        target="none: codes from the same network's scores, without gradient",
        predictor="none (the prototypes C are shared by every view)",
        negatives="none; equipartition of the batch over K prototypes (Sinkhorn-Knopp)",
        loss="swapped prediction: cross-entropy of one view's softmax scores / tau against another view's code",
        anti_collapse="equipartition constraint on the codes; prototypes frozen in the first epoch",
        crops="2 global + M local; codes from the global crops only",
    )
    supports_local_crops = True

    def __init__(self, setup: MethodSetup) -> None:
        super().__init__(setup)
        hp = self.hp
        backbone = self.make_backbone()
        # lightly's SwaVProjectionHead: main_swav.py's projection_head without the bias of the Linear before BN.
        self.encoder = Encoder(backbone, SwaVProjectionHead(backbone.embed_dim, hp.proj_hidden_dim, hp.out_dim))
        # Not lightly's SwaVPrototypes: its Linear has a bias; src/resnet50.py's prototypes have none (z^T c_k).
        self.prototypes = nn.Linear(hp.out_dim, hp.num_prototypes, bias=False)
        self.normalize_prototypes()
        self.loss = SwAVLoss(
            hp.temperature, hp.epsilon, hp.sinkhorn_iterations, self.num_global, hp.queue_length, hp.out_dim
        )

    @classmethod
    def check_setup(cls, setup: MethodSetup) -> None:
        super().check_setup(setup)  # 2 global crops: the codes' crops (crops_for_assign 0 1)
        hp = setup.hp
        for key, fix in (("temperature", "0.1"), ("epsilon", "0.05")):
            if getattr(hp, key) <= 0:
                raise UserError(f"method.{key}={getattr(hp, key)} must be positive (SwAV uses {fix})")
        for key, least in (("num_prototypes", 1), ("sinkhorn_iterations", 1), ("queue_length", 0)):
            if getattr(hp, key) < least:
                raise UserError(f"method.{key}={getattr(hp, key)} must be at least {least}")

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        """C <- C / ||C|| per prototype (main_swav.py does it before each forward; here after each step)."""
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def training_step(self, views: list[Tensor], clock: Clock) -> StepOutput:
        projections, features = self.encoder(views)
        with torch.autocast(projections.device.type, enabled=False):  # |z| = 1 in fp32 (main_swav.py l2norm)
            z = F.normalize(projections.float(), dim=1).chunk(len(views))
        fill_queue = self.hp.queue_length > 0 and clock.step >= clock.steps(self.hp.epoch_queue_starts)
        loss, queue_used = self.loss(list(z), self.prototypes.weight, fill_queue)
        batch = len(views[0])
        return StepOutput(
            loss, {"queue_used": float(queue_used)}, embeddings=z[0].detach(), features=features[:batch].detach()
        )

    def before_optimizer_step(self, clock: Clock) -> None:
        if clock.step < self.hp.freeze_prototypes_niters:  # main_swav.py: the prototypes' gradients are cancelled
            self.prototypes.weight.grad = None

    def after_optimizer_step(self, clock: Clock) -> None:
        self.normalize_prototypes()

    def eval_backbone(self) -> Backbone:
        return self.encoder.backbone
