"""A finished (or running) training run folder, as the figures read it (its layout: ``sslzoo.rundir``)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from torch import Tensor, nn

from sslzoo.config import DataConfig, build
from sslzoo.data import DataInfo, data_info
from sslzoo.errors import UserError
from sslzoo.rundir import RunDir

CLASS_NAMES = {
    "fmnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}


@dataclass
class Run:
    path: Path
    config: dict  # config.yaml

    @classmethod
    def open(cls, path: str | Path) -> Run:
        return cls(Path(path), RunDir(path).read_config())

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def method(self) -> str:
        return self.config["method"]["name"]

    @property
    def data(self) -> DataConfig:
        return build(DataConfig, self.config["data"], "data")

    @property
    def info(self) -> DataInfo:
        return data_info(self.data)

    def class_names(self) -> list[str]:
        names = CLASS_NAMES.get(self.data.name)
        return list(names) if names else [str(i) for i in range(self.info.num_classes)]

    @cached_property
    def metrics(self) -> list[dict]:
        """The logged records in step order."""
        run = RunDir(self.path)
        records = run.read_metrics()
        if not records:
            raise UserError(f"{run.metrics} has no records: the run has not logged yet (trainer.log_every steps)")
        return sorted(records, key=lambda record: record["step"])

    def backbone(self) -> nn.Module:
        """The evaluated backbone (``backbone.pt``, or the newer checkpoint of a run in progress) in eval mode."""
        from sslzoo.eval.evaluate import from_run  # the evaluation's own loader: the same weights as its numbers

        return from_run(self.path).model.eval()

    def unnormalise(self, images: Tensor) -> Tensor:
        """Normalised images (B, C, H, W) back to [0, 1] for display."""
        mean = torch.tensor(self.info.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.info.std).view(1, -1, 1, 1)
        return (images * std + mean).clamp(0, 1)


def open_runs(paths: list[str]) -> list[Run]:
    if not paths:
        raise UserError("name at least one run folder: runs=DIR[,DIR...]")
    return [Run.open(path) for path in paths]


def run_labels(runs: list[Run], labels: list[str] | None) -> list[str]:
    """The given labels, or each run's folder name."""
    if labels is None:
        return [run.name for run in runs]
    if len(labels) != len(runs):
        raise UserError(f"labels= has {len(labels)} entries for {len(runs)} runs: give one label per run")
    return labels
