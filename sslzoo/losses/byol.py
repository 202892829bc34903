"""BYOL's regression loss (Grill et al. 2020, Eq. 2).

    L(p, z') = || p / ||p|| - z' / ||z'|| ||^2 = 2 - 2 cos(p, z')

between the online prediction p of one view and the target projection z' of
the other, with a stop-gradient on z', averaged over the batch. The method sums
it over both view orders (Eq. 4: L + L~). lightly's ``NegativeCosineSimilarity``
computes -mean cos, so the loss is 2 + 2 * that.
"""

from __future__ import annotations

from lightly.loss import NegativeCosineSimilarity
from torch import Tensor, nn


class RegressionLoss(nn.Module):
    """L(p, z') of one view's prediction against the other view's target projection."""

    def __init__(self) -> None:
        super().__init__()
        self.negative_cosine = NegativeCosineSimilarity(dim=-1)

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        """Mean over the batch of 2 - 2 cos(p, sg(z')), in fp32."""
        return 2 + 2 * self.negative_cosine(prediction.float(), target.detach().float())
