"""The Method interface: what a self-supervised method tells the generic loop.

A method declares its views (the ``augment`` section, checked by
``check_config``), builds its networks, computes its loss and logged terms
(``training_step``), adjusts gradients before the optimizer step if it must
(``before_optimizer_step``), updates its target network after it
(``after_optimizer_step``) and names the backbone to evaluate
(``eval_backbone``). The loop knows nothing else about it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

from sslzoo.backbones import MODELS, Backbone, create_backbone, zero_init_residual
from sslzoo.errors import UserError
from sslzoo.registry import Registry
from sslzoo.schedules import Clock


@dataclass
class StepOutput:
    loss: Tensor
    logs: dict[str, float] = field(default_factory=dict)  # the method's own terms (loss parts, momentum, ...)
    embeddings: Tensor | None = None  # detached head outputs of one view, for collapse diagnostics
    features: Tensor | None = None  # detached backbone features of the first view, for the online probe


@dataclass(frozen=True)
class MethodSetup:
    """What a method is built from: its own recipe section and the few run settings it reads.

    ``sslzoo.build.method_setup`` makes it from a run config, so that methods import neither the run
    config nor the data module.
    """

    hp: Any  # the recipe's ``method`` section: an instance of the method's ``Config`` dataclass
    backbone: str  # model.backbone, a name in sslzoo.backbones.MODELS
    in_chans: int  # the dataset's image channels
    drop_path: float  # model.drop_path
    global_crops: int  # augment.global_crops
    local_crops: int  # augment.local_crops

    def require_vit(self, why: str) -> None:
        """Refuse a backbone without patch tokens; ``why`` says what the method does with them."""
        if MODELS.get(self.backbone)[0] != "vit":
            raise UserError(f"{self.hp.name} {why}: model.backbone={self.backbone} is not a ViT; use a vit_*")


@dataclass(frozen=True)
class MethodCard:
    """How a method avoids collapse, in the reading group's vocabulary (for the method-card table)."""

    family: str  # contrastive | clustering | self-distillation | masked modelling
    target: str  # target network policy
    predictor: str
    negatives: str
    loss: str
    anti_collapse: str
    crops: str


class Method(nn.Module):
    """Base class of every method; subclasses register with ``@METHODS.register(name)``."""

    Config: ClassVar[type]  # dataclass of the recipe's ``method`` section
    card: ClassVar[MethodCard]
    supports_local_crops: ClassVar[bool] = False
    global_crops: ClassVar[int | None] = 2  # the global views the method needs (None: any number)

    def __init__(self, setup: MethodSetup) -> None:
        super().__init__()
        self.setup = setup
        self.hp = setup.hp  # the method's hyperparameters
        self.num_global = setup.global_crops

    @classmethod
    def check_setup(cls, setup: MethodSetup) -> None:
        """Refuse view settings this method cannot use (with a one-line fix)."""
        name = setup.hp.name
        if setup.local_crops and not cls.supports_local_crops:
            raise UserError(f"{name} takes no local crops: set augment.local_crops=0")
        needed = cls.global_crops
        if needed is not None and setup.global_crops != needed:
            raise UserError(f"{name} takes exactly {needed} global views: set augment.global_crops={needed}")

    def make_backbone(self, drop_path: float | None = None, zero_init: bool = False) -> Backbone:
        """A fresh backbone as the recipe names it (``drop_path`` defaults to model.drop_path); ``zero_init``:
        a ResNet's residual blocks start as the identity (:func:`sslzoo.backbones.zero_init_residual`)."""
        setup = self.setup
        backbone = create_backbone(
            setup.backbone, in_chans=setup.in_chans, drop_path=setup.drop_path if drop_path is None else drop_path
        )
        if zero_init:
            zero_init_residual(backbone.model)
        return backbone

    def training_step(self, views: list[Tensor], clock: Clock) -> StepOutput:
        raise NotImplementedError

    def forward(self, views: list[Tensor], clock: Clock) -> StepOutput:
        return self.training_step(views, clock)

    def before_optimizer_step(self, clock: Clock) -> None:
        """Hook after backward, before clipping and the optimizer step."""

    def after_optimizer_step(self, clock: Clock) -> None:
        """Hook after each optimizer step (target-network updates)."""

    def lr_scales(self) -> dict[str, float]:
        """Submodule or parameter name -> multiplier of the scheduled learning rate (none by default)."""
        return {}

    def fixed_lr(self) -> tuple[str, ...]:
        """Submodule names whose lr stays at the peak lr, neither warmed up nor decayed (none by default)."""
        return ()

    def eval_backbone(self) -> Backbone:
        raise NotImplementedError


METHODS: Registry[type[Method]] = Registry("method")
