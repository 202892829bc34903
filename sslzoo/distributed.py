"""Cross-process helpers for losses that need the global batch.

``gather_with_grad`` keeps the autograd graph (SimCLR's negatives: a plain
``all_gather`` returns tensors without gradient, and a port that forgot this
learns nothing on several GPUs). ``gather_no_grad`` is for targets/keys that
receive no gradient anyway (MoCo v3's keys). ``sync_batchnorm`` makes every
BatchNorm use the global batch's statistics (on CPUs too, where torch's
``SyncBatchNorm`` refuses to run).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from lightly.utils.dist import gather as lightly_gather
from torch import Tensor, nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every process along dim 0; gradients flow back to each source."""
    if not is_distributed():
        return x
    return torch.cat(lightly_gather(x), dim=0)


@torch.no_grad()
def gather_no_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every process along dim 0, without gradient."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def sum_with_grad(x: Tensor) -> Tensor:
    """The sum of ``x`` over every process; gradients flow back to each process's ``x``."""
    return gather_with_grad(x.unsqueeze(0)).sum(dim=0)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are taken over the global batch, for CPU (gloo) runs.

    ``nn.SyncBatchNorm`` is the same thing on GPUs but refuses CPU tensors. The
    mean and variance are summed over processes with gradient, so the backward pass sees
    the global statistics too; in eval mode and in one process it is plain BatchNorm.
    """

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        self._check_input_dim(x)
        dims = [d for d in range(x.dim()) if d != 1]
        shape = [1, -1] + [1] * (x.dim() - 2)
        values = x.float()
        count = torch.tensor(float(values.numel() // values.shape[1]))
        dist.all_reduce(count)
        mean = sum_with_grad(values.sum(dims)) / count
        centred = values - mean.view(shape)
        var = sum_with_grad(centred.square().sum(dims)) / count  # biased, as BatchNorm normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean, factor)
                self.running_var.lerp_(var * count / (count - 1), factor)  # unbiased, as BatchNorm tracks
        out = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.weight is not None:
            out = out * self.weight.view(shape)
        if self.bias is not None:
            out = out + self.bias.view(shape)
        return out.to(x.dtype)


def convert_global_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm in ``module`` by :class:`GlobalBatchNorm`, sharing its parameters and buffers."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
        module, (GlobalBatchNorm, nn.SyncBatchNorm)
    ):
        bn = GlobalBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        bn.weight, bn.bias = module.weight, module.bias
        bn.running_mean, bn.running_var = module.running_mean, module.running_var
        bn.num_batches_tracked = module.num_batches_tracked
        bn.train(module.training)
        return bn
    for name, child in module.named_children():
        setattr(module, name, convert_global_batchnorm(child))
    return module


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Normalise with the statistics of the global batch in every process ("global BN": SimCLR §B.2,
    BYOL §3.2, MoCo v3 §4): ``nn.SyncBatchNorm`` on GPUs, :class:`GlobalBatchNorm` on CPUs."""
    if device.type == "cpu":
        return convert_global_batchnorm(module)
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)
