"""The shared core: schedules, multi-crop, backbones, heads, optimizer groups, sampler."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from sslzoo.augment import MultiCrop, crop_specs
from sslzoo.backbones import create_backbone
from sslzoo.data import ResumableSampler, sample_seed
from sslzoo.errors import UserError
from sslzoo.heads import dino_head, mlp_head
from sslzoo.multicrop import backbone_features
from sslzoo.optim import apply_schedules, build_optimizer, clip_gradients, parameter_groups, scaled_lr
from sslzoo.recipes import SEED_LIMIT, load_config
from sslzoo.schedules import Clock, cosine, linear_warmup, warmup_cosine, warmup_hold_cooldown

# --------------------------------------------------------------------------- schedules


def test_warmup_then_cosine_at_known_points():
    assert warmup_cosine(0, 100, 10, peak=1.0, end=0.0) == 0.0
    assert warmup_cosine(5, 100, 10, peak=1.0, end=0.0) == pytest.approx(0.5)
    assert warmup_cosine(10, 100, 10, peak=1.0, end=0.0) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10, peak=1.0, end=0.0) == pytest.approx(0.5)  # half-way through the cosine
    assert warmup_cosine(100, 100, 10, peak=1.0, end=0.1) == pytest.approx(0.1)


def test_weight_decay_and_momentum_cosines():
    assert cosine(0, 100, 0.04, 0.4) == pytest.approx(0.04)
    assert cosine(50, 100, 0.04, 0.4) == pytest.approx(0.22)
    assert cosine(100, 100, 0.04, 0.4) == pytest.approx(0.4)
    # BYOL's tau = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2
    k, big_k = 30, 100
    assert cosine(k, big_k, 0.996, 1.0) == pytest.approx(1 - (1 - 0.996) * (math.cos(math.pi * k / big_k) + 1) / 2)


def test_teacher_temperature_linear_warmup():
    assert linear_warmup(0, 30, 0.04, 0.07) == pytest.approx(0.04)
    assert linear_warmup(10, 30, 0.04, 0.07) == pytest.approx(0.05)
    assert linear_warmup(30, 30, 0.04, 0.07) == pytest.approx(0.07)
    assert linear_warmup(5, 0, 0.04, 0.07) == pytest.approx(0.07)


def test_clock_maps_recipe_epochs_onto_a_shortened_run():
    full = Clock(step=0, total_steps=1000, steps_per_epoch=10, epochs=100)
    assert full.steps(10) == 100
    short = Clock(step=0, total_steps=50, steps_per_epoch=10, epochs=100)  # trainer.max_steps=50
    assert short.steps(10) == 5  # warm-up keeps its tenth of the run
    assert short.at(25).epoch == 2


# --------------------------------------------------------------------------- augmentation


def test_multicrop_shapes_counts_and_per_crop_probabilities():
    cfg = load_config("dino_vits16", {"data.name": "cifar10"})
    specs = crop_specs(cfg.augment)
    assert len(specs) == 10
    assert [s.size for s in specs] == [224, 224] + [96] * 8
    assert (specs[0].blur_p, specs[0].solarize_p) == (1.0, 0.0)
    assert (specs[1].blur_p, specs[1].solarize_p) == (0.1, 0.2)
    assert all(s.blur_p == 0.5 and s.solarize_p == 0.0 for s in specs[2:])
    image = torch.randint(0, 256, (3, 300, 280), dtype=torch.uint8)
    views = MultiCrop(cfg.augment, 3, [0.5] * 3, [0.25] * 3)(image)
    assert [tuple(v.shape) for v in views] == [(3, 224, 224)] * 2 + [(3, 96, 96)] * 8
    assert all(v.dtype == torch.float32 for v in views)


def test_multicrop_keeps_one_channel_images_one_channel():
    cfg = load_config("dino_fmnist")
    image = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8)
    views = MultiCrop(cfg.augment, 1, [0.286], [0.353])(image)
    size = cfg.augment.global_size  # 20 px (FixRes), smaller than the 28-px images
    assert [tuple(v.shape) for v in views] == [(1, size, size)] * 2 + [(1, 12, 12)] * cfg.augment.local_crops


def test_always_solarize_inverts_bright_pixels():
    cfg = load_config("dino_fmnist", {"augment.solarize_p": [1.0, 1.0], "augment.blur_p": [0.0, 0.0]})
    cfg.augment.jitter_p, cfg.augment.global_scale, cfg.augment.flip_p = 0.0, [1.0, 1.0], 0.0
    image = torch.full((1, 28, 28), 250, dtype=torch.uint8)
    view = MultiCrop(cfg.augment, 1, [0.0], [1.0])(image)[0]
    assert view.max().item() == pytest.approx(5 / 255, abs=1e-3)


# --------------------------------------------------------------------------- backbones and heads


def test_vit_accepts_local_crops_by_position_embedding_interpolation():
    backbone = create_backbone("vit_small_patch16_224")
    views = [torch.randn(2, 3, 224, 224), torch.randn(2, 3, 224, 224), torch.randn(2, 3, 96, 96)]
    assert backbone_features(backbone, views).shape == (6, 384)
    assert backbone.forward_tokens(torch.randn(1, 3, 96, 96)).shape == (1, 1 + 36, 384)


def test_micro_vit_uses_the_original_vit_initialisation():
    torch.manual_seed(0)
    vit = create_backbone("vit_micro_patch4_28", in_chans=1).model
    fc1 = vit.blocks[0].mlp.fc1.weight  # 128 -> 512
    xavier_std = math.sqrt(2 / sum(fc1.shape))
    assert abs(fc1.std().item() - xavier_std) < 0.1 * xavier_std  # not timm's default std 0.02
    assert vit.blocks[0].mlp.fc1.bias.abs().max() < 1e-5  # near-zero MLP biases (ViT init)


def test_small_resnet_has_a_3x3_stem_and_no_maxpool():
    backbone = create_backbone("resnet18_cifar", in_chans=1)
    assert backbone.model.conv1.kernel_size == (3, 3) and backbone.model.conv1.stride == (1, 1)
    assert isinstance(backbone.model.maxpool, nn.Identity)
    assert backbone(torch.randn(2, 1, 28, 28)).shape == (2, 512)


def test_dino_head_structure_and_normalised_prototypes():
    head = dino_head(384, out_dim=1000, hidden_dim=2048, bottleneck_dim=256, norm_last_layer=True)
    linears = [m for m in head.layers if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(384, 2048), (2048, 2048), (2048, 256)]
    assert sum(isinstance(m, nn.GELU) for m in head.layers) == 2
    assert head.last_layer.bias is None
    assert not head.last_layer.weight_g.requires_grad  # norm_last_layer: prototype norms fixed at 1
    assert head(torch.randn(3, 384)).shape == (3, 1000)
    assert torch.allclose(head.last_layer.weight.norm(dim=1), torch.ones(1000), atol=1e-5)
    free = dino_head(384, 1000, 2048, 256, norm_last_layer=False)
    assert free.last_layer.weight_g.requires_grad


def test_mlp_head_with_final_bn_without_affine():
    head = mlp_head([32, 64, 16], last_bn=True, last_bn_affine=False)
    layers = list(head.layers)
    assert isinstance(layers[0], nn.Linear) and layers[0].bias is None
    assert isinstance(layers[1], nn.BatchNorm1d) and isinstance(layers[2], nn.ReLU)
    assert isinstance(layers[-1], nn.BatchNorm1d) and not layers[-1].affine
    assert head(torch.randn(5, 32)).shape == (5, 16)


# --------------------------------------------------------------------------- optimizer


def test_no_weight_decay_on_biases_and_norms():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    decay, no_decay = parameter_groups(model, exclude_bias_norm=True)
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert len(no_decay["params"]) == 4 and not no_decay["apply_weight_decay"]
    (everything,) = parameter_groups(model, exclude_bias_norm=False)
    assert len(everything["params"]) == 6


def test_lr_scales_multiply_the_scheduled_lr_of_one_submodule():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    groups = parameter_groups(model, exclude_bias_norm=True, lr_scales={"1": 10.0})
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    assert scale_of[id(model[0].weight)] == scale_of[id(model[0].bias)] == 1.0
    assert scale_of[id(model[1].weight)] == scale_of[id(model[1].bias)] == 10.0
    cfg = load_config("byol_fmnist").optim
    optimizer = build_optimizer(groups, cfg, torch.device("cpu"))
    lr, _ = apply_schedules(optimizer, cfg, Clock(step=50, total_steps=100, steps_per_epoch=10, epochs=10), 1e-3)
    assert lr > 0 and sorted(g["lr"] / lr for g in optimizer.param_groups) == pytest.approx([1.0, 1.0, 10.0, 10.0])


def test_fixed_lr_keeps_one_submodule_at_the_peak_lr_through_warm_up_and_decay():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    groups = parameter_groups(model, exclude_bias_norm=True, lr_scales={"1": 2.0}, fixed_lr=("1",))
    fixed = {id(p) for g in groups if g["lr_fixed"] for p in g["params"]}
    assert fixed == {id(model[1].weight), id(model[1].bias)}
    cfg = load_config("byol_fmnist", {"optim.lr_decay": "cosine"}).optim  # warm-up, then cosine to 0 (as byol_r50)
    optimizer = build_optimizer(groups, cfg, torch.device("cpu"))
    peak = 1e-3
    for step in (0, 3, 50, 99):
        lr, _ = apply_schedules(optimizer, cfg, Clock(step=step, total_steps=100, steps_per_epoch=10, epochs=10), peak)
        assert lr < peak  # the scheduled lr is below the peak at each of these steps
        for group in optimizer.param_groups:
            want = 2.0 * peak if group["lr_fixed"] else lr
            assert group["lr"] == pytest.approx(want)


@pytest.mark.parametrize("batch", [64, 128, 1024])
def test_lr_decay_none_holds_the_scaled_peak_after_the_same_warm_up(batch: int):
    cfg = load_config("dinov2_fmnist", {"optim.min_lr": 1e-6}).optim  # sqrt scaling, 1 warm-up epoch of 10
    peak = scaled_lr(cfg, batch)
    model = nn.Linear(4, 2)
    held, decayed = (replace(cfg, lr_decay=decay) for decay in ("none", "cosine"))
    lrs = {decay: [] for decay in ("none", "cosine")}
    for step in (0, 5, 10, 50, 99):
        clock = Clock(step=step, total_steps=100, steps_per_epoch=10, epochs=10)
        for optim_cfg in (held, decayed):
            optimizer = build_optimizer(parameter_groups(model, exclude_bias_norm=True), optim_cfg, torch.device("cpu"))
            lrs[optim_cfg.lr_decay].append(apply_schedules(optimizer, optim_cfg, clock, peak)[0])
    assert lrs["none"][:3] == lrs["cosine"][:3] == pytest.approx([0.0, peak / 2, peak])  # the same warm-up
    assert lrs["none"][3:] == pytest.approx([peak, peak])  # held at this batch's peak, min_lr unused
    assert lrs["cosine"][3] < peak and lrs["cosine"][4] < 0.01 * peak  # near min_lr by the last step


def test_cooldown_holds_the_peak_then_decays_as_one_minus_sqrt_over_the_last_fraction():
    # Hägele et al. 2024: lr = peak until the cooldown, then end + (peak - end)(1 - sqrt(progress))
    assert warmup_hold_cooldown(5, 100, 10, 20, peak=1.0, end=0.0) == pytest.approx(0.5)
    assert warmup_hold_cooldown(79, 100, 10, 20, peak=1.0, end=0.0) == 1.0
    assert warmup_hold_cooldown(85, 100, 10, 20, peak=1.0, end=0.1) == pytest.approx(0.1 + 0.9 * (1 - 0.5))
    assert warmup_hold_cooldown(100, 100, 10, 20, peak=1.0, end=0.1) == pytest.approx(0.1)
    cfg = load_config("dino_fmnist", {"optim.lr_decay": "cooldown", "optim.cooldown_fraction": 0.25}).optim
    optimizer = build_optimizer(parameter_groups(nn.Linear(4, 2), exclude_bias_norm=True), cfg, torch.device("cpu"))
    peak = 1e-3
    lrs = [apply_schedules(optimizer, cfg, Clock(step, 200, 20, 10), peak)[0] for step in range(200)]
    assert lrs[20:150] == pytest.approx([peak] * 130)  # held after the warm-up (one epoch of 20 steps)
    tail = lrs[150:]  # the last quarter: strictly falling towards min_lr
    assert all(a > b for a, b in zip(tail, tail[1:])) and tail[-1] < 0.2 * peak
    with pytest.raises(UserError, match="cooldown_fraction must lie in"):
        load_config("dino_fmnist", {"optim.cooldown_fraction": 0.0})


def test_lr_scaling_rules():
    cfg = load_config("dino_fmnist").optim
    assert scaled_lr(cfg, 512) == pytest.approx(cfg.lr * 2)
    cfg.lr_scaling, cfg.lr = "sqrt", 0.075
    assert scaled_lr(cfg, 4096) == pytest.approx(0.075 * 64)


def test_per_parameter_clipping_clips_each_tensor_separately():
    cfg = load_config("dino_fmnist").optim  # clip_grad 3.0, per_param
    model = nn.Linear(2, 2)
    model.weight.grad = torch.full((2, 2), 10.0)  # norm 20
    model.bias.grad = torch.tensor([0.3, 0.4])  # norm 0.5: untouched
    clip_gradients(model, cfg)
    assert model.weight.grad.norm().item() == pytest.approx(3.0, rel=1e-4)
    assert torch.allclose(model.bias.grad, torch.tensor([0.3, 0.4]))


# --------------------------------------------------------------------------- sampler


def test_sampler_resumes_mid_epoch_with_the_same_order():
    sampler = ResumableSampler(size=50, batch_size=4, seed=3)
    sampler.set_position(epoch=2)
    full = list(sampler)
    sampler.set_position(epoch=2, start_batch=5)
    assert list(sampler) == full[20:]
    sampler.set_position(epoch=3)
    assert [i for i, _ in sampler] != [i for i, _ in full]


def test_sampler_shards_cover_the_global_batch():
    single = ResumableSampler(size=64, batch_size=8, seed=0)
    ranks = [ResumableSampler(size=64, batch_size=4, seed=0, rank=r, world_size=2) for r in range(2)]
    first_global = {i for i, _ in list(single)[:8]}
    first_sharded = {i for s in ranks for i, _ in list(s)[:4]}
    assert first_global == first_sharded


def test_every_valid_seed_draws_views():
    """A view's seed stays a 64-bit generator seed up to the largest run seed (it overflowed from ~184,466),
    and the seeds of small runs are the ones they always were."""
    largest = SEED_LIMIT - 1
    sampler = ResumableSampler(size=10, batch_size=2, seed=largest)
    sampler.set_position(epoch=7)
    seeds = [seed for _, seed in sampler]
    assert len(set(seeds)) == 10
    for seed in seeds:
        torch.Generator().manual_seed(seed)
    assert sample_seed(3, 2, 5) == (3 * 1_000_003 + 2) * 100_000_007 + 5


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="VmHWM is read from Linux's /proc")
def test_a_run_started_by_a_large_process_reports_its_own_peak_memory() -> None:
    """The benchmarks' peak-RSS column: getrusage's ru_maxrss of a child keeps its parent's peak across exec,
    peak_rss_bytes does not."""
    parent_bytes = 800 * 2**20
    held = torch.ones(parent_bytes // 4)  # the parent's resident memory, as a benchmark's evaluation features
    code = "from sslzoo.runtime import peak_rss_bytes; print(peak_rss_bytes())"
    own = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert held.sum() > 0 and 0 < own < parent_bytes  # the child's own: Python, torch and sslzoo imported
