"""The layout of a training run's folder (``trainer.out_dir``): every name in it is spelled here.

::

    config.yaml           the resolved config (``sslzoo.config.to_yaml``)
    metrics.jsonl         one record per log step
    checkpoints/last.pt   the resumable training checkpoint
    backbone.pt           the evaluated backbone's ``state_dict``, written when training ends
    snapshots/            ``backbone_stepNNNNNN.pt`` every ``trainer.snapshot_every`` steps, listed in ``index.json``
    eval_KIND.json        the offline evaluations' records (knn, linear, lowshot, finetune)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import yaml

from sslzoo.checkpoint import atomic_save, atomic_write
from sslzoo.errors import UserError

CHECKPOINT_DIR = "checkpoints"
EvalKind = Literal["knn", "linear", "lowshot", "finetune"]


class RunDir:
    """The paths of one run folder, and the readers of its config and metrics."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def of_checkpoint(cls, checkpoint: Path) -> RunDir:
        """The run a checkpoint belongs to: the folder above ``checkpoints/``, else the checkpoint's own folder."""
        folder = checkpoint.parent
        return cls(folder.parent if folder.name == CHECKPOINT_DIR else folder)

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT_DIR / "last.pt"

    @property
    def backbone(self) -> Path:
        return self.path / "backbone.pt"

    @property
    def snapshot_dir(self) -> Path:
        return self.path / "snapshots"

    @property
    def snapshot_index(self) -> Path:
        return self.snapshot_dir / "index.json"

    def snapshot(self, step: int) -> Path:
        return self.snapshot_dir / f"backbone_step{step:06d}.pt"

    @property
    def snapshots(self) -> Snapshots:
        return Snapshots(self)

    def eval_record(self, kind: EvalKind) -> Path:
        return self.path / f"eval_{kind}.json"

    def read_config(self) -> dict:
        """The saved config as a plain dict; a folder without one is refused in one line."""
        if not self.config.is_file():
            raise UserError(
                f"{self.path} is not a run folder (no {self.config.name}): pass a trainer.out_dir of train.py"
            )
        tree = yaml.safe_load(self.config.read_text())
        if not isinstance(tree, dict) or "data" not in tree or "model" not in tree:
            raise UserError(f"{self.config} is not an sslzoo run config")
        return tree

    def read_metrics(self) -> list[dict]:
        """The records of ``metrics.jsonl`` in file order (none before the first log step)."""
        if not self.metrics.is_file():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]


class Snapshots:
    """A run's evaluation snapshots (``trainer.snapshot_every``): each a plain ``state_dict`` of
    ``method.eval_backbone()`` like ``backbone.pt``, and the index, which lists them in step order as
    ``{"step", "train_s", "file"}`` (``train_s``: the trainer's training seconds so far)."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.folder = run.snapshot_dir
        self.index = run.snapshot_index

    def read(self) -> list[dict]:
        return json.loads(self.index.read_text()) if self.index.is_file() else []

    def write_index(self, entries: list[dict]) -> None:
        atomic_write(self.index, lambda file: file.write(json.dumps(entries, indent=1).encode()))

    def save(self, state_dict: dict, step: int, train_s: float) -> None:
        """Write the snapshot of ``step``, then list it (the index never names a missing file)."""
        path = self.run.snapshot(step)
        atomic_save(state_dict, path)
        earlier = [e for e in self.read() if e["step"] < step]
        self.write_index([*earlier, {"step": step, "train_s": train_s, "file": path.name}])

    def truncate_after(self, step: int) -> None:
        """Forget and delete the snapshots past ``step``: they belong to steps a resumed run will redo."""
        entries = self.read()
        kept = [e for e in entries if e["step"] <= step]
        if len(kept) == len(entries):
            return
        self.write_index(kept)
        for entry in entries:
            if entry["step"] > step:
                (self.folder / entry["file"]).unlink(missing_ok=True)
