"""Data-parallel training equals single-process training on the same global batch.

Two gloo processes are started the way ``torchrun`` starts them (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT in the environment) and run
the real ``train.py`` for a few steps on per-process batch B; a single process
runs batch 2B. Rank r takes samples r, r + 2, ... of the global order and each
sample's crops are seeded by its index, so both runs see the same images and
crops; the gradients averaged by DDP (and the all-reduced DINO centre, the
globally synchronised BatchNorm statistics, the gathered SimCLR negatives,
SwAV's all-reduced Sinkhorn-Knopp sums and its queue) must then give the same
parameters.

SGD rather than AdamW: Adam's update does not change when every gradient is
scaled by the same factor, so it would hide gradients summed instead of
averaged across processes. No stochastic depth, since its masks are drawn per
process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sslzoo.config import RECIPES_DIR

REPO = Path(__file__).resolve().parents[1]
RECIPES = [
    "dino_fmnist",
    "simclr_fmnist",
    "mae_fmnist",
    "dinov2_fmnist",
    "simsiam_fmnist",
    "vicreg_fmnist",
    "swav_fmnist",
]
STEPS = 2  # the second step uses the EMA teacher, centre and BN statistics the first one updated
PER_RANK_BATCH = 8
TOLERANCE = 1e-5  # fp32 sums in a different order
METHOD_OVERRIDES = {  # small heads keep the short runs quick on 2 cores; VICReg's smaller step below
    "dino": {"method.out_dim": 256, "method.proj_hidden_dim": 256, "method.bottleneck_dim": 64},
    "simclr": {"method.proj_hidden_dim": 128},
    "mae": {"method.decoder_dim": 32, "method.decoder_depth": 1, "method.decoder_heads": 2},
    # DINOv2 without its two per-process parts: KoLeo's nearest neighbours are among each GPU's own images
    # (koleo_loss.py), and the masks are drawn per process (collate.py); its Sinkhorn-Knopp over the global
    # batch stays, and tests/test_dinov2.py checks it with unequal masked-patch counts per process.
    "dinov2": {
        "method.out_dim": 256,
        "method.proj_hidden_dim": 256,
        "method.bottleneck_dim": 64,
        "method.ibot_out_dim": 128,
        "method.ibot_proj_hidden_dim": 128,
        "method.koleo_loss_weight": 0.0,
        "method.mask_sample_probability": 0.0,
        "method.use_bn_in_head": False,  # no masked patch: the iBOT head's BN would see an empty batch
    },
    "simsiam": {"method.proj_hidden_dim": 128, "method.out_dim": 128, "method.pred_hidden_dim": 32},
    # variance, covariance: the global batch's. A smaller step: at lr 0.2 step 1 agrees to 1e-7 everywhere, but
    # step 2's update of the deep stem's convolutions differs by 2% while its block and head agree to 1e-7 (what
    # a pre-ReLU value landing on the other side of 0 would do); at 0.05 all agree to 1e-7, weights move > 2e-3.
    "vicreg": {"method.proj_hidden_dim": 128, "method.out_dim": 128, "optim.lr": 0.05},
    # SwAV: step 1 fills a queue of one global batch, step 2 uses it in Sinkhorn-Knopp and updates the prototypes
    "swav": {
        "method.proj_hidden_dim": 128,
        "method.queue_length": 2 * PER_RANK_BATCH,
        "method.epoch_queue_starts": 0,
        "method.freeze_prototypes_niters": 1,
    },
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def overrides(recipe: str, out_dir: Path, batch: int) -> list[str]:
    method = recipe.split("_")[0]
    values = {
        "trainer.out_dir": str(out_dir),
        "trainer.max_steps": STEPS,
        "trainer.checkpoint_every": STEPS,
        "trainer.log_every": 1,
        "trainer.device": "cpu",
        "trainer.precision": "fp32",
        "data.batch_size": batch,
        "data.num_workers": 0,
        "model.drop_path": 0.0,
        "optim.name": "sgd",
        "optim.lr": 0.2,  # x 16/256: the weights move ~1e-2, and a larger step amplifies rounding differences
        "optim.clip_grad": 0.0,
        "resume": "none",
        **METHOD_OVERRIDES[method],
    }
    return [f"recipe={recipe}", *(f"{k}={v}" for k, v in values.items())]


# One launch trains every recipe in turn, so that the processes import torch once.
WORKER = """
import json, sys
from sslzoo.arguments import parse_overrides
from sslzoo.recipes import load_config
from sslzoo.cli import train
for recipe, args in json.loads(sys.argv[1]):
    train(load_config(recipe, parse_overrides(args)))
"""


def launch(jobs: list[tuple[str, list[str]]], world_size: int) -> None:
    """Train ``jobs`` (recipe, overrides) in ``world_size`` processes started as torchrun starts them."""
    port = free_port()
    procs = []
    for rank in range(world_size):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", WORKER, json.dumps(jobs)],
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    for rank, proc in enumerate(procs):
        output, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, f"rank {rank} of {world_size} failed:\n{output[-3000:]}"


def final_state(out_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(out_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == STEPS
    return state["model"]


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Run folders of the two-process runs of every recipe that exists."""
    root = tmp_path_factory.mktemp("ddp")
    runs = {recipe: root / recipe for recipe in RECIPES if (RECIPES_DIR / f"{recipe}.yaml").exists()}
    launch([(recipe, overrides(recipe, out, PER_RANK_BATCH)[1:]) for recipe, out in runs.items()], world_size=2)
    return runs


def initial_weights(recipe: str, tmp_path: Path) -> dict[str, torch.Tensor]:
    """The trainable weights every run starts from (built with seed 0, as rank 0 builds them)."""
    from sslzoo.arguments import parse_overrides
    from sslzoo.build import build_method
    from sslzoo.recipes import load_config
    from sslzoo.runtime import seed_everything

    args = parse_overrides(overrides(recipe, tmp_path / "init", PER_RANK_BATCH)[1:])
    cfg = load_config(recipe, args)
    seed_everything(cfg.seed)
    method = build_method(cfg)
    return {name: p.detach().clone() for name, p in method.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("recipe", RECIPES)
def test_two_processes_match_one_process_on_the_global_batch(
    recipe: str, ddp_runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if recipe not in ddp_runs:
        pytest.skip(f"recipe {recipe} does not exist yet")
    from sslzoo.arguments import parse_overrides
    from sslzoo.cli import train
    from sslzoo.recipes import load_config

    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    args = overrides(recipe, tmp_path / "single", 2 * PER_RANK_BATCH)
    train(load_config(recipe, parse_overrides(args[1:])))
    single, double = final_state(tmp_path / "single"), final_state(ddp_runs[recipe])
    assert single.keys() == double.keys()
    for key, value in single.items():  # parameters, EMA targets, DINO's centre, BN statistics
        if value.is_floating_point():
            torch.testing.assert_close(double[key], value, rtol=TOLERANCE, atol=TOLERANCE, msg=key)
        else:
            assert torch.equal(value, double[key]), key
    start = initial_weights(recipe, tmp_path)
    moved = max((single[key] - value).abs().max().item() for key, value in start.items())
    assert moved > 100 * TOLERANCE, "the weights barely moved: the comparison would not see a wrong gradient"
