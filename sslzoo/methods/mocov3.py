"""MoCo v3: momentum contrast for ViTs (Chen, Xie, He 2021, Algorithm 1).

f_q = backbone + projector + predictor     # online (query) encoder
f_k = backbone + projector                 # momentum (key) encoder = EMA of f_q's first two parts
for x in loader:
    x1, x2 = aug(x), aug(x)                # BYOL's asymmetric views
    q1, q2 = f_q(x1), f_q(x2)
    k1, k2 = f_k(x1), f_k(x2)              # no gradient; gathered across processes
    loss = ctr(q1, k2) + ctr(q2, k1)       # ctr: InfoNCE with tau, times 2 tau
    loss.backward(); update(f_q)           # AdamW for ViTs, LARS for ResNets
    f_k = m f_k + (1 - m) f_q              # m: 0.99 -> 1, cosine (--moco-m-cos)

ViT specifics (§4): a fixed 2-D sin-cos position embedding and a frozen random
patch projection (``freeze_patch_embed``, the paper's stability fix). moco-v3
applies each momentum update at the start of the next forward, with that step's
momentum m_(k+1); here it follows optimizer step k, with m_k: the same updates of
the same weights, each with the momentum of the step before (at most 1.7e-7 apart
in the ImageNet recipes; README, deviations).
"""

from __future__ import annotations

from dataclasses import dataclass

from sslzoo.backbones import (
    MODELS,
    Backbone,
    freeze_patch_embed,
    use_sincos_pos_embed,
)
from sslzoo.errors import UserError
from sslzoo.losses.mocov3 import ContrastiveLoss
from sslzoo.methods.base import METHODS, MethodCard, MethodSetup
from sslzoo.methods.predictive import PredictiveSiamese

VIT_ONLY = ("sincos_pos_embed", "freeze_patch_embed")
RESNET_ONLY = ("zero_init_residual",)


@METHODS.register("mocov3")
class MoCoV3(PredictiveSiamese):
    @dataclass
    class Config(PredictiveSiamese.Config):
        temperature: float  # tau
        sincos_pos_embed: bool  # ViTs: fixed 2-D sin-cos position embedding
        freeze_patch_embed: bool  # ViTs: random patch projection, never trained (--stop-grad-conv1)
        zero_init_residual: bool  # ResNets: each residual block starts as the identity

    card = MethodCard(
        family="contrastive",
        target="momentum encoder = EMA of encoder + projector (cosine to 1; 0.99 in the paper)",
        predictor="2-layer MLP on the query side only",
        negatives="the other images' keys in the global batch (gathered, no gradient); no queue",
        loss="InfoNCE of each view's prediction against the other view's keys, scaled by 2 tau",
        anti_collapse="negatives (contrast) + momentum keys",
        crops="2 asymmetric views (BYOL's augmentations)",
    )

    def __init__(self, setup: MethodSetup) -> None:
        super().__init__(setup, ContrastiveLoss(setup.hp.temperature))

    @classmethod
    def check_setup(cls, setup: MethodSetup) -> None:
        super().check_setup(setup)
        hp = setup.hp
        if hp.temperature <= 0:
            raise UserError(f"method.temperature={hp.temperature} must be positive (MoCo v3 uses 0.2 for ViTs)")
        kind, _ = MODELS.get(setup.backbone)
        wrong = RESNET_ONLY if kind == "vit" else VIT_ONLY
        for key in wrong:
            if getattr(hp, key):
                raise UserError(f"method.{key} does not apply to {setup.backbone}: set method.{key}=false")

    def make_backbone(self, drop_path: float | None = None, zero_init: bool = False) -> Backbone:
        hp = self.hp
        backbone = super().make_backbone(drop_path, zero_init=zero_init or hp.zero_init_residual)
        if hp.sincos_pos_embed:
            use_sincos_pos_embed(backbone.model)
        if hp.freeze_patch_embed:
            freeze_patch_embed(backbone.model)
        return backbone
