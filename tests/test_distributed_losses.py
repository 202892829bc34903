"""Losses across processes: 2 CPU processes (gloo) must give what 1 process gives on the concatenated batch.

- SimCLR's NT-Xent (ours and lightly's): the loss and the gradients w.r.t. the
  projections, and the parameter gradients of a projection under DDP. A plain
  ``all_gather`` (negative control) gives the same loss but wrong gradients.
- DINO's centre: ``batch_center`` + ``update_center`` use the global teacher mean.

All processes run once (spawning costs seconds); each rank saves what it computed
and the assertions run here, against single-process computations.
"""

from __future__ import annotations

import socket
from datetime import timedelta
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from lightly.loss import NTXentLoss as LightlyNTXentLoss
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

import sslzoo.losses.ntxent as ntxent
from sslzoo.distributed import gather_no_grad
from sslzoo.losses.dino import DINOLoss
from sslzoo.losses.ntxent import NTXentLoss

WORLD = 2
N = 4  # images per process
DIM, PROJ = 6, 5  # features -> projections (DDP case)
TAU = 0.2
K = 7  # DINO output dimension
CENTER_MOMENTUM = 0.9
DINO_ROWS = (3, 5)  # unequal per-process teacher batches: the global mean must weigh rows, not processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_inputs() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "z_a": torch.randn(WORLD * N, PROJ, generator=g),
        "z_b": torch.randn(WORLD * N, PROJ, generator=g),
        "h": torch.randn(2 * WORLD * N, DIM, generator=g),  # backbone features: view a of all, then view b of all
        "teacher": torch.randn(sum(DINO_ROWS), K, generator=g),
        "center": torch.randn(1, K, generator=g),
    }


def projection() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(DIM, PROJ)


def contrastive(loss_fn: nn.Module, z_a: Tensor, z_b: Tensor) -> dict[str, Tensor]:
    """The loss and its gradients w.r.t. (copies of) ``z_a`` and ``z_b``."""
    z_a, z_b = z_a.clone().requires_grad_(True), z_b.clone().requires_grad_(True)
    loss = loss_fn(z_a, z_b)
    loss.backward()
    result = {"loss": loss.detach(), "grad_a": z_a.grad, "grad_b": z_b.grad}
    if isinstance(loss_fn, NTXentLoss):
        result["accuracy"] = loss_fn.positive_accuracy
    return result


