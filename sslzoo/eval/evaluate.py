"""Evaluate a frozen backbone (of a run, a checkpoint, or a baseline) with the offline protocols.

The command line (``python -m sslzoo.eval``) and ``benchmarks/compare.py`` share
this module: a :class:`Subject` is what gets evaluated, an :class:`Evaluator`
extracts its features once and runs the offline kNN and linear probe on them.
Every record says which protocol produced its number ("offline", "kNN" or
"linear"), so it cannot be confused with the online probe of pre-training.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sslzoo.backbones import build_model
from sslzoo.build import build_method
from sslzoo.checkpoint import load_checkpoint
from sslzoo.config import DEFAULTS_FILE, DataConfig, RunConfig, build, dotted_keys, read_yaml, set_dotted
from sslzoo.data import data_info
from sslzoo.errors import UserError
from sslzoo.eval.features import RawPixels, describe, eval_split, extract, feature_encoder, train_transform
from sslzoo.eval.knn import knn_top1
from sslzoo.eval.linear import linear_probe, linear_probe_augmented
from sslzoo.eval.protocol import Protocol, to_dict
from sslzoo.methods import Method
from sslzoo.provenance import provenance
from sslzoo.recipes import validate_saved
from sslzoo.rundir import RunDir
from sslzoo.weights import TIMM_PREFIX, is_sslzoo_checkpoint, load_weights, read

UNITS = "fraction of the test images classified correctly, in [0, 1]"


@dataclass
class Subject:
    """A frozen model to evaluate and where it came from."""

    name: str
    model: nn.Module  # the plain timm/torchvision model, or RawPixels
    backbone: str  # the backbone's name ("raw_pixels" for the pixel baseline)
    data: DataConfig
    weights: dict[str, Any]  # which weights: source file, training step, or a baseline
    config: dict | None = None  # the run's resolved config
    out_dir: Path | None = None  # where its eval_*.json go

    def describe(self) -> dict:
        return {"name": self.name, "backbone": self.backbone, "dataset": self.data.name, "weights": self.weights}


# --------------------------------------------------------------------------- loading subjects


def data_config(tree: dict) -> DataConfig:
    return build(DataConfig, tree["data"], "data")


def plain_model(backbone: str, data: DataConfig) -> nn.Module:
    return build_model(backbone, in_chans=data_info(data).channels)


def method_from_checkpoint(path: Path) -> tuple[Method, RunConfig, dict]:
    """The whole method of a training checkpoint (backbones, heads, decoder), its config and the checkpoint."""
    state = load_checkpoint(path)
    tree = {**state["config"], "resume": "none"}  # resume paths of the original run need not exist here
    cfg = validate_saved(tree)
    method = build_method(cfg)
    method.load_state_dict(state["model"])
    return method, cfg, state


def from_checkpoint(path: Path, out_dir: Path | None = None) -> Subject:
    """The evaluated backbone of a training checkpoint (``method.eval_backbone()``: the teacher for DINO/iBOT)."""
    method, cfg, state = method_from_checkpoint(path)
    if out_dir is None:
        out_dir = RunDir.of_checkpoint(path).path
    return Subject(
        name=cfg.method.name,
        model=method.eval_backbone().model,
        backbone=cfg.model.backbone,
        data=cfg.data,
        weights={"source": str(path), "step": state["step"], "part": "method.eval_backbone()"},
        config=cfg.raw,
        out_dir=out_dir,
    )


OFFICIAL_DATA = "imagefolder"  # released weights are ImageNet models: an ImageNet-layout folder by default
OFFICIAL_OUT = Path("runs") / "official"  # where a timm tag's results go without out=


def official_data(overrides: dict[str, Any]) -> DataConfig:
    """The data to evaluate released weights on: ``defaults.yaml``'s data section, ``data.name=imagefolder``,
    with the command line's ``data.*`` overrides (``data.root=/data/imagenet``)."""
    tree = {"data": {**read_yaml(DEFAULTS_FILE)["data"], "name": OFFICIAL_DATA}}
    valid = dotted_keys(tree)
    for key, value in overrides.items():
        set_dotted(tree, key, value, valid)
    return build(DataConfig, tree["data"], "data")


