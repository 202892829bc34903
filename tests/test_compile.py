"""trainer.compile=true: the backbones run through torch.compile, or the run stops with one clear line.

The compiled step is the slowest test on a CPU: inductor writes and builds C++
kernels (about 30 s on 2 cores with its on-disk cache warm, a few minutes cold).
"""

from __future__ import annotations

import shutil

import pytest
import torch

from sslzoo.backbones import Backbone
from sslzoo.errors import UserError
from sslzoo.trainer import Trainer

# One crop size (no local crops) and a small head: a single compiled graph per backbone; no
# stochastic depth, whose masks would differ between the two runs.
TINY = {
    "model.drop_path": 0.0,
    "augment.local_crops": 0,
    "method.out_dim": 256,
    "method.proj_hidden_dim": 256,
    "method.bottleneck_dim": 64,
    "data.batch_size": 8,
    "method.use_bn_in_head": False,  # main_dino.py's head (BN adds more first-step gradients at rounding level)
}


def first_loss(trainer: Trainer) -> float:
    views, _ = next(iter(trainer.loader))
    return trainer.step(views)["loss"]


@pytest.mark.skipif(shutil.which("g++") is None, reason="inductor needs a C++ compiler on CPU")
def test_compiled_backbones_train_like_eager_ones(tiny_config) -> None:
    eager = Trainer(tiny_config("dino_fmnist", **TINY))
    compiled = Trainer(tiny_config("dino_fmnist", **TINY, **{"trainer.compile": True}))
    backbones = [m for m in compiled.method.modules() if isinstance(m, Backbone)]
    assert len(backbones) == 2 and all(b.model._compiled_call_impl is not None for b in backbones)
    assert compiled.method.state_dict().keys() == eager.method.state_dict().keys()  # checkpoints stay compatible
    assert first_loss(compiled) == pytest.approx(first_loss(eager), abs=1e-4)
    for (name, p), q in zip(compiled.method.named_parameters(), eager.method.parameters()):
        if q.grad is None:
            assert p.grad is None, name
            continue
        # The same gradients up to float32 rounding, relative to each tensor's largest element: the conv stem's
        # first-step gradients are sums that cancel, which differ by up to 1.1e-3 of the largest on this batch (a
        # wrong graph differs by O(1)). Parameters are not compared: Adam's first step divides each element by its
        # own magnitude, which turns the noise of near-zero gradients (the key bias, cancelled by softmax) into +-lr.
        atol = 5e-3 * q.grad.abs().max().item() + 1e-12
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=atol, msg=name)


def test_compile_without_a_cpu_compiler_is_one_clear_error(tiny_config, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    with pytest.raises(UserError, match=r"needs a C\+\+ compiler .*trainer.compile=false"):
        Trainer(tiny_config("dino_fmnist", **TINY, **{"trainer.compile": True}))
