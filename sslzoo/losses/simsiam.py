"""SimSiam's symmetrised negative cosine (Chen & He 2021, Eq. 1-2 and Algorithm 1).

    D(p1, z2) = - p1 / ||p1|| . z2 / ||z2||
    L         = 1/2 D(p1, stopgrad(z2)) + 1/2 D(p2, stopgrad(z1))

averaged over the batch (facebookresearch/simsiam main_simsiam.py: ``-(criterion(p1, z2).mean() +
criterion(p2, z1).mean()) * 0.5`` with ``nn.CosineSimilarity``; builder.py detaches z1, z2).
L lies in [-1, 1]; -1 is perfect agreement.

BYOL's regression loss (``losses/byol.py``) is 2 - 2 cos = 2 + 2 D, per view order, summed over both:
the same minimiser, but 4 times SimSiam's gradient. SimSiam trains with plain SGD, whose step scales
with the gradient (lr 0.05 was chosen for this L), so this file writes the paper's D rather than
rescaling BYOL's loss. D itself is lightly's ``NegativeCosineSimilarity``.

``stop_gradient=False`` removes the stop-gradient: the ablation of SimSiam §4.1 / Figure 2, which
collapses (the std of the normalised output goes to 0).
"""

from __future__ import annotations

from lightly.loss import NegativeCosineSimilarity
from torch import Tensor, nn


class SymmetrisedNegativeCosine(nn.Module):
    """L of both views' predictions p1, p2 and projections z1, z2."""

    def __init__(self, stop_gradient: bool = True) -> None:
        super().__init__()
        self.stop_gradient = stop_gradient
        self.D = NegativeCosineSimilarity(dim=-1)  # mean over the batch of -cos(p, z)

    def target(self, z: Tensor) -> Tensor:
        return (z.detach() if self.stop_gradient else z).float()

    def forward(self, p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
        """1/2 D(p1, sg(z2)) + 1/2 D(p2, sg(z1)), in fp32."""
        return 0.5 * self.D(p1.float(), self.target(z2)) + 0.5 * self.D(p2.float(), self.target(z1))