def from_weights(
    ckpt: str,
    backbone: str | None = None,
    part: str | None = None,
    data: DataConfig | None = None,
    out_dir: Path | None = None,
) -> Subject:
    """``ckpt=``: an sslzoo training checkpoint, a file the official repositories release (DINO, iBOT,
    MoCo v3, MAE, torchvision-format ResNets; ``sslzoo.weights``), or ``timm:ARCH.TAG``."""
    contents = None
    if not ckpt.startswith(TIMM_PREFIX):
        contents = read(Path(ckpt))
        if is_sslzoo_checkpoint(contents):
            given = [key for key, value in (("backbone", backbone), ("part", part), ("data.*", data)) if value]
            if given:
                raise UserError(f"{ckpt} is an sslzoo checkpoint, which names its backbone and data: drop {given[0]}=")
            return from_checkpoint(Path(ckpt), out_dir)
    data = data or official_data({})
    model, name, info = load_weights(ckpt, backbone, part, data_info(data).channels, contents)
    if out_dir is None:
        out_dir = OFFICIAL_OUT / ckpt.removeprefix(TIMM_PREFIX) if contents is None else Path(ckpt).parent
    step = f"epoch {info['epoch']}" if info["epoch"] is not None else "released"
    label = ckpt.removeprefix(TIMM_PREFIX) if contents is None else Path(ckpt).stem
    return Subject(label, model, name, data, {"source": ckpt, "step": step, **info}, None, out_dir)


def from_run(run_dir: Path) -> Subject:
    """A run folder's final ``backbone.pt``, or its ``checkpoints/last.pt`` if that is newer (a run in progress)."""
    run = RunDir(run_dir)
    tree = run.read_config()
    final, last = run.backbone, run.checkpoint
    if last.is_file() and (not final.is_file() or last.stat().st_mtime > final.stat().st_mtime):
        return from_checkpoint(last, run_dir)
    if not final.is_file():
        raise UserError(f"{run_dir} has neither backbone.pt nor checkpoints/last.pt: the run saved no weights yet")
    return from_state_dict(run_dir, tree, final, "final")


def from_snapshot(run_dir: Path, entry: dict) -> Subject:
    """A run's evaluation snapshot (an entry of ``RunDir(run_dir).snapshots.read()``, ``trainer.snapshot_every``)."""
    run = RunDir(run_dir)
    return from_state_dict(run_dir, run.read_config(), run.snapshots.folder / entry["file"], entry["step"])


def from_state_dict(run_dir: Path, tree: dict, path: Path, step: int | str) -> Subject:
    """The run's backbone with the plain ``state_dict`` in ``path`` (``backbone.pt`` or a snapshot)."""
    data = data_config(tree)
    backbone = str(tree["model"]["backbone"])
    model = plain_model(backbone, data)
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    except (RuntimeError, OSError) as err:
        raise UserError(f"{path} does not load into {backbone} ({str(err).splitlines()[0]})") from None
    name = str(tree.get("method", {}).get("name", run_dir.name))
    return Subject(name, model, backbone, data, {"source": str(path), "step": step}, tree, run_dir)


def random_init(backbone: str, data: DataConfig, seed: int) -> Subject:
    """The untrained backbone (the floor every method must beat)."""
    torch.manual_seed(seed)
    weights = {"source": "random initialisation", "seed": seed}
    return Subject("random_init", plain_model(backbone, data), backbone, data, weights)


def raw_pixels(data: DataConfig) -> Subject:
    """The normalised pixels as features (the classic baseline)."""
    return Subject("raw_pixels", RawPixels(), "raw_pixels", data, {"source": "none: the pixels themselves"})


# --------------------------------------------------------------------------- evaluation


@dataclass
class Features:
    knn_train: Tensor
    probe_train: Tensor
    train_labels: Tensor
    knn_test: Tensor
    probe_test: Tensor
    test_labels: Tensor
    description: dict[str, str]
    extract_s: float


