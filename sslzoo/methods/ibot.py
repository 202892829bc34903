"""iBOT: image BERT pre-training with an online tokenizer (Zhou et al. 2022, Algorithm 1).

DINO's [CLS] self-distillation plus masked image modelling, where the EMA teacher
is the online tokenizer of the masked patches:

gs, gt = student, teacher                  # gt = EMA of gs (DINO's teacher)
C, C' = 0, 0                               # centres of the [CLS] and of the patch outputs
for x in loader:
    u = global crops of x; l = local crops of x
    m = blockwise_mask(u)                  # per crop, BEiT-style blocks; locals and [CLS] never masked
    u_hat = m ? e_[MASK] : patch_embed(u)  # before the position embeddings
    t_cls, t_patch = gt(u)                 # the teacher sees the unmasked crops
    s_cls, s_patch = gs(u_hat); s_cls += gs(l)[cls]
    L_[CLS] = H(t_cls, s_cls) over pairs of different views              (DINO's loss, C, tau_t)
    L_MIM   = H(t_patch, s_patch) at the masked patches of the same crop  (C', tau_t')
    loss = lambda1 * L_[CLS] + lambda2 * L_MIM; loss.backward(); update(gs)
    gt = m * gt + (1 - m) * gs             # m: cosine 0.996 -> 1
    C  = c * C  + (1 - c)  * mean(t_cls);  C' = c' * C' + (1 - c') * mean(t_patch)

Each g(.) is one backbone call and one head pass over every token it returns ([CLS] and
patches together), as main_ibot.py's three calls, so BN in the head (``use_bn_in_head``)
normalises with the statistics of all those tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lightly.models.modules.heads import DINOProjectionHead
from torch import Tensor, nn

from sslzoo.backbones import Backbone
from sslzoo.errors import UserError
from sslzoo.heads import dino_head_settings
from sslzoo.losses.dino import DINOLoss, distillation_terms
from sslzoo.losses.ibot import MaskedPatchLoss
from sslzoo.masking import BlockMasking
from sslzoo.methods.base import METHODS, Method, MethodCard, MethodSetup, StepOutput
from sslzoo.methods.distillation import DistillationConfig, SelfDistillation
from sslzoo.multicrop import Encoder
from sslzoo.schedules import Clock
from sslzoo.target import EMATarget


class IBOTHead(DINOProjectionHead):
    """DINO's head over every token of a crop (models/head.py iBOTHead): [CLS] and patch tokens share the MLP.

    With ``shared_head`` (iBOT §3.2, the ViT-S/16 run) they share the prototype layer too;
    otherwise the patches get their own, also with K outputs (main_ibot.py gives the patch
    outputs the [CLS] dimension under its default ``--shared_head_teacher``; unlike it, the
    teacher here mirrors the student, so its patch layer is the EMA of the student's).
    With ``batch_norm`` (main_ibot.py ``--norm_in_head bn``) one BatchNorm module follows both
    hidden layers, as models/head.py appends the same ``norm`` after each.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int,
        bottleneck_dim: int,
        norm_last_layer: bool,
        shared_head: bool,
        batch_norm: bool,
    ) -> None:
        super().__init__(**dino_head_settings(in_dim, out_dim, hidden_dim, bottleneck_dim, norm_last_layer, batch_norm))
        norms = [i for i, layer in enumerate(self.layers) if isinstance(layer, nn.BatchNorm1d)]
        for i in norms[1:]:  # one BN module (weights and statistics) at every hidden layer
            self.layers[i] = self.layers[norms[0]]
        self.patch_layer: nn.Module | None = None
        if not shared_head:  # weight-normalised like the [CLS] prototypes (DINOHead)
            self.patch_layer = nn.utils.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
            with torch.no_grad():
                self.patch_layer.weight_g.fill_(1)
            self.patch_layer.weight_g.requires_grad = not norm_last_layer

    def forward_tokens(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """[CLS] outputs (B, K) and patch outputs (B, N, K) of all tokens (B, 1 + N, D) of a batch of crops.

        One pass over every token, so BN in the head takes its statistics from all of them, as
        models/head.py's CustomSequential does on the tokens of one backbone call.
        """
        hidden = self.layers(tokens.flatten(0, 1)).unflatten(0, tokens.shape[:2])
        bottleneck = nn.functional.normalize(hidden, dim=-1)
        patch_layer = self.last_layer if self.patch_layer is None else self.patch_layer
        # The patches as one (B * N, D) matrix: a Linear on the strided (B, N, D) slice runs as a batched
        # matmul over a weight expanded B times, which bf16 autocast copies (iBOT's bf16 CPU step at about
        # half speed; README, "bf16 on CPUs with AMX").
        patches = patch_layer(bottleneck[:, 1:].flatten(0, 1)).unflatten(0, (len(tokens), -1))
        return self.last_layer(bottleneck[:, 0]), patches


@METHODS.register("ibot")
class IBOT(Method):
    @dataclass
    class Config(DistillationConfig):  # DINO's keys, then the masked modelling's
        shared_head: bool  # one prototype layer for [CLS] and patch tokens
        teacher_patch_temp: float  # tau_t' after warm-up (over warmup_teacher_temp_epochs, as tau_t)
        warmup_teacher_patch_temp: float  # tau_t' at step 0
        center_momentum_patch: float  # c', momentum of the patch centre C'
        lambda_cls: float  # lambda1, weight of L_[CLS]
        lambda_patch: float  # lambda2, weight of L_MIM
        pred_ratio: list[float]  # candidate mask ratios, one drawn per crop
        pred_ratio_var: list[float]  # each ratio is drawn uniformly in ratio +- var
        mask_min_block: int | None  # smallest block area, in patches (None: (min(H, W) // 3) ** 2 of the grid)
        mask_min_aspect: float  # block aspect ratios in [a, 1/a]
        mask_attempts: int  # draws per block before the mask is left as it is

    card = MethodCard(
        family="masked modelling",
        target="EMA teacher (momentum cosine to 1; 0.996 in the paper), the online tokenizer",
        predictor="none",
        negatives="none",
        loss="DINO's [CLS] cross-entropy + patch cross-entropy at the student's masked patches",
        anti_collapse="centring + sharpening, with separate centres and temperatures for [CLS] and patches",
        crops="2 global (block-masked for the student) + M local (never masked); teacher sees unmasked globals",
    )
    supports_local_crops = True

    def __init__(self, setup: MethodSetup) -> None:
        super().__init__(setup)
        hp = self.hp
        self.student = self.encoder()
        self.teacher = EMATarget(self.student, self.encoder(drop_path=0.0))  # no stochastic depth in the teacher
        self.loss = DINOLoss(hp.out_dim, hp.student_temp, hp.center_momentum)  # L_[CLS], with the centre C
        self.patch_loss = MaskedPatchLoss(hp.out_dim, hp.student_temp, hp.center_momentum_patch)  # L_MIM, centre C'
        self.distillation = SelfDistillation(hp, self.student, self.teacher, [self.loss, self.patch_loss])
        # e_[MASK], zero-initialised as ibot's masked_embed; the teacher has none.
        self.mask_token = nn.Parameter(torch.zeros(1, self.student.backbone.embed_dim))
        self.masking = BlockMasking(
            hp.pred_ratio, hp.pred_ratio_var, hp.mask_min_block, hp.mask_min_aspect, hp.mask_attempts
        )

    @classmethod
    def check_setup(cls, setup: MethodSetup) -> None:
        super().check_setup(setup)
        hp = setup.hp
        setup.require_vit("masks patch tokens")
        if not hp.pred_ratio or len(hp.pred_ratio) != len(hp.pred_ratio_var):
            raise UserError("method.pred_ratio and method.pred_ratio_var need the same number of entries (at least 1)")
        if not all(0 <= r - v and r + v <= 1 for r, v in zip(hp.pred_ratio, hp.pred_ratio_var)):
            raise UserError("method.pred_ratio +- method.pred_ratio_var must stay within [0, 1]")
        if (
            (hp.mask_min_block is not None and hp.mask_min_block < 1)
            or hp.mask_attempts < 1
            or not 0 < hp.mask_min_aspect <= 1
        ):
            raise UserError("method.mask_min_block (or null) and mask_attempts must be >= 1, mask_min_aspect in (0, 1]")

    def encoder(self, drop_path: float | None = None) -> Encoder:
        hp = self.hp
        backbone = self.make_backbone(drop_path)
        head = IBOTHead(
            backbone.embed_dim,
            hp.out_dim,
            hp.proj_hidden_dim,
            hp.bottleneck_dim,
            hp.norm_last_layer,
            hp.shared_head,
            hp.use_bn_in_head,
        )
        return Encoder(backbone, head)

    def teacher_patch_temp(self, clock: Clock) -> float:
        return self.distillation.temperature(clock, self.hp.warmup_teacher_patch_temp, self.hp.teacher_patch_temp)

    def block_masks(self, crops: Tensor) -> Tensor:
        """One block mask (B, H, W) per crop, drawn from the torch RNG (restored on resume)."""
        height, width = self.student.backbone.patch_grid(crops.shape[-1])
        return self.masking(len(crops), height, width).to(crops.device)

    def training_step(self, views: list[Tensor], clock: Clock) -> StepOutput:
        hp, n_global = self.hp, self.num_global
        tau_s, tau_t, tau_tp = hp.student_temp, self.distillation.teacher_temp(clock), self.teacher_patch_temp(clock)
        student, teacher = self.student, self.teacher.net
        u = torch.cat(views[:n_global])  # the global crops as one batch
        m = self.block_masks(u)
        with torch.no_grad():  # the teacher sees the unmasked crops
            t_cls, t_patch = teacher.head.forward_tokens(teacher.backbone.forward_tokens(u))
        s_tokens = student.backbone.forward_tokens(u, m, self.mask_token)  # u_hat
        s_cls, s_patch = student.head.forward_tokens(s_tokens)
        if len(views) > n_global:  # local crops: never masked; a head pass of their own, [CLS] outputs kept
            l_tokens = student.backbone.forward_tokens(torch.cat(views[n_global:]))
            s_cls = torch.cat([s_cls, student.head.forward_tokens(l_tokens)[0]])
        m = m.flatten(1)

        loss_cls = self.loss(s_cls.chunk(len(views)), t_cls.chunk(n_global), tau_t)
        loss_patch = self.patch_loss(s_patch, t_patch, m, tau_tp)
        self.loss.observe(t_cls)  # C and C' are updated after the optimizer step
        self.patch_loss.observe(t_patch.flatten(0, 1))

        batch = len(views[0])
        terms = distillation_terms(s_cls[:batch], self.loss.teacher_probs(t_cls[:batch], tau_t), tau_s)
        logs = {
            "loss_cls": loss_cls.item(),
            "loss_patch": loss_patch.item(),
            "teacher_temp": tau_t,
            "teacher_patch_temp": tau_tp,
            "momentum": self.distillation.momentum(clock),
            "mask_ratio": m.float().mean().item(),
            **terms,
        }
        return StepOutput(
            hp.lambda_cls * loss_cls + hp.lambda_patch * loss_patch,
            logs,
            embeddings=s_cls[:batch].detach(),
            features=s_tokens[:batch, 0].detach(),  # the student's (possibly masked) first crop, as DINO's
        )

    def before_optimizer_step(self, clock: Clock) -> None:
        self.distillation.freeze_prototypes(self.prototypes(), clock)

    def prototypes(self) -> list[Tensor]:
        """Both prototype layers are frozen at the start (main_ibot.py cancels every "last_layer*")."""
        head = self.student.head
        patch = [] if head.patch_layer is None else list(head.patch_layer.parameters())
        return list(head.last_layer.parameters()) + patch

    def after_optimizer_step(self, clock: Clock) -> None:
        self.distillation.after_optimizer_step(clock)  # gt = m gt + (1 - m) gs; C and C' = their EMAs of mean(t)

    def eval_backbone(self) -> Backbone:
        return self.teacher.net.backbone  # iBOT evaluates the teacher, as DINO
