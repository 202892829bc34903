"""Target networks: an exponential moving average of the online network.

Used as DINO's/iBOT's teacher and BYOL's/MoCo v3's momentum encoder:
xi <- m * xi + (1 - m) * theta after each optimizer step; no gradient flows
into the target.
"""

from __future__ import annotations

import copy

import torch
from lightly.models.utils import deactivate_requires_grad, update_momentum
from torch import nn

from sslzoo.errors import UserError


def check_momentum(key: str, momentum: float) -> None:
    """Refuse, in one line, an EMA momentum ``method.{key}`` outside [0, 1]."""
    if not 0 <= momentum <= 1:
        raise UserError(f"method.{key}={momentum} must lie in [0, 1] (1: a frozen target)")


class EMATarget(nn.Module):
    """A gradient-free copy of ``online`` that follows it by momentum updates.

    ``fresh``, if given, is a newly built module of the same architecture that
    receives ``online``'s weights (main_dino.py builds its teacher so, without
    stochastic depth); otherwise the target is a deep copy of ``online``.
    """

    def __init__(self, online: nn.Module, fresh: nn.Module | None = None) -> None:
        super().__init__()
        if fresh is None:
            fresh = copy.deepcopy(online)
        else:
            fresh.load_state_dict(online.state_dict())
        self.net = fresh
        deactivate_requires_grad(self.net)
        self.updates = 0  # momentum updates applied in this process (checked by the tests)

    @torch.no_grad()
    def update(self, online: nn.Module, momentum: float) -> None:
        update_momentum(online, self.net, momentum)
        self.updates += 1

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            return self.net(*args, **kwargs)
