"""DINOv2: Sinkhorn-Knopp, KoLeo and the weighted iBOT loss against their formulas; masks, lr scales, the step."""

from __future__ import annotations

import math
import random
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from lightly.loss.swav_loss import sinkhorn

from sslzoo.build import build_method, check_method
from sslzoo.errors import UserError
from sslzoo.losses.dino import DINOLoss
from sslzoo.losses.dinov2 import koleo, sinkhorn_knopp
from sslzoo.losses.ibot import MaskedPatchLoss
from sslzoo.optim import parameter_groups
from sslzoo.schedules import Clock

SMALL_HEADS = {
    "method.out_dim": 64,
    "method.proj_hidden_dim": 32,
    "method.bottleneck_dim": 16,
    "method.ibot_out_dim": 48,
    "method.ibot_proj_hidden_dim": 24,
    "method.ibot_bottleneck_dim": 8,
    "model.drop_path": 0.0,
}
CLOCK = Clock(step=0, total_steps=100, steps_per_epoch=10, epochs=10)


def make_dinov2(tiny_config, **overrides):
    return build_method(tiny_config("dinov2_fmnist", **{**SMALL_HEADS, **overrides}))


def fmnist_views(batch: int = 6, n_local: int = 2) -> list[torch.Tensor]:
    return [torch.randn(batch, 1, 28, 28) for _ in range(2)] + [torch.randn(batch, 1, 12, 12) for _ in range(n_local)]


# --------------------------------------------------------------------------- Sinkhorn-Knopp


def official_sinkhorn_knopp(t: torch.Tensor, temp: float, iterations: int) -> torch.Tensor:
    """dino_clstoken_loss.py sinkhorn_knopp_teacher on one process, step by step, in float64."""
    q = torch.exp(t.double() / temp).t()
    k, b = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).t()


def test_sinkhorn_knopp_matches_the_official_algorithm():
    torch.manual_seed(0)
    t = torch.randn(12, 7)
    got = sinkhorn_knopp(t, teacher_temp=0.5, iterations=3)
    want = official_sinkhorn_knopp(t, 0.5, 3)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-7)
    assert torch.allclose(got.sum(dim=1), torch.ones(12))  # each sample's target is a distribution
    # After 3 iterations the prototypes are closer to balanced (B/K each) than the softmax leaves them.
    softmax = F.softmax(t / 0.5, dim=1).sum(0)
    assert (got.sum(0) - 12 / 7).abs().max() < 0.5 * (softmax - 12 / 7).abs().max()


def test_sinkhorn_knopp_in_bf16_is_computed_in_fp32():
    t = torch.randn(8, 5)
    got = sinkhorn_knopp(t.bfloat16(), 0.07, 3)
    assert got.dtype == torch.float32 and torch.allclose(got, sinkhorn_knopp(t.bfloat16().float(), 0.07, 3))


ROWS = (3, 6)  # unequal per-process batches, as the masked patches of two GPUs


def sinkhorn_worker(rank: int, port: int, t: torch.Tensor, out_dir: Path) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=timedelta(seconds=60)
    )
    try:
        start = sum(ROWS[:rank])
        rows = t[start : start + ROWS[rank]]
        torch.save(sinkhorn_knopp(rows, 0.3, 3), out_dir / f"rank{rank}.pt")
        torch.save(sinkhorn(rows, 3, 0.3, gather_distributed=True), out_dir / f"lightly{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_sinkhorn_knopp_over_two_processes_balances_the_global_batch(tmp_path: Path):
    """Two processes with 3 and 6 rows give the rows of one process's Sinkhorn-Knopp over all 9;
    lightly's ``sinkhorn`` (B = local rows x world size) does not (negative control)."""
    torch.manual_seed(1)
    t = torch.randn(sum(ROWS), 5)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(sinkhorn_worker, args=(port, t, tmp_path), nprocs=2, join=True)
    got = torch.cat([torch.load(tmp_path / f"rank{r}.pt") for r in range(2)])
    want = official_sinkhorn_knopp(t, 0.3, 3)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-7)
    lightly = torch.cat([torch.load(tmp_path / f"lightly{r}.pt") for r in range(2)])
    assert (lightly.double() - want).abs().max() > 0.01
    torch.testing.assert_close(sinkhorn(t, 3, 0.3).double(), want, rtol=1e-5, atol=1e-7)  # one process: equal


# --------------------------------------------------------------------------- KoLeo


def direct_koleo(x: list[list[float]], eps: float = 1e-8) -> float:
    """-1/n sum_i log(min_{j != i} ||x_i - x_j|| + eps) on L2-normalised rows, by loops."""
    unit = [[v / math.sqrt(sum(w * w for w in row)) for v in row] for row in x]
    total = 0.0
    for i, a in enumerate(unit):
        nearest = min(math.dist(a, b) for j, b in enumerate(unit) if j != i)
        total += -math.log(nearest + eps)
    return total / len(unit)


def test_koleo_matches_the_formula():
    torch.manual_seed(2)
    x = torch.randn(10, 6) * torch.rand(10, 1) * 5  # the norms do not matter
    assert koleo(x).item() == pytest.approx(direct_koleo(x.tolist()), rel=1e-5)


