"""Cross-process helpers for losses that need the global batch.

``gather_with_grad`` keeps the autograd graph (SimCLR's negatives: a plain
``all_gather`` returns tensors without gradient, and a port that forgot this
learns nothing on several GPUs). ``gather_no_grad`` is for targets/keys that
receive no gradient anyway (MoCo v3's keys).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from lightly.utils.dist import gather as lightly_gather
from torch import Tensor


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
