"""MoCo v3: the loss against Eq. 1 (with its 2 tau scale) computed directly, the loss and
its gradients across two processes, and the ViT / ResNet options. The online/target
skeleton MoCo v3 shares with BYOL is tested in test_predictive.py."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from sslzoo.backbones import build_model, zero_init_residual
from sslzoo.build import build_method, check_method
from sslzoo.errors import UserError
from sslzoo.losses.mocov3 import ContrastiveLoss
from sslzoo.optim import parameter_groups
from sslzoo.recipes import load_config
from sslzoo.trainer import Trainer

TAU = 0.2


def direct_contrastive_loss(q: list[list[float]], k: list[list[float]], tau: float, offset: int = 0) -> float:
    """2 tau * mean_i -log( exp(q_i.k_{offset+i} / tau) / sum_j exp(q_i.k_j / tau) ), q and k L2-normalised."""

    def unit(v):
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v]

    q, k = [unit(v) for v in q], [unit(v) for v in k]
    total = 0.0
    for i, q_i in enumerate(q):
        logits = [sum(a * b for a, b in zip(q_i, k_j)) / tau for k_j in k]
        total += -(logits[offset + i] - math.log(sum(math.exp(x) for x in logits)))
    return 2 * tau * total / len(q)


def test_loss_matches_the_formula_with_its_2tau_scale():
    torch.manual_seed(0)
    q, k = torch.randn(5, 4), torch.randn(5, 4)
    for tau in (TAU, 1.0):
        want = direct_contrastive_loss(q.tolist(), k.tolist(), tau)
        assert ContrastiveLoss(tau)(q, k).item() == pytest.approx(want, rel=1e-5)


def test_keys_receive_no_gradient():
    q = torch.randn(4, 3, requires_grad=True)
    k = torch.randn(4, 3, requires_grad=True)
    ContrastiveLoss(TAU)(q, k).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None


# --------------------------------------------------------------------------- two processes

WORLD = 2
BATCH_PER_RANK = 4


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def data_parallel_worker(rank: int, port: int, x: torch.Tensor, keys: torch.Tensor, weight: torch.Tensor, out: str):
    """One rank: queries from a DDP-wrapped linear map of its slice, keys of its slice, the loss, backward."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            layer.weight.copy_(weight)
        model = nn.parallel.DistributedDataParallel(layer)
        part = slice(rank * BATCH_PER_RANK, (rank + 1) * BATCH_PER_RANK)
        loss = ContrastiveLoss(TAU)(model(x[part]), keys[part])
        loss.backward()  # DDP averages the gradients over the ranks
        torch.save({"loss": loss.detach(), "grad": layer.weight.grad}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_give_the_loss_and_gradients_of_one_process_on_the_global_batch(tmp_path):
    """Keys gathered without gradient, positives at rank * B + i: the mean of the ranks' losses and the
    DDP-averaged gradients equal one process's on the concatenated batch."""
    torch.manual_seed(0)
    x = torch.randn(WORLD * BATCH_PER_RANK, 6)
    keys = torch.randn(WORLD * BATCH_PER_RANK, 5)
    weight = torch.randn(5, 6)
    mp.spawn(data_parallel_worker, args=(free_port(), x, keys, weight, str(tmp_path)), nprocs=WORLD)

    single_weight = weight.clone().requires_grad_(True)
    single_loss = ContrastiveLoss(TAU)(x @ single_weight.T, keys)
    single_loss.backward()
    want_loss = direct_contrastive_loss((x @ weight.T).tolist(), keys.tolist(), TAU)
    assert single_loss.item() == pytest.approx(want_loss, rel=1e-5)

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert sum(r["loss"].item() for r in ranks) / WORLD == pytest.approx(single_loss.item(), rel=1e-5)
    for r in ranks:
        torch.testing.assert_close(r["grad"], single_weight.grad, rtol=1e-5, atol=1e-6)
    assert ranks[0]["loss"].item() != pytest.approx(ranks[1]["loss"].item(), rel=1e-3)  # the ranks did differ


# --------------------------------------------------------------------------- ViT and ResNet options


def test_vit_small_has_12_heads_and_mocov3_patch_init():
    model = build_model("vit_small_12h_patch16_224")
    assert model.embed_dim == 384 and len(model.blocks) == 12
    assert {block.attn.num_heads for block in model.blocks} == {12}
    bound = math.sqrt(6 / (3 * 16 * 16 + 384))  # vits.py: xavier-uniform over a flattened patch
    weight = model.patch_embed.proj.weight
    assert weight.abs().max() <= bound and weight.abs().max() > 0.9 * bound
    assert torch.count_nonzero(model.patch_embed.proj.bias) == 0


def vits_sincos(grid: int, dim: int) -> torch.Tensor:
    """MoCo v3's table written out: [CLS] zeros, then per patch (row r, column c) and
    w_d = 10000^(-d / (dim/4)): [sin(r w), cos(r w), sin(c w), cos(c w)]."""
    quarter = dim // 4
    rows = []
    for r in range(grid):
        for c in range(grid):
            w = [10000 ** (-d / quarter) for d in range(quarter)]
            rows.append(
                [math.sin(r * x) for x in w]
                + [math.cos(r * x) for x in w]
                + [math.sin(c * x) for x in w]
                + [math.cos(c * x) for x in w]
            )
    return torch.tensor([[0.0] * dim, *rows])


# The ViT options on a patchify ViT (mocov3_fmnist's conv stem trains: its recipe sets freeze_patch_embed false).
PATCH_VIT = {"model.backbone": "vit_micro_patch4_28", "method.freeze_patch_embed": True}


def test_fixed_sincos_embedding_and_frozen_patch_projection(tiny_config):
    cfg = tiny_config("mocov3_fmnist", **PATCH_VIT)
    torch.manual_seed(0)
    method = build_method(cfg)
    vit = method.online.backbone.model
    grid = vit.patch_embed.grid_size[0]
    torch.testing.assert_close(vit.pos_embed[0], vits_sincos(grid, vit.embed_dim), atol=1e-5, rtol=0)
    frozen = {"pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"}
    assert {n for n, p in vit.named_parameters() if not p.requires_grad} == frozen
    optimised = {id(p) for group in parameter_groups(method, cfg.optim.exclude_bias_norm) for p in group["params"]}
    assert not any(id(p) in optimised for p in (vit.pos_embed, *vit.patch_embed.parameters()))


def test_frozen_parts_stay_fixed_while_the_rest_trains(tiny_config):
    trainer = Trainer(
        tiny_config("mocov3_fmnist", **PATCH_VIT, **{"method.proj_hidden_dim": 64, "method.pred_hidden_dim": 64})
    )
    vit = trainer.method.online.backbone.model
    start = {k: v.clone() for k, v in vit.state_dict().items()}
    trainer.fit()
    end = vit.state_dict()
    for key in ("pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"):
        assert torch.equal(end[key], start[key]), key
    assert not torch.equal(end["blocks.0.attn.qkv.weight"], start["blocks.0.attn.qkv.weight"])


def test_vit_options_are_refused_for_resnets_and_resnet_options_for_vits():
    for key in ("sincos_pos_embed", "freeze_patch_embed"):
        cfg = load_config("mocov3_r50", {f"method.{key}": True})
        with pytest.raises(UserError, match=key):
            check_method(cfg)
    cfg = load_config("mocov3_vits16", {"method.zero_init_residual": True})
    with pytest.raises(UserError, match="zero_init_residual"):
        check_method(cfg)


def test_zero_init_residual_makes_every_block_start_as_the_identity():
    for name, last_bn in (("resnet18", "bn2"), ("resnet50", "bn3")):
        model = build_model(name)
        zero_init_residual(model)
        blocks = [m for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for m in layer]
        assert all(torch.count_nonzero(getattr(block, last_bn).weight) == 0 for block in blocks)


@pytest.mark.parametrize("recipe", ["mocov3_vits16", "mocov3_r50", "mocov3_fmnist"])
def test_recipes_validate(recipe):
    cfg = load_config(recipe)
    check_method(cfg)
    vit = cfg.model.backbone.startswith("vit")
    assert cfg.method.proj_layers == (3 if vit else 2)  # builder.py: 3-layer projector for ViTs, 2 for ResNets
    assert cfg.method.pred_last_bn == vit and cfg.method.proj_last_bn
