"""Shared fixtures: small, CPU-only, network-free configurations."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from sslzoo.config import RunConfig
from sslzoo.recipes import load_config

torch.set_num_threads(2)


def one_line_error(main: Callable[[list[str]], int], argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """What an entry point prints when it refuses ``argv``: exit 2 and one line starting with "error:"."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def tiny_config(tmp_path: Path) -> Callable[..., RunConfig]:
    """``tiny_config("dino_fmnist", **{"optim.lr": 1e-3})``: a recipe shrunk to a few
    CPU steps on real Fashion-MNIST, writing into a temporary run folder."""

    def make(recipe: str, **overrides: Any) -> RunConfig:
        small = {
            "trainer.out_dir": str(tmp_path / "run"),
            "trainer.max_steps": 3,
            "trainer.log_every": 1,
            "trainer.checkpoint_every": 2,
            "data.batch_size": 16,
            "data.num_workers": 0,
            "trainer.device": "cpu",
            "trainer.precision": "fp32",  # not the fmnist recipes' auto: the same numbers with and without AMX
            "resume": "none",
        }
        return load_config(recipe, {**small, **overrides})

    return make
