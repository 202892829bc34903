"""What the training loop calls besides the method: a :class:`Callback` follows the optimizer steps on its
own parameters and optimizer (the online probe, ``sslzoo/eval/online_probe.py``). The entry point attaches
callbacks (``sslzoo.cli.attached_callbacks``), so that training imports no evaluation code."""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

from sslzoo.methods import Method, StepOutput


class Callback(Protocol):
    """``name`` keys its state in the checkpoint and its ``settings`` in config.yaml's ``callbacks`` section."""

    name: str
    settings: dict[str, Any]

    def attach(self, method: Method, device: torch.device) -> None:
        """Build what it needs, once the method is on its device."""

    def on_step(self, out: StepOutput, labels: Tensor) -> None:
        """After each optimizer step, with the method's output of that step."""

    def on_log(self) -> dict[str, float]:
        """What it adds to each logged record."""

    def state_dict(self) -> dict:
        """What a resumed run restores."""

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s state."""