def worker(rank: int, port: int, inputs: dict[str, Tensor], out_dir: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60)
    )
    try:
        mine = slice(rank * N, (rank + 1) * N)
        z_a, z_b = inputs["z_a"][mine], inputs["z_b"][mine]
        results = {
            "ours": contrastive(NTXentLoss(TAU), z_a, z_b),
            "lightly": contrastive(LightlyNTXentLoss(TAU, gather_distributed=True), z_a, z_b),
        }
        with mock.patch.object(ntxent, "gather_with_grad", gather_no_grad):  # a port that used all_gather
            results["plain_all_gather"] = contrastive(NTXentLoss(TAU), z_a, z_b)

        # The trainer's setting: DDP averages the parameter gradients over processes.
        model = DistributedDataParallel(projection())
        h_a, h_b = inputs["h"][: WORLD * N][mine], inputs["h"][WORLD * N :][mine]
        NTXentLoss(TAU)(*model(torch.cat([h_a, h_b])).chunk(2)).backward()
        results["ddp_weight_grad"] = model.module.weight.grad

        dino = DINOLoss(K, student_temp=0.1, center_momentum=CENTER_MOMENTUM)
        dino.center.copy_(inputs["center"])
        start = sum(DINO_ROWS[:rank])
        dino.update_center(dino.batch_center(inputs["teacher"][start : start + DINO_ROWS[rank]]))
        results["center"] = dino.center
        torch.save(results, out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Tensor], list[dict]]:
    out_dir = tmp_path_factory.mktemp("ranks")
    inputs = make_inputs()
    mp.spawn(worker, args=(free_port(), inputs, out_dir), nprocs=WORLD, join=True)
    return inputs, [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def anchor_losses(z_a: Tensor, z_b: Tensor, tau: float) -> Tensor:
    """Per-anchor NT-Xent over one batch, directly from Eq. 1 (order: views a, then views b)."""
    z = F.normalize(torch.cat([z_a, z_b]), dim=1)
    similarity = z @ z.T / tau
    n = len(z_a)
    positive = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    others = ~torch.eye(2 * n, dtype=torch.bool)
    denominator = torch.logsumexp(similarity.masked_fill(~others, float("-inf")), dim=1)
    return denominator - similarity[torch.arange(2 * n), positive]


@pytest.mark.parametrize("implementation", ["ours", "lightly"])
def test_nt_xent_across_processes_equals_one_process(runs, implementation: str) -> None:
    inputs, ranks = runs
    single = contrastive(NTXentLoss(TAU), inputs["z_a"], inputs["z_b"])
    per_anchor = anchor_losses(inputs["z_a"], inputs["z_b"], TAU)
    for rank, result in enumerate(ranks):
        got = result[implementation]
        mine = slice(rank * N, (rank + 1) * N)
        # each process: the mean over its own anchors, each against all 2N-1 global candidates
        anchors = torch.cat([per_anchor[: WORLD * N][mine], per_anchor[WORLD * N :][mine]])
        torch.testing.assert_close(got["loss"], anchors.mean())
        # the processes' gradients are summed across processes (lightly's GatherLayer all-reduces
        # them in backward) and DDP divides by the world size: together, the one-process gradient
        torch.testing.assert_close(got["grad_a"] / WORLD, single["grad_a"][mine])
        torch.testing.assert_close(got["grad_b"] / WORLD, single["grad_b"][mine])
    torch.testing.assert_close(torch.stack([r[implementation]["loss"] for r in ranks]).mean(), single["loss"])
    if implementation == "ours":
        torch.testing.assert_close(torch.stack([r["ours"]["accuracy"] for r in ranks]).mean(), single["accuracy"])


def test_ddp_parameter_gradients_equal_one_process(runs) -> None:
    inputs, ranks = runs
    model = projection()
    NTXentLoss(TAU)(*model(inputs["h"]).chunk(2)).backward()
    for result in ranks:
        torch.testing.assert_close(result["ddp_weight_grad"], model.weight.grad)


def test_plain_all_gather_gives_the_loss_but_wrong_gradients(runs) -> None:
    """Negative control: without gradient through the gathered negatives the loss is
    unchanged, so nothing looks wrong, yet the gradients are not the paper's."""
    inputs, ranks = runs
    single = contrastive(NTXentLoss(TAU), inputs["z_a"], inputs["z_b"])
    for rank, result in enumerate(ranks):
        mine = slice(rank * N, (rank + 1) * N)
        wrong, right = result["plain_all_gather"], result["ours"]
        torch.testing.assert_close(wrong["loss"], right["loss"])
        for key in ("grad_a", "grad_b"):
            expected = single[key][mine]
            error = (wrong[key] / WORLD - expected).norm() / expected.norm()
            assert error > 0.1, f"plain all_gather should not reproduce the one-process gradient ({key})"


def test_dino_center_uses_the_global_batch(runs) -> None:
    inputs, ranks = runs
    single = DINOLoss(K, student_temp=0.1, center_momentum=CENTER_MOMENTUM)
    single.center.copy_(inputs["center"])
    single.update_center(single.batch_center(inputs["teacher"]))
    expected = CENTER_MOMENTUM * inputs["center"] + (1 - CENTER_MOMENTUM) * inputs["teacher"].mean(0, keepdim=True)
    torch.testing.assert_close(single.center, expected)  # C <- m C + (1 - m) mean(t), Algorithm 1
    for rank, result in enumerate(ranks):
        torch.testing.assert_close(result["center"], single.center)
        start = sum(DINO_ROWS[:rank])
        local = CENTER_MOMENTUM * inputs["center"] + (1 - CENTER_MOMENTUM) * inputs["teacher"][
            start : start + DINO_ROWS[rank]
        ].mean(0, keepdim=True)
        assert not torch.allclose(result["center"], local)  # the all-reduce mattered
