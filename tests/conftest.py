"""Shared fixtures: small, CPU-only, network-free configurations."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from sslzoo.config import Config
from sslzoo.recipes import load_config

torch.set_num_threads(2)


@pytest.fixture
def tiny_config(tmp_path: Path) -> Callable[..., Config]:
    """``tiny_config("dino_fmnist", **{"optim.lr": 1e-3})``: a recipe shrunk to a few
    CPU steps on real Fashion-MNIST, writing into a temporary run folder."""

    def make(recipe: str, **overrides: Any) -> Config:
        small = {
            "trainer.out_dir": str(tmp_path / "run"),
            "trainer.max_steps": 3,
            "trainer.log_every": 1,
            "trainer.checkpoint_every": 2,
            "data.batch_size": 16,
            "data.num_workers": 0,
            "trainer.device": "cpu",
            "resume": "none",
        }
        return load_config(recipe, {**small, **overrides})

    return make
