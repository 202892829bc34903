"""2-D maps of the backbone features of the test set, coloured by class, one panel per run.

Features are L2-normalised first (the geometry the kNN evaluation uses), then
projected with t-SNE (van der Maaten & Hinton 2008, scikit-learn) or PCA. Each
panel's title carries the collapse diagnostics of those features: a collapsed
backbone maps every image near one point (std -> 0, effective rank -> 1).
"""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.figure import Figure
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from torch import Tensor

from sslzoo.diagnostics import effective_rank, embedding_std
from sslzoo.errors import UserError
from sslzoo.eval.features import eval_split, extract_features
from sslzoo.viz.runs import Run

PROJECTIONS = {"tsne": "t-SNE", "pca": "PCA"}
TSNE_PERPLEXITY = 30.0  # scikit-learn's default; needs more points than this


def project(features: Tensor, projection: str, seed: int) -> np.ndarray:
    """(N, 2) coordinates of the L2-normalised ``features``."""
    points = F.normalize(features.float(), dim=1).numpy()
    if projection == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(points)
    if len(points) <= TSNE_PERPLEXITY:
        raise UserError(f"t-SNE needs more than {TSNE_PERPLEXITY:g} points: raise points= or use projection=pca")
    return TSNE(n_components=2, perplexity=TSNE_PERPLEXITY, init="pca", random_state=seed).fit_transform(points)


def embedding_figure(runs: list[Run], labels: list[str], points: int, projection: str, seed: int) -> Figure:
    if projection not in PROJECTIONS:
        raise UserError(f"projection={projection} is not available; choose one of {', '.join(PROJECTIONS)}")
    if points < 2:
        raise UserError(f"points={points} must be at least 2")
    fig = Figure(figsize=(4.2 * len(runs) + 1.6, 4.4), layout="constrained")
    axes = fig.subplots(1, len(runs), squeeze=False)[0]
    colours = colormaps["tab10"].colors
    names: list[str] = []
    for ax, run, label in zip(axes, runs, labels):
        features, classes = extract_features(run.backbone(), eval_split(run.data, "test", points))
        xy = project(features, projection, seed)
        names = run.class_names()
        for c in range(len(names)):
            chosen = (classes == c).numpy()
            ax.scatter(xy[chosen, 0], xy[chosen, 1], s=4, color=colours[c % len(colours)], label=names[c])
        ax.set_title(
            f"{label}\nfeature std {embedding_std(features):.3f}, eff. rank {effective_rank(features):.1f}",
            fontsize=9,
        )
        ax.set_xticks([])
        ax.set_yticks([])
    handles, _ = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside right center", markerscale=3, fontsize=8, frameon=False)
    fig.suptitle(f"{PROJECTIONS[projection]} of the backbone features of {len(features)} test images", fontsize=10)
    return fig
