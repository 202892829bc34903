"""Collapse diagnostics logged for every method.

- the per-dimension std of L2-normalised embeddings: about 1/sqrt(d) when the
  embeddings spread over the sphere, 0 when they collapse to one point
  (SimSiam §4.1);
- the effective rank of the embedding covariance, exp of the entropy of its
  normalised eigenvalues (Roy & Vetterli 2007): 1 for a rank-one collapse.
"""

from __future__ import annotations

import torch
from torch import Tensor


def embedding_std(embeddings: Tensor) -> float:
    """Mean over dimensions of the std of the L2-normalised embeddings (N, d)."""
    normalised = torch.nn.functional.normalize(embeddings.float(), dim=1)
    return normalised.std(dim=0).mean().item()


def effective_rank(embeddings: Tensor, eps: float = 1e-12) -> float:
    """exp(H(p)) with p the normalised eigenvalues of the covariance of ``embeddings``."""
    centred = embeddings.float() - embeddings.float().mean(dim=0)
    singular = torch.linalg.svdvals(centred)
    energy = singular**2
    if energy.sum() <= eps:
        return 1.0  # every embedding identical: a single point has rank-one (degenerate) spread
    p = energy / energy.sum()
    entropy = -(p * torch.log(p.clamp_min(eps))).sum()
    return torch.exp(entropy).item()


def collapse_metrics(embeddings: Tensor) -> dict[str, float]:
    return {"embed_std": embedding_std(embeddings), "embed_rank": effective_rank(embeddings)}
