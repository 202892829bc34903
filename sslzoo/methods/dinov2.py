"""DINOv2: learning robust visual features without supervision (Oquab et al. 2023, §4).

DINO's [CLS] self-distillation and iBOT's masked patch distillation, with untied heads,
Sinkhorn-Knopp centring of the teacher and the KoLeo regulariser (ssl_meta_arch.py):

gs, gt = student, teacher            # backbone + DINO head h + iBOT head h'; gt = EMA of gs
for x in loader:
    u = 2 global crops of x; l = local crops of x
    m = block masks of u             # int(p * 2B) crops masked, ratios stratified over [0.1, 0.5] (collate.py)
    t = gt.backbone(u)               # unmasked
    P_cls = SK(h_t(t[cls]));  P_patch = SK(h'_t(t[patch][m]))                # tau_t; over the global batch
    s = gs.backbone(mask(u, m)); s_l = gs.backbone(l)
    L_DINO  = H(P_cls, h_s(s[cls], s_l[cls])) over pairs of different views
    L_iBOT  = H(P_patch, h'_s(s[patch][m])) weighed 1 / |m| of each crop, mean over crops
    L_koleo = sum over the 2 global crops of KoLeo(s[cls])                   # backbone features, per GPU
    loss = w_dino L_DINO + w_koleo L_koleo + w_ibot L_iBOT; loss.backward(); update(gs)
    gt = m * gt + (1 - m) * gs       # m: cosine 0.992 -> 1

SK is ``centering: sinkhorn_knopp``; ``centering: centering`` uses DINO's and iBOT's centres instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from sslzoo.backbones import Backbone
from sslzoo.errors import UserError
from sslzoo.heads import dino_head
from sslzoo.losses.dino import DINOLoss, distillation_terms
from sslzoo.losses.dinov2 import koleo, teacher_targets
from sslzoo.losses.ibot import MaskedPatchLoss
from sslzoo.masking import stratified_block_masks
from sslzoo.methods.base import METHODS, Method, MethodCard, MethodSetup, StepOutput
from sslzoo.methods.distillation import DistillationConfig, SelfDistillation
from sslzoo.schedules import Clock
from sslzoo.target import EMATarget


@METHODS.register("dinov2")
class DINOv2(Method):
    @dataclass
    class Config(DistillationConfig):  # DINO's keys (its head is the DINO head), then DINOv2's
        centering: Literal["sinkhorn_knopp", "centering"]  # train.centering
        sinkhorn_iterations: int  # sinkhorn_knopp_teacher n_iterations
        dino_loss_weight: float  # w_dino
        koleo_loss_weight: float  # w_koleo
        ibot_loss_weight: float  # w_ibot
        ibot_separate_head: bool  # untied iBOT head h' (else h serves the patches too)
        ibot_out_dim: int  # K', prototypes of h'
        ibot_proj_hidden_dim: int
        ibot_bottleneck_dim: int
        mask_sample_probability: float  # share p of the global crops that are masked
        mask_ratio_min_max: list[float]  # their mask ratios, stratified over this range
        layerwise_decay: float  # lr multiplier per ViT block below the last
        patch_embed_lr_mult: float  # extra lr multiplier of the patch embedding

    card = MethodCard(
        family="masked modelling",
        target="EMA teacher (momentum cosine to 1; 0.992 in the paper)",
        predictor="none",
        negatives="none",
        loss="DINO's [CLS] cross-entropy + iBOT's masked-patch cross-entropy (untied heads) + KoLeo",
        anti_collapse="Sinkhorn-Knopp-balanced teacher targets + sharpening; KoLeo spreads the [CLS] features",
        crops="2 global (block-masked for the student) + M local (never masked); teacher sees unmasked globals",
    )
    supports_local_crops = True

    def __init__(self, setup: MethodSetup) -> None:
        super().__init__(setup)
        hp = self.hp
        self.student = self.networks()
        self.teacher = EMATarget(self.student, self.networks(drop_path=0.0))  # no stochastic depth in the teacher
        self.loss = DINOLoss(hp.out_dim, hp.student_temp, hp.center_momentum)  # L_DINO
        patch_dim = hp.ibot_out_dim if hp.ibot_separate_head else hp.out_dim
        self.patch_loss = MaskedPatchLoss(patch_dim, hp.student_temp, hp.center_momentum)  # L_iBOT (iBOTPatchLoss 0.9)
        self.distillation = SelfDistillation(hp, self.student, self.teacher, [self.loss, self.patch_loss])
        self.mask_token = nn.Parameter(torch.zeros(1, self.student.backbone.embed_dim))  # vision_transformer.py

    @classmethod
    def check_setup(cls, setup: MethodSetup) -> None:
        super().check_setup(setup)  # two global crops (ssl_meta_arch.py asserts it)
        hp = setup.hp
        setup.require_vit("masks patch tokens")
        low, high = (hp.mask_ratio_min_max + [-1.0, -1.0])[:2]
        if len(hp.mask_ratio_min_max) != 2 or not 0 <= low <= high <= 1:
            raise UserError("method.mask_ratio_min_max must be [min, max] with 0 <= min <= max <= 1, e.g. [0.1, 0.5]")
        if not 0 <= hp.mask_sample_probability <= 1:
            raise UserError("method.mask_sample_probability must lie in [0, 1], e.g. 0.5")
        if hp.sinkhorn_iterations < 1:
            raise UserError("method.sinkhorn_iterations must be at least 1, e.g. 3")

    def networks(self, drop_path: float | None = None) -> nn.ModuleDict:
        """Backbone, DINO head h and iBOT head h' (DINOHead each; h' is h without ``ibot_separate_head``)."""
        hp = self.hp
        backbone = self.make_backbone(drop_path)
        dim = backbone.embed_dim
        h = dino_head(dim, hp.out_dim, hp.proj_hidden_dim, hp.bottleneck_dim, hp.norm_last_layer, hp.use_bn_in_head)
        h_patch = h
        if hp.ibot_separate_head:
            h_patch = dino_head(
                dim,
                hp.ibot_out_dim,
                hp.ibot_proj_hidden_dim,
                hp.ibot_bottleneck_dim,
                hp.norm_last_layer,
                hp.use_bn_in_head,
            )
        return nn.ModuleDict({"backbone": backbone, "dino_head": h, "ibot_head": h_patch})

    def block_masks(self, crops: Tensor) -> Tensor:
        """Masks (B, H, W) of a batch of global crops, DINOv2's collate.py (masking.stratified_block_masks),
        from Python's RNG, which checkpoints restore."""
        height, width = self.student.backbone.patch_grid(crops.shape[-1])
        low, high = self.hp.mask_ratio_min_max
        return stratified_block_masks(
            len(crops), height, width, self.hp.mask_sample_probability, (low, high), crops.device
        )

    def targets(self, centre: DINOLoss | MaskedPatchLoss, teacher_out: Tensor, tau_t: float) -> Tensor:
        return teacher_targets(centre, teacher_out, tau_t, self.hp.centering, self.hp.sinkhorn_iterations)

    def training_step(self, views: list[Tensor], clock: Clock) -> StepOutput:
        hp, n_global = self.hp, self.num_global
        tau_s, tau_t = hp.student_temp, self.distillation.teacher_temp(clock)  # one tau_t for [CLS] and patches
        gs, gt = self.student, self.teacher.net
        u = torch.cat(views[:n_global])
        m = self.block_masks(u)
        flat = m.flatten(1)
        with torch.no_grad():  # the teacher sees the unmasked crops; its iBOT head only the masked patches
            t = gt.backbone.forward_tokens(u)
            p_cls = self.targets(self.loss, gt.dino_head(t[:, 0]), tau_t)
            p_patch = self.targets(self.patch_loss, gt.ibot_head(t[:, 1:][flat]), tau_t)
        s = gs.backbone.forward_tokens(u, m, self.mask_token)
        cls = [s[:, 0]]
        if len(views) > n_global:  # local crops: never masked; their [CLS] in the same head pass
            cls.append(gs.backbone(torch.cat(views[n_global:])))
        s_cls = gs.dino_head(torch.cat(cls))
        s_patch = gs.ibot_head(s[:, 1:][flat])

        loss_dino = self.loss.cross_entropy(list(s_cls.chunk(len(views))), list(p_cls.chunk(n_global)))
        loss_ibot = self.patch_loss.cross_entropy(s_patch, p_patch, flat)
        loss_koleo = sum(koleo(x) for x in s[:, 0].chunk(n_global))  # not across crops of the same image
        loss = hp.dino_loss_weight * loss_dino + hp.koleo_loss_weight * loss_koleo + hp.ibot_loss_weight * loss_ibot

        batch = len(views[0])
        logs = {
            "loss_dino": loss_dino.item(),
            "loss_ibot": loss_ibot.item(),
            "loss_koleo": loss_koleo.item(),
            "teacher_temp": tau_t,
            "momentum": self.distillation.momentum(clock),
            "mask_ratio": flat.float().mean().item(),
            **distillation_terms(s_cls[:batch], p_cls[:batch], tau_s),
        }
        return StepOutput(loss, logs, embeddings=s_cls[:batch].detach(), features=s[:batch, 0].detach())

    def before_optimizer_step(self, clock: Clock) -> None:
        self.distillation.freeze_prototypes(self.prototypes(), clock)

    def prototypes(self) -> list[Tensor]:
        """Every "last_layer" parameter (train.py's last_layer_lr_schedule), h' shared with h counted once."""
        heads = {id(h): h for h in (self.student.dino_head, self.student.ibot_head)}.values()
        return [p for h in heads for p in h.last_layer.parameters()]

    def lr_scales(self) -> dict[str, float]:
        """Layer-wise lr decay (param_groups.py get_vit_lr_decay_rate): block i of L gets rate^(L - i); the
        patch embedding, position embedding, [CLS] and mask tokens rate^(L + 1), the patch embedding also
        times patch_embed_lr_mult; the final norm and the heads 1."""
        vit, rate = self.student.backbone.model, self.hp.layerwise_decay
        depth, prefix = len(vit.blocks), "student.backbone.model"
        scales = {f"{prefix}.blocks.{i}": rate ** (depth - i) for i in range(depth)}
        for name in ("pos_embed", "cls_token"):
            scales[f"{prefix}.{name}"] = rate ** (depth + 1)
        scales["mask_token"] = rate ** (depth + 1)
        scales[f"{prefix}.patch_embed"] = rate ** (depth + 1) * self.hp.patch_embed_lr_mult
        return scales

    def after_optimizer_step(self, clock: Clock) -> None:
        self.distillation.after_optimizer_step(clock)  # gt = m gt + (1 - m) gs; centres (``centering`` only)

    def eval_backbone(self) -> Backbone:
        return self.teacher.net.backbone  # DINOv2 evaluates the teacher (train.py do_test)
