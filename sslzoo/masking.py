"""Masks of patch grids: MAE's random masking, and BEiT/iBOT's block-wise masking.

:func:`random_masking` (MAE §3, models_mae.py ``random_masking``): per image, the patches are
shuffled by sorting uniform noise and the first int((1 - r) N) are kept; the others are masked.

Block-wise masking (BEiT §2.5 and Algorithm 1; iBOT §3.3, loader.py ImageFolderMask):

Each crop draws its own prediction ratio r: one of ``pred_ratio`` chosen
uniformly, widened to U(r - var, r + var) by its ``pred_ratio_var`` (iBOT's
ViT-S/16 run: ``0 0.3`` / ``0 0.2``, i.e. no mask with probability 1/2, else
r ~ U(0.1, 0.5)). Rectangular blocks are then added until r * H * W patches
are masked: each block has a target area drawn from U(min_block, room left) (by default iBOT's
(min(H, W) // 3) ** 2 of the crop's grid),
a log-uniform aspect ratio in [a, 1/a], a uniform position, and is kept only
if it adds between 1 and "room left" new patches; after ``attempts`` failed
draws the mask is returned as it is.

Why not lightly's ``random_block_mask``: it follows DINOv2's collate (exactly a
fixed share of the batch masked, ratios spread over the batch by a linspace),
not iBOT's independent draw per crop, and its per-image helper rounds the
target down to an integer (iBOT keeps r * H * W real, which changes the target
area distribution) and draws from Python's global ``random``. Here every mask
is a function of the torch RNG (one seed drawn per batch), which the trainer
restores on resume.

:func:`stratified_block_masks` is DINOv2's collate (collate.py and masking.py MaskingGenerator), for DINOv2,
through lightly's per-image ``random_block_mask_image`` and Python's ``random`` (which checkpoints restore).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.distributed as dist
from lightly.models.utils import random_block_mask_image
from torch import Tensor

from sslzoo import distributed


def random_masking(batch: int, num_patches: int, ratio: float, device: torch.device) -> tuple[Tensor, Tensor]:
    """MAE's per-image random masking: (keep, mask), the kept patches' indices (B, int((1 - r) N)) in the
    order of the shuffle, and the mask (B, N), True where a patch is removed. Drawn from the torch RNG.

    As models_mae.py ``random_masking`` (and lightly's ``random_token_mask``, which cannot take the noise):
    the patches of each image are sorted by uniform noise and the first ones kept. MAE's ``ids_restore``
    is not needed: the decoder puts the kept tokens back at ``keep`` (a scatter). Under DDP, rank 0 draws
    the noise of the whole global batch and each process takes its images' rows (rank r holds rows
    r, r + W, ... of it: ``ResumableSampler``), so that W processes mask each image as one process
    would mask the global batch (official MAE draws per GPU: the same distribution, other draws).
    """
    world = distributed.world_size()
    noise = torch.rand(batch * world, num_patches, device=device)
    if world > 1:
        dist.broadcast(noise, src=0)
        noise = noise[distributed.rank() :: world]
    keep = noise.argsort(dim=1)[:, : int(num_patches * (1 - ratio))]  # models_mae.py len_keep
    mask = torch.ones(batch, num_patches, dtype=torch.bool, device=device).scatter(1, keep, False)
    return keep, mask


SEED_BITS = 62  # a batch's block sampler is seeded by one draw of this many bits from the torch RNG


@dataclass(frozen=True)
class BlockMasking:
    pred_ratio: list[float]  # candidate mean ratios r, one chosen uniformly per crop
    pred_ratio_var: list[float]  # half-width of the uniform draw around each r (0: exactly r)
    min_block: int | None  # smallest target area of a block, in patches; None: loader.py's (min(H, W) // 3) ** 2
    min_aspect: float  # block aspect ratios lie in [min_aspect, 1 / min_aspect]
    attempts: int  # draws per block before giving up

    def __call__(self, batch: int, height: int, width: int) -> Tensor:
        """``batch`` masks (batch, height, width), True where a patch is masked."""
        rng = random.Random(int(torch.randint(2**SEED_BITS, ())))
        masks = [self.block_mask(rng, height, width, self.draw_ratio(rng) * height * width) for _ in range(batch)]
        return torch.tensor(masks, dtype=torch.bool).view(batch, height, width)

    def draw_ratio(self, rng: random.Random) -> float:
        """One crop's prediction ratio (loader.py get_pred_ratio)."""
        index = rng.randrange(len(self.pred_ratio))
        mean, var = self.pred_ratio[index], self.pred_ratio_var[index]
        return rng.uniform(mean - var, mean + var) if var > 0 else mean

    def block_mask(self, rng: random.Random, height: int, width: int, target: float) -> list[list[bool]]:
        """Add blocks until ``target`` patches are masked or no block fits (BEiT Algorithm 1)."""
        mask = [[False] * width for _ in range(height)]
        log_aspect = (math.log(self.min_aspect), -math.log(self.min_aspect))
        min_block = self.min_block if self.min_block is not None else (min(height, width) // 3) ** 2
        count = 0
        while count < target:
            room = target - count
            added = 0
            for _ in range(self.attempts):
                area = rng.uniform(min_block, room)
                aspect = math.exp(rng.uniform(*log_aspect))
                h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
                if h >= height or w >= width:
                    continue
                top, left = rng.randint(0, height - h), rng.randint(0, width - w)
                cells = [(i, j) for i in range(top, top + h) for j in range(left, left + w) if not mask[i][j]]
                if 0 < len(cells) <= room:
                    for i, j in cells:
                        mask[i][j] = True
                    added = len(cells)
                    break
            if added == 0:
                break
            count += added
        return mask


def stratified_block_masks(
    batch: int, height: int, width: int, probability: float, ratio_range: tuple[float, float], device: torch.device
) -> Tensor:
    """DINOv2's collate: masks (batch, height, width) with exactly int(probability * batch) crops masked, their
    ratios stratified over ``ratio_range`` (one draw per equal slice, a linspace) and the masks shuffled; each
    masked crop gets int(N * ratio) patches in blocks of at least 4 (MaskingGenerator's defaults: aspect ratios
    in [0.3, 1/0.3], 10 attempts per block).

    Why not lightly's ``random_block_mask``, the same collate: it refuses an image whose target is under the
    4-patch minimum block (a 5x5 grid of 20-px crops draws targets from 2; any grid with a minimum ratio of 0),
    where DINOv2's MaskingGenerator draws the block's area from the reversed range U(4, target). Here such an
    image's blocks are as large as its target, the closest lightly allows; on 7x7 grids with ratios from 0.1 the
    masks are lightly's, draw for draw.
    """
    low, high = ratio_range
    masked = int(batch * probability)
    bounds = torch.linspace(low, high, masked + 1).tolist()
    masks = []
    for lower, upper in zip(bounds[:-1], bounds[1:]):
        target = int(height * width * random.uniform(lower, upper))
        masks.append(random_block_mask_image((height, width), target, min(4, target), device=device))
    masks += [torch.zeros(height, width, dtype=torch.bool, device=device) for _ in range(batch - masked)]
    random.shuffle(masks)
    return torch.stack(masks)