def test_koleo_pushes_nearest_neighbours_apart():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.05], [0.0, 1.0], [-1.0, 0.0]], requires_grad=True)
    loss = koleo(x)
    loss.backward()
    assert loss.item() == pytest.approx(direct_koleo(x.tolist()), rel=1e-5)
    assert x.grad[0, 1] > 0 and x.grad[1, 1] < 0  # descent moves the two close points apart


def test_koleo_under_bf16_autocast_is_fp32():
    x = torch.randn(8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = koleo(x)
    assert got.dtype == torch.float32 and got.item() == pytest.approx(direct_koleo(x.tolist()), rel=1e-5)


# --------------------------------------------------------------------------- the weighted iBOT loss


def test_patch_loss_weighs_each_masked_patch_by_its_crops_mask_count():
    """dinov2 ibot_patch_loss.py forward_masked: -sum_i w_i sum_k P_t log P_s / crops, w_i = 1 / |m| of i's crop."""
    torch.manual_seed(3)
    crops, patches, dim, tau_s = 5, 6, 4, 0.1
    masks = torch.rand(crops, patches) < 0.5
    masks[0], masks[1] = False, True  # a crop without any masked patch, and a fully masked one
    count = int(masks.sum())
    student = torch.randn(count, dim, dtype=torch.float64)
    targets = torch.softmax(torch.randn(count, dim, dtype=torch.float64), dim=-1)
    got = MaskedPatchLoss(dim, tau_s, 0.9).cross_entropy(student, targets, masks)
    total, row = 0.0, 0
    for crop in range(crops):
        for i in range(patches):
            if masks[crop, i]:
                s = student[row].tolist()
                log_z = math.log(sum(math.exp(v / tau_s) for v in s))
                ce = -sum(p * (v / tau_s - log_z) for p, v in zip(targets[row].tolist(), s))
                total += ce / int(masks[crop].sum())
                row += 1
    assert got.item() == pytest.approx(total / crops, rel=1e-6)  # log-softmax in fp32


def test_dino_cross_entropy_from_targets_is_the_centred_loss():
    torch.manual_seed(4)
    loss = DINOLoss(6, 0.1, 0.9)
    loss.center.normal_()
    student, teacher = list(torch.randn(4, 3, 6).unbind()), list(torch.randn(2, 3, 6).unbind())
    targets = [loss.teacher_probs(t, 0.05) for t in teacher]
    assert loss.cross_entropy(student, targets).item() == loss(student, teacher, 0.05).item()


# --------------------------------------------------------------------------- masks


def test_masks_follow_dinov2s_collate(tiny_config):
    """At most int(p * crops) crops are masked, each with at most int(N * max) patches, the others not at all;
    the ratios are stratified, so the crops' mask counts spread over [0.1 N, 0.5 N]."""
    method = make_dinov2(tiny_config)
    random.seed(5)
    for _ in range(20):
        counts = method.block_masks(torch.randn(16, 1, 28, 28)).flatten(1).sum(1)
        assert 5 <= int((counts > 0).sum()) <= 8 and counts.max() <= int(49 * 0.5)
        assert counts.max() >= int(49 * 0.4)  # the top stratum draws a ratio in [0.45, 0.5]


def test_method_masks_are_restored_with_pythons_rng(tiny_config):
    method = make_dinov2(tiny_config)
    crops = torch.randn(16, 1, 28, 28)
    random.seed(7)
    first = method.block_masks(crops)
    random.seed(7)
    assert torch.equal(first, method.block_masks(crops)) and first.shape == (16, 7, 7)


# --------------------------------------------------------------------------- the method


def fixed_masks(crops: int) -> torch.Tensor:
    masks = torch.zeros(crops, 7, 7, dtype=torch.bool)
    for crop in range(0, crops, 2):  # every other crop masked, one block each
        top, left = crop % 4, (2 * crop) % 5
        masks[crop, top : top + 2 + crop % 2, left : left + 3] = True
    return masks


@pytest.mark.parametrize("centering", ["sinkhorn_knopp", "centering"])
def test_step_is_the_weighted_sum_of_the_three_losses(tiny_config, centering):
    torch.manual_seed(6)
    weights = {"method.dino_loss_weight": 0.7, "method.koleo_loss_weight": 0.3, "method.ibot_loss_weight": 2.0}
    method = make_dinov2(tiny_config, **weights, **{"method.centering": centering})
    method.loss.center.normal_()
    method.patch_loss.center.normal_()
    views, masks = fmnist_views(), fixed_masks(12)
    method.block_masks = lambda crops: masks.clone()
    out = method(views, CLOCK)

    tau_s, tau_t = 0.1, method.distillation.teacher_temp(CLOCK)
    gs, gt, flat = method.student, method.teacher.net, masks.flatten(1)
    with torch.no_grad():
        t = gt.backbone.forward_tokens(torch.cat(views[:2]))  # unmasked
        s = gs.backbone.forward_tokens(torch.cat(views[:2]), masks, method.mask_token)
        t_cls, t_patch = gt.dino_head(t[:, 0]), gt.ibot_head(t[:, 1:][flat])
        s_cls = gs.dino_head(torch.cat([s[:, 0], gs.backbone(torch.cat(views[2:]))]))
        s_patch = gs.ibot_head(s[:, 1:][flat])
    if centering == "sinkhorn_knopp":
        p_cls, p_patch = official_sinkhorn_knopp(t_cls, tau_t, 3), official_sinkhorn_knopp(t_patch, tau_t, 3)
    else:
        p_cls = torch.softmax((t_cls - method.loss.center) / tau_t, -1)
        p_patch = torch.softmax((t_patch - method.patch_loss.center) / tau_t, -1)
    log_s = torch.log_softmax(s_cls / tau_s, -1).chunk(4)
    pairs = [-(p * log_s[j]).sum(-1).mean() for i, p in enumerate(p_cls.chunk(2)) for j in range(4) if j != i]
    want_dino = sum(pairs) / len(pairs)
    ce = -(p_patch * torch.log_softmax(s_patch / tau_s, -1)).sum(-1)
    weight = (1 / flat.sum(1).clamp_min(1))[flat.nonzero()[:, 0]]
    want_ibot = (ce * weight).sum() / len(flat)
    want_koleo = sum(direct_koleo(x.tolist()) for x in s[:, 0].chunk(2))

    assert out.logs["loss_dino"] == pytest.approx(want_dino.item(), rel=1e-4)
    assert out.logs["loss_ibot"] == pytest.approx(want_ibot.item(), rel=1e-4)
    assert out.logs["loss_koleo"] == pytest.approx(want_koleo, rel=1e-4)
    want = 0.7 * want_dino.item() + 0.3 * want_koleo + 2.0 * want_ibot.item()
    assert out.loss.item() == pytest.approx(want, rel=1e-4)
    pending = (method.loss.pending_center, method.patch_loss.pending_center)
    if centering == "centering":  # C and C' move towards the teacher means of this step (masked patches for C')
        assert torch.allclose(pending[0], t_cls.mean(0), atol=1e-6)
        assert torch.allclose(pending[1], t_patch.mean(0), atol=1e-6)
    else:
        assert pending == (None, None)


def test_heads_are_separate_or_shared(tiny_config):
    method = make_dinov2(tiny_config)
    assert method.student.ibot_head is not method.student.dino_head
    assert method.student.ibot_head.last_layer.out_features == 48
    assert len(method.prototypes()) == 4  # weight_g and weight_v of both prototype layers
    shared = make_dinov2(tiny_config, **{"method.ibot_separate_head": False})
    assert shared.student.ibot_head is shared.student.dino_head and len(shared.prototypes()) == 2
    out = shared(fmnist_views(), CLOCK)
    assert torch.isfinite(out.loss)


def official_lr_multiplier(name: str, depth: int, rate: float, patch_mult: float) -> float:
    """param_groups.py get_vit_lr_decay_rate and patch_embed_lr_mult for a backbone parameter's name."""
    layer = depth + 1
    if any(key in name for key in ("pos_embed", "patch_embed", "mask_token", "cls_token")):
        layer = 0
    elif "blocks." in name:
        layer = int(name.split("blocks.")[1].split(".")[0]) + 1
    scale = rate ** (depth + 1 - layer)
    return scale * patch_mult if "patch_embed" in name else scale


def test_layerwise_lr_decay_matches_the_official_rule(tiny_config):
    method = make_dinov2(tiny_config, **{"method.layerwise_decay": 0.8, "method.patch_embed_lr_mult": 0.2})
    scale_of = {}
    for group in parameter_groups(method, True, method.lr_scales()):
        for param in group["params"]:
            scale_of[id(param)] = group["lr_scale"]
    depth = len(method.student.backbone.model.blocks)  # the recipe's backbone
    checked = 0
    for name, param in method.named_parameters():
        if not param.requires_grad:
            continue
        want = 1.0  # the heads
        if name.startswith("student.backbone.") or name == "mask_token":
            want = official_lr_multiplier(name, depth, 0.8, 0.2)
        assert scale_of[id(param)] == pytest.approx(want), name
        checked += want != 1.0
    assert checked >= 10  # blocks, patch embedding, tokens


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"model.backbone": "resnet18"}, "model.backbone"),
        ({"method.mask_ratio_min_max": [0.5, 0.1]}, "method.mask_ratio_min_max"),
        ({"method.mask_ratio_min_max": [0.1]}, "method.mask_ratio_min_max"),
        ({"method.mask_sample_probability": 1.5}, "method.mask_sample_probability"),
        ({"method.sinkhorn_iterations": 0}, "method.sinkhorn_iterations"),
        (
            {"augment.global_crops": 3, "augment.blur_p": [1, 0.1, 0.1], "augment.solarize_p": [0, 0.2, 0.2]},
            "augment.global_crops",
        ),
    ],
)
def test_refused_settings(tiny_config, overrides, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        check_method(tiny_config("dinov2_fmnist", **overrides))
