"""kNN@20 of a run's backbone against the random-init backbone (a quick check until the
evaluation CLI lands): ``python benchmarks/quick_knn.py RUN_DIR [train_limit]``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import yaml

from sslzoo.backbones import build_model
from sslzoo.config import DataConfig, build
from sslzoo.data import data_info
from sslzoo.eval.features import eval_split, extract_features
from sslzoo.eval.knn import knn_accuracy


def main() -> None:
    run = Path(sys.argv[1])
    limit = int(sys.argv[2]) if len(sys.argv) > 2 else None
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    data = build(DataConfig, cfg["data"], "data")
    channels = data_info(data).channels
    train, test = eval_split(data, "train", limit), eval_split(data, "test")
    results = {}
    for name, weights in (("random_init", None), ("trained", run / "backbone.pt")):
        torch.manual_seed(cfg["seed"])
        model = build_model(cfg["model"]["backbone"], in_chans=channels)
        if weights is not None:
            model.load_state_dict(torch.load(weights, weights_only=True), strict=True)
        xtr, ytr = extract_features(model, train)
        xte, yte = extract_features(model, test)
        results[name] = knn_accuracy(xtr, ytr, xte, yte, k=20)
        print(f"offline kNN@20 top-1, {name}: {100 * results[name]:.2f}%")
    (run / "quick_knn.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
