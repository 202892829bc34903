"""From a run config to a method: the one place that reads the run config on a method's behalf."""

from __future__ import annotations

from sslzoo.config import RunConfig
from sslzoo.data import data_info
from sslzoo.methods import Method, MethodSetup, method_class


def method_setup(cfg: RunConfig) -> MethodSetup:
    """The method's own section and the run settings a method may read."""
    return MethodSetup(
        hp=cfg.method,
        backbone=cfg.model.backbone,
        in_chans=data_info(cfg.data).channels,
        drop_path=cfg.model.drop_path,
        global_crops=cfg.augment.global_crops,
        local_crops=cfg.augment.local_crops,
    )


def check_method(cfg: RunConfig) -> None:
    """Refuse, with a one-line error, settings the recipe's method cannot use."""
    method_class(cfg.method.name).check_setup(method_setup(cfg))


def build_method(cfg: RunConfig) -> Method:
    """The recipe's method with fresh networks, after ``check_method``."""
    setup = method_setup(cfg)
    cls = method_class(cfg.method.name)
    cls.check_setup(setup)
    return cls(setup)
