"""BYOL: bootstrap your own latent (Grill et al. 2020, §3 and Figure 2).

f, g, q = online encoder, projector, predictor       # theta
f', g'  = target encoder, projector = EMA of f, g     # xi, no gradient
for x in loader:
    v, v' = t(x), t'(x)                  # asymmetric views (blur 1.0 / 0.1, solarize 0 / 0.2)
    p, p' = q(g(f(v))), q(g(f(v')))
    z, z' = g'(f'(v)), g'(f'(v'))
    loss = (2 - 2 cos(p, sg(z'))) + (2 - 2 cos(p', sg(z)))   # Eq. 2 + its symmetric L~
    loss.backward(); update(theta)       # LARS
    xi = tau xi + (1 - tau) theta        # tau = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2

No negatives: the predictor and the slowly moving target keep the online
network from collapsing (§3.2; BYOL Table 5 shows collapse without either).
"""

from __future__ import annotations

from sslzoo.losses.byol import RegressionLoss
from sslzoo.methods.base import METHODS, MethodCard, MethodSetup
from sslzoo.methods.predictive import PredictiveSiamese


@METHODS.register("byol")
class BYOL(PredictiveSiamese):
    Config = PredictiveSiamese.Config  # BYOL's keys are exactly the shared ones

    card = MethodCard(
        family="self-distillation",
        target="EMA of encoder + projector (tau cosine to 1; 0.996 or 0.99 in the paper)",
        predictor="2-layer MLP on the online side only",
        negatives="none",
        loss="2 - 2 cos(prediction, stop-gradient target projection), both view orders summed",
        anti_collapse="predictor + slow-moving target (no negatives, no centring)",
        crops="2 asymmetric views (blur 1.0 / 0.1, solarize 0 / 0.2)",
    )

    def __init__(self, setup: MethodSetup) -> None:
        super().__init__(setup, RegressionLoss())
