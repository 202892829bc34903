"""Block-wise masking (BEiT Algorithm 1, iBOT loader.py): shapes, ratios, contiguity, reproducibility."""

from __future__ import annotations

import random

import pytest
import torch
from lightly.models.utils import random_block_mask
from scipy import ndimage

from sslzoo.masking import BlockMasking, stratified_block_masks

# The ViT-S/16 run's masking (README --pred_ratio 0 0.3 --pred_ratio_var 0 0.2) on the fmnist 7x7 grid.
IBOT = BlockMasking(pred_ratio=[0.0, 0.3], pred_ratio_var=[0.0, 0.2], min_block=4, min_aspect=0.3, attempts=10)


def test_mask_shapes_and_type():
    masks = IBOT(5, 7, 9)
    assert masks.shape == (5, 7, 9)
    assert masks.dtype == torch.bool
    assert IBOT(0, 7, 7).shape == (0, 7, 7)


def test_ratio_draws_follow_the_vits16_recipe():
    """No mask with probability 1/2, otherwise a ratio uniform in [0.1, 0.5]."""
    rng = random.Random(0)
    ratios = torch.tensor([IBOT.draw_ratio(rng) for _ in range(4000)])
    masked = ratios[ratios > 0]
    assert 0.45 < (ratios == 0).float().mean().item() < 0.55  # +-6 standard deviations
    assert masked.min().item() >= 0.1
    assert masked.max().item() <= 0.5
    assert masked.mean().item() == pytest.approx(0.3, abs=0.012)  # U(0.1, 0.5): sd 0.115 / sqrt(~2000)


def test_masked_share_stays_within_the_ratio_bounds():
    torch.manual_seed(0)
    share = IBOT(2000, 7, 7).flatten(1).float().mean(1)
    assert share.max().item() <= 0.5
    assert 0.45 < (share == 0).float().mean().item() < 0.6  # a nonzero ratio can fail to place any block
    assert (share[share > 0] >= 1 / 49).all()


@pytest.mark.parametrize("side, min_block", [(7, 4), (14, 16)])
def test_masks_never_exceed_the_target_and_come_close(side, min_block):
    masking = BlockMasking([0.3], [0.0], min_block, 0.3, 10)
    rng = random.Random(1)
    target = 0.3 * side * side
    counts = torch.tensor([sum(map(sum, masking.block_mask(rng, side, side, target))) for _ in range(300)])
    assert counts.max().item() <= target
    assert counts.float().mean().item() > 0.9 * target


def test_a_single_block_is_a_rectangle():
    """Square blocks (aspect 1) of area 4 on a target of 4 patches: exactly one 2x2 block."""
    masking = BlockMasking([0.0], [0.0], min_block=4, min_aspect=1.0, attempts=10)
    rng = random.Random(2)
    for _ in range(50):
        mask = torch.tensor(masking.block_mask(rng, 7, 7, 4.0))
        rows, cols = mask.nonzero(as_tuple=True)
        box = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.shape == (2, 2) and box.all() and mask.sum() == 4


def test_blocks_are_contiguous_unlike_scattered_patches():
    """Masks made of blocks have few connected regions; the same number of random patches has many."""
    masking = BlockMasking([0.3], [0.0], 16, 0.3, 10)
    torch.manual_seed(3)
    masks = masking(300, 14, 14)
    block_regions, random_regions = [], []
    for mask in masks:
        block_regions.append(ndimage.label(mask.numpy())[1])
        scattered = torch.zeros(14 * 14, dtype=torch.bool)
        scattered[torch.randperm(14 * 14)[: int(mask.sum())]] = True
        random_regions.append(ndimage.label(scattered.view(14, 14).numpy())[1])
    assert sum(block_regions) / len(block_regions) < 2.0
    assert sum(random_regions) > 5 * sum(block_regions)


def test_masks_are_a_function_of_the_torch_rng():
    """The trainer restores the torch RNG on resume, so the same state gives the same masks."""
    torch.manual_seed(4)
    first = IBOT(64, 7, 7)
    torch.manual_seed(4)
    again = IBOT(64, 7, 7)
    torch.manual_seed(5)
    other = IBOT(64, 7, 7)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


# --------------------------------------------------------------------------- DINOv2's collate


def test_stratified_masks_are_lightlys_draw_for_draw_on_the_7x7_grid():
    random.seed(3)
    ours = stratified_block_masks(16, 7, 7, 0.5, (0.1, 0.5), torch.device("cpu"))
    random.seed(3)
    assert torch.equal(ours, random_block_mask((16, 7, 7), 0.5, 0.1, 0.5))


@pytest.mark.parametrize("side, low", [(5, 0.1), (7, 0.0), (3, 0.1)])
def test_stratified_masks_on_targets_under_the_smallest_block(side, low):
    """Targets of fewer than 4 patches (lightly's collate raises on them) get masks of at most the target."""
    random.seed(4)
    for _ in range(30):
        counts = stratified_block_masks(16, side, side, 0.5, (low, 0.5), torch.device("cpu")).flatten(1).sum(1)
        assert counts.max() <= int(side * side * 0.5) and int((counts > 0).sum()) <= 8
    assert counts.max() > 0


@pytest.mark.parametrize("side, block", [(9, 3), (7, 2), (5, 1)])
def test_the_default_minimum_block_is_ibots_rule(side, block):
    """min_block None: loader.py's (min(H, W) // 3) ** 2, so square blocks (aspect 1) on a target of that area are
    exactly one block of side min(H, W) // 3."""
    masking = BlockMasking([0.0], [0.0], min_block=None, min_aspect=1.0, attempts=10)
    rng = random.Random(3)
    for _ in range(20):
        mask = torch.tensor(masking.block_mask(rng, side, side, float(block * block)))
        rows, cols = mask.nonzero(as_tuple=True)
        assert int(mask.sum()) == block * block
        assert int(rows.max() - rows.min()) + 1 == block and int(cols.max() - cols.min()) + 1 == block
