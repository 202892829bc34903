"""2-D maps of the backbone features of the test set, coloured by class, one panel per run.

Features are L2-normalised first (the geometry the kNN evaluation uses), then
projected with t-SNE (van der Maaten & Hinton 2008, scikit-learn) or PCA. Each
panel's title carries the collapse diagnostics of those features: a collapsed
backbone maps every image near one point (std -> 0, effective rank -> 1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.figure import Figure
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from torch import Tensor

from sslzoo.data import data_info
from sslzoo.diagnostics import effective_rank, embedding_std
from sslzoo.errors import UserError
from sslzoo.eval.features import eval_split, extract_features
from sslzoo.viz.images import Source, folder_classes, image_files, read_picture, square_view
from sslzoo.viz.runs import CLASS_NAMES

PROJECTIONS = {"tsne": "t-SNE", "pca": "PCA"}
PICTURE_BATCH = 64  # pictures per forward pass (memory, not results)
TSNE_PERPLEXITY = 30.0  # scikit-learn's default; needs more points than this


def project(features: Tensor, projection: str, seed: int) -> np.ndarray:
    """(N, 2) coordinates of the L2-normalised ``features``."""
    points = F.normalize(features.float(), dim=1).numpy()
    if projection == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(points)
    if len(points) <= TSNE_PERPLEXITY:
        raise UserError(f"t-SNE needs more than {TSNE_PERPLEXITY:g} points: raise points= or use projection=pca")
    return TSNE(n_components=2, perplexity=TSNE_PERPLEXITY, init="pca", random_state=seed).fit_transform(points)


def folder_features(source: Source, path: Path, points: int) -> tuple[Tensor, Tensor, list[str]]:
    """(features, classes, class names) of the first ``points`` pictures under ``path``, in the backbone's
    evaluation view; the classes are the first-level subfolders (ImageFolder layout), if any."""
    files = image_files(path)[:points]
    classes, names = folder_classes(path, files)
    features = []
    with torch.no_grad():
        for start in range(0, len(files), PICTURE_BATCH):
            batch = [
                square_view(read_picture(f, source.info.channels), source.info) for f in files[start:][:PICTURE_BATCH]
            ]
            features.append(source.model(torch.stack(batch)))
    return torch.cat(features), torch.tensor(classes), names


def test_features(source: Source, points: int) -> tuple[Tensor, Tensor, list[str]]:
    """(features, classes, class names) of the first ``points`` test images of the source's dataset."""
    if not source.has_dataset:
        raise UserError("released weights come without a dataset: pass images=FOLDER of pictures to embed")
    features, classes = extract_features(source.model, eval_split(source.data, "test", points))
    names = CLASS_NAMES.get(source.data.name)
    return features, classes, list(names) if names else [str(i) for i in range(data_info(source.data).num_classes)]


def embedding_figure(
    sources: list[Source], labels: list[str], points: int, projection: str, seed: int, images: Path | None = None
) -> Figure:
    """One panel per source: the test images' features (or those of the pictures under ``images``)."""
    if projection not in PROJECTIONS:
        raise UserError(f"projection={projection} is not available; choose one of {', '.join(PROJECTIONS)}")
    if points < 2:
        raise UserError(f"points={points} must be at least 2")
    fig = Figure(figsize=(4.2 * len(sources) + 1.6, 4.4), layout="constrained")
    axes = fig.subplots(1, len(sources), squeeze=False)[0]
    colours = colormaps["tab10"].colors
    names: list[str] = []
    for ax, source, label in zip(axes, sources, labels):
        if images is None:
            features, classes, names = test_features(source, points)
        else:
            features, classes, names = folder_features(source, images, points)
        if len(features) < 2:
            raise UserError(f"images={images} holds {len(features)} picture: embedding needs at least 2")
        xy = project(features, projection, seed)
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
    what = "test images" if images is None else f"pictures in {images.name}"
    fig.suptitle(f"{PROJECTIONS[projection]} of the backbone features of {len(features)} {what}", fontsize=10)
    return fig