@dataclass
class Evaluator:
    """Offline kNN and linear probe of subjects under one protocol; labelled splits loaded once."""

    protocol: Protocol
    _splits: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        choice = self.protocol.device
        if choice == "cuda" and not torch.cuda.is_available():
            raise UserError("device=cuda but no CUDA GPU is visible; use device=cpu or auto")
        return torch.device("cuda" if choice != "cpu" and torch.cuda.is_available() else "cpu")

    def split(self, data: DataConfig, name: str):
        key = (data.name, data.root, name)
        if key not in self._splits:
            limit = self.protocol.train_limit if name == "train" else self.protocol.test_limit
            self._splits[key] = eval_split(data, name, limit)
        return self._splits[key]

    def encoder(self, subject: Subject) -> nn.Module:
        if isinstance(subject.model, RawPixels):
            return subject.model
        return feature_encoder(subject.model, subject.backbone, self.protocol.linear).to(self.device)

    def features(self, subject: Subject) -> Features:
        """Both feature kinds of the train and test splits, in one pass over each."""
        p, start = self.protocol, time.perf_counter()
        encoder = self.encoder(subject)
        args = (p.feature_batch_size, p.num_workers, self.device)
        (knn_train, probe_train), train_labels = extract(encoder, self.split(subject.data, "train"), *args)
        (knn_test, probe_test), test_labels = extract(encoder, self.split(subject.data, "test"), *args)
        return Features(
            knn_train, probe_train, train_labels, knn_test, probe_test, test_labels,
            describe(encoder), time.perf_counter() - start,
        )  # fmt: skip

    def knn(self, subject: Subject, f: Features) -> dict:
        p, start = self.protocol.knn, time.perf_counter()
        device = self.device
        top1 = knn_top1(
            f.knn_train.to(device), f.train_labels.to(device), f.knn_test.to(device), f.test_labels,
            p.ks, p.temperature, data_info(subject.data).num_classes,
        )  # fmt: skip
        return {
            "evaluation": "offline",
            "protocol": "kNN",
            "description": "offline weighted kNN on frozen, L2-normalised features (DINO eval_knn.py)",
            "knn_top1": {str(k): acc for k, acc in top1.items()},
            "headline": {"k": p.headline_k, "knn_top1": top1[p.headline_k]},
            "temperature": p.temperature,
            **shared_fields(subject, f, "knn", f.knn_train, start),
        }

    def linear(self, subject: Subject, f: Features, seed: int | None = None) -> dict:
        """The offline linear probe; ``seed`` (default: the protocol's) fixes its initialisation and order."""
        p, start = self.protocol, time.perf_counter()
        seed = p.seed if seed is None else seed
        num_classes = data_info(subject.data).num_classes
        test = (f.probe_test, f.test_labels)
        if p.linear.augment:
            dataset = eval_split(subject.data, "train", p.train_limit, train_transform(subject.data, p.linear))
            dim = f.probe_train.shape[1]
            args = (self.encoder(subject), dataset, test, dim, num_classes, p.linear, seed, p.num_workers)
            probe = linear_probe_augmented(*args, device=self.device)
        else:
            probe = linear_probe((f.probe_train, f.train_labels), test, num_classes, p.linear, seed, self.device)
        return {
            "evaluation": "offline",
            "protocol": "linear",
            "description": "offline linear probe on frozen features (DINO eval_linear.py"
            + (", standardised features as MAE's probe)" if p.linear.standardize else ")"),
            "linear_top1": probe.pop("linear_top1"),
            "units": UNITS,
            "augment": p.linear.augment,
            "seed": seed,
            **probe,
            **shared_fields(subject, f, "linear", f.probe_train, start),
        }


def shared_fields(subject: Subject, f: Features, kind: str, train_features: Tensor, start: float) -> dict:
    """What every offline result records besides its numbers: units, features, sizes, timings."""
    return {
        "units": UNITS,
        "features": f.description[kind],
        "feature_dim": train_features.shape[1],
        "train_images": len(f.train_labels),
        "test_images": len(f.test_labels),
        "subject": subject.describe(),
        "extract_s": f.extract_s,
        "eval_s": time.perf_counter() - start,
    }


def write_record(path: Path, record: dict, subject: Subject, protocol: Protocol) -> None:
    """A result file: the numbers, the protocol, the run's config and the provenance."""
    full = {**record, "protocol_settings": to_dict(protocol), "run_config": subject.config, "provenance": provenance()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(full, indent=2) + "\n")


def stored_record(path: Path, subject: Subject, protocol: Protocol, newer_than: Path) -> dict | None:
    """The result file at ``path`` when :func:`write_record` wrote it for this subject under this protocol
    after ``newer_than`` (the weights it evaluated) was saved; else None."""
    if not path.is_file() or not newer_than.is_file() or path.stat().st_mtime < newer_than.stat().st_mtime:
        return None
    record = json.loads(path.read_text())
    same_protocol = record.get("protocol_settings") == json.loads(json.dumps(to_dict(protocol)))
    return record if same_protocol and record.get("subject") == subject.describe() else None
