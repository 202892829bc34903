"""The online linear probe: a classifier trained during pre-training on detached
backbone features (SimCLR's and solo-learn's online evaluation).

It sees the features of the first augmented view of each training batch, which
the method computed anyway, and is trained by its own SGD optimizer on its own
parameters: the features are detached, so the method's gradients, optimizer and
RNG stream are exactly those of a run without it. Its accuracy is measured on
each training batch before the probe learns from it, and is logged as
``online_linear_top1``: an *online* number on augmented training images, not
comparable with the offline linear probe of ``python -m sslzoo.eval linear``.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from sslzoo.config import RunConfig
from sslzoo.data import data_info
from sslzoo.distributed import is_distributed, world_size
from sslzoo.errors import UserError
from sslzoo.eval.linear import linear_classifier
from sslzoo.eval.protocol import OnlineProbeProtocol, load_protocol
from sslzoo.methods.base import Method, StepOutput


class OnlineProbe(nn.Module):
    """BatchNorm (no affine) + linear classifier with its own optimizer and running accuracy."""

    def __init__(self, dim: int, num_classes: int, p: OnlineProbeProtocol, device: torch.device) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # the run's RNG stream stays untouched
            torch.manual_seed(p.seed)
            self.classifier = linear_classifier(dim, num_classes, standardize=True, init_std=p.init_std)
        self.register_buffer("correct", torch.zeros((), dtype=torch.long))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("loss_sum", torch.zeros((), dtype=torch.float64))
        self.to(device)
        self.optimizer = torch.optim.SGD(self.classifier.parameters(), lr=p.lr, momentum=p.momentum)

    def update(self, features: Tensor | None, labels: Tensor) -> None:
        """Score this batch with the current probe, then take one SGD step on it."""
        if features is None:
            raise UserError("this method returns no features for the online probe; set trainer.online_probe=false")
        labels = labels.to(features.device)
        logits = self.classifier(features.detach().float())
        loss = F.cross_entropy(logits, labels)
        with torch.no_grad():
            self.correct += (logits.argmax(dim=1) == labels).sum()
            self.seen += len(labels)
            self.loss_sum += loss.detach().double() * len(labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if is_distributed():  # one probe for all ranks: average its gradients
            for param in self.classifier.parameters():
                dist.all_reduce(param.grad)
                param.grad /= world_size()
        self.optimizer.step()

    def read(self) -> dict[str, float]:
        """Mean accuracy and loss over the batches since the last read (then reset)."""
        totals = torch.stack([self.correct.double(), self.seen.double(), self.loss_sum])
        if is_distributed():
            dist.all_reduce(totals)
        self.correct.zero_()
        self.seen.zero_()
        self.loss_sum.zero_()
        correct, seen, loss_sum = totals.tolist()
        if seen == 0:
            return {}
        return {"online_linear_top1": correct / seen, "online_linear_loss": loss_sum / seen}


class OnlineProbeCallback:
    """The probe as a trainer callback (``sslzoo.trainer.Callback``): built once the method is, stepped
    after each optimizer step, read at each log step, checkpointed with the run; its settings (protocol.yaml's
    ``online_probe``) go into the run's config.yaml."""

    name = "online_probe"

    def __init__(self, protocol: OnlineProbeProtocol, num_classes: int) -> None:
        self.protocol = protocol
        self.num_classes = num_classes
        self.settings = dataclasses.asdict(protocol)
        self.probe: OnlineProbe | None = None

    def attach(self, method: Method, device: torch.device) -> None:
        self.probe = OnlineProbe(method.eval_backbone().embed_dim, self.num_classes, self.protocol, device)

    def on_step(self, out: StepOutput, labels: Tensor) -> None:
        self.probe.update(out.features, labels)  # its own optimizer, on detached features

    def on_log(self) -> dict[str, float]:
        return self.probe.read()

    def state_dict(self) -> dict:
        return {"probe": self.probe.state_dict(), "optimizer": self.probe.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.probe.load_state_dict(state["probe"])
        self.probe.optimizer.load_state_dict(state["optimizer"])


def online_probe_callbacks(cfg: RunConfig) -> list[OnlineProbeCallback]:
    """What ``trainer.online_probe`` attaches to a run of ``cfg``: the probe, sized by the dataset's classes,
    with the hyperparameters of protocol.yaml's ``online_probe``; nothing when it is off."""
    if not cfg.trainer.online_probe:
        return []
    return [OnlineProbeCallback(load_protocol().online_probe, data_info(cfg.data).num_classes)]
