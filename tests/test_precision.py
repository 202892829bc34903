"""trainer.precision selects the autocast dtype, keeps fp32 master weights and losses; ResNets go channels_last."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sslzoo.backbones import Backbone
from sslzoo.build import build_method
from sslzoo.recipes import load_config
from sslzoo.runtime import attention_kernel, channels_last_resnets, precision_dtype, precision_name
from sslzoo.trainer import Trainer

EXPECTED = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SMALL_DINO = {"method.out_dim": 256, "method.proj_hidden_dim": 256, "method.bottleneck_dim": 64, "data.batch_size": 8}


def backbone_matmul_dtypes(method: nn.Module) -> list[torch.dtype]:
    """Records the output dtype of every linear layer inside a backbone from now on (the backbone's
    own output is fp32 under autocast: its final LayerNorm runs in fp32)."""
    seen: list[torch.dtype] = []
    for backbone in method.modules():
        if isinstance(backbone, Backbone):
            for layer in backbone.modules():
                if isinstance(layer, nn.Linear):
                    layer.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    return seen


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_precision_flag_selects_the_autocast_dtype(precision: str, tiny_config) -> None:
    trainer = Trainer(tiny_config("dino_fmnist", **SMALL_DINO, **{"trainer.precision": precision}))
    seen = backbone_matmul_dtypes(trainer.method)
    views, _ = next(iter(trainer.loader))
    record = trainer.step(views)
    assert seen and set(seen) == {EXPECTED[precision]}  # student and teacher backbones run in the chosen dtype
    assert all(p.dtype == torch.float32 for p in trainer.method.parameters())  # fp32 master weights
    assert trainer.method.loss.center.dtype == torch.float32
    assert trainer.scaler.is_enabled() == (precision == "fp16")  # loss scaling only where fp16 needs it
    assert torch.isfinite(torch.tensor(record["loss"]))


@pytest.mark.parametrize("amx", [True, False])
def test_auto_precision_is_bf16_only_on_cpus_with_amx(amx: bool, tiny_config, monkeypatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    expected = torch.bfloat16 if amx else torch.float32
    assert precision_dtype("auto", torch.device("cpu")) == expected
    trainer = Trainer(tiny_config("dino_fmnist", **SMALL_DINO, **{"trainer.precision": "auto"}))
    seen = backbone_matmul_dtypes(trainer.method)
    views, _ = next(iter(trainer.loader))
    record = trainer.step(views)
    assert trainer.dtype == expected and set(seen) == {expected}
    assert not trainer.scaler.is_enabled()  # auto never picks fp16, so never needs loss scaling
    assert torch.isfinite(torch.tensor(record["loss"]))


def attention_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if hasattr(m, "fused_attn")]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cpu_bf16_computes_attention_explicitly(precision: str, tiny_config, monkeypatch) -> None:
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counted(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
    trainer = Trainer(tiny_config("dino_fmnist", **SMALL_DINO, **{"trainer.precision": precision}))
    layers = attention_layers(trainer.method)
    assert layers and {m.fused_attn for m in layers} == {precision == "fp32"}
    views, _ = next(iter(trainer.loader))
    assert torch.isfinite(torch.tensor(trainer.step(views)["loss"]))
    assert bool(calls) == (precision == "fp32")  # the fused kernel runs in fp32 only


def test_explicit_attention_computes_what_the_fused_kernel_does() -> None:
    torch.manual_seed(0)
    method = build_method(load_config("dino_fmnist", SMALL_DINO)).eval()
    backbone = next(m for m in method.modules() if isinstance(m, Backbone))
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        fused = backbone(x)
        attention_kernel(method, torch.device("cpu"), torch.bfloat16)
        assert not any(m.fused_attn for m in attention_layers(method))
        explicit = backbone(x)
    torch.testing.assert_close(explicit, fused, rtol=1e-4, atol=1e-5)


def test_explicit_precision_ignores_the_cpus_amx(monkeypatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert precision_dtype("bf16", torch.device("cpu")) == torch.bfloat16  # asked for: emulated, slower, still bf16
    assert precision_dtype("fp32", torch.device("cpu")) == torch.float32
    assert precision_name(precision_dtype("auto", torch.device("cpu"))) == "fp32"


def test_dino_teacher_distribution_and_centre_are_fp32() -> None:
    from sslzoo.losses.dino import DINOLoss

    loss = DINOLoss(out_dim=16, student_temp=0.1, center_momentum=0.9)
    teacher = torch.randn(4, 16).bfloat16()
    assert loss.teacher_probs(teacher, 0.04).dtype == torch.float32
    loss.update_center(loss.batch_center(teacher))
    assert loss.center.dtype == torch.float32
    student = [torch.randn(4, 16).bfloat16() for _ in range(3)]
    assert loss(student, [teacher, teacher], 0.04).dtype == torch.float32


def test_resnets_go_channels_last_and_vits_stay_as_they_are() -> None:
    def build(recipe: str, **overrides):
        cfg = load_config(recipe, {"trainer.device": "cpu", "resume": "none", **overrides})
        return build_method(cfg)

    resnet_method = build("simclr_fmnist", **{"model.backbone": "resnet18_cifar", "method.proj_hidden_dim": 64})
    assert channels_last_resnets(resnet_method)
    convs = [m for m in resnet_method.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    z, _ = resnet_method.encoder([torch.randn(4, 1, 28, 28).contiguous(memory_format=torch.channels_last)] * 2)
    assert torch.isfinite(z).all()

    vit_method = build("dino_fmnist", **SMALL_DINO)
    assert not channels_last_resnets(vit_method)


def test_trainer_keeps_inputs_contiguous_on_cpu(tiny_config) -> None:
    cfg = tiny_config("simclr_fmnist", **{"model.backbone": "resnet18_cifar", "method.proj_hidden_dim": 64})
    trainer = Trainer(cfg)
    assert trainer.memory_format == torch.preserve_format  # channels_last is for GPUs only
