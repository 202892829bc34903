"""A DINO training step built from lightly's blocks the way lightly's own example builds it.

lightly's ``examples/pytorch/dino.py`` keeps student and teacher as separate
backbone + ``DINOProjectionHead`` pairs (the teacher a deep copy with
``deactivate_requires_grad``), runs **one forward per view** (teacher on the
two global views, student on every view), uses ``DINOLoss`` on the lists of
outputs (which updates its centre inside ``forward``), cancels the last
layer's gradients with ``cancel_last_layer_gradients`` and moves the teacher
with ``update_momentum`` at ``cosine_schedule(epoch, epochs, 0.996, 1)``.

The throughput benchmark (``benchmarks/throughput.py``) runs this step next to
sslzoo's on the same backbone, head sizes, batch and crops, so the ratio of the
two measures what sslzoo's shared abstraction costs or saves. Two things are
matched to sslzoo instead of copied from the example, so that the comparison
measures the step and not a different recipe: the optimizer (AdamW, fused on
CUDA, where the example uses plain Adam/SGD) and the precision (the same
autocast dtype, with a GradScaler for fp16).
"""

from __future__ import annotations

import copy
from contextlib import nullcontext

import torch
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import Tensor, nn

from sslzoo.backbones import build_model, feature_dim
from sslzoo.config import RunConfig
from sslzoo.data import data_info


class LightlyDINO(nn.Module):
    """Student and teacher as in lightly's example: backbone + DINOProjectionHead each."""

    def __init__(self, backbone: nn.Module, input_dim: int, cfg: RunConfig) -> None:
        super().__init__()
        hp = cfg.method
        head = dict(
            input_dim=input_dim,
            hidden_dim=hp.proj_hidden_dim,
            bottleneck_dim=hp.bottleneck_dim,
            output_dim=hp.out_dim,
            norm_last_layer=hp.norm_last_layer,
        )
        self.student_backbone = backbone
        self.student_head = DINOProjectionHead(**head, freeze_last_layer=round(hp.freeze_last_layer_epochs))
        self.teacher_backbone = copy.deepcopy(backbone)
        self.teacher_head = DINOProjectionHead(**head)
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)

    def forward(self, x: Tensor) -> Tensor:
        return self.student_head(self.student_backbone(x).flatten(start_dim=1))

    def forward_teacher(self, x: Tensor) -> Tensor:
        return self.teacher_head(self.teacher_backbone(x).flatten(start_dim=1))


class LightlyDINOStep:
    """The body of lightly's example training loop, for one batch of views."""

    def __init__(self, cfg: RunConfig, device: torch.device, dtype: torch.dtype) -> None:
        hp = cfg.method
        backbone = build_model(cfg.model.backbone, in_chans=data_info(cfg.data).channels, drop_path=cfg.model.drop_path)
        self.model = LightlyDINO(backbone, feature_dim(backbone), cfg).to(device)
        self.criterion = DINOLoss(
            output_dim=hp.out_dim,
            warmup_teacher_temp=hp.warmup_teacher_temp,
            teacher_temp=hp.teacher_temp,
            warmup_teacher_temp_epochs=round(hp.warmup_teacher_temp_epochs),
            student_temp=hp.student_temp,
            center_momentum=hp.center_momentum,
        ).to(device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.optim.lr, fused=device.type == "cuda")
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        self.device, self.dtype = device, dtype
        self.momentum_start, self.epochs = hp.momentum, cfg.trainer.epochs
        self.num_global = cfg.augment.global_crops

    def autocast(self):
        return nullcontext() if self.dtype == torch.float32 else torch.autocast(self.device.type, dtype=self.dtype)

    def step(self, views: list[Tensor], epoch: int) -> Tensor:
        model = self.model
        momentum = cosine_schedule(epoch, self.epochs, self.momentum_start, 1.0)
        update_momentum(model.student_backbone, model.teacher_backbone, m=momentum)
        update_momentum(model.student_head, model.teacher_head, m=momentum)
        views = [view.to(self.device, non_blocking=True) for view in views]
        with self.autocast():
            teacher_out = [model.forward_teacher(view) for view in views[: self.num_global]]
            student_out = [model(view) for view in views]
            loss = self.criterion(teacher_out, student_out, epoch=epoch)
        self.scaler.scale(loss).backward()
        model.student_head.cancel_last_layer_gradients(current_epoch=epoch)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad()
        return loss.detach()
