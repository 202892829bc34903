"""Evaluation: kNN against a brute-force computation, the linear probe on separable data, the
ViT probe features against a direct forward, the online probe (isolated from the method,
exact on resume) and the ``python -m sslzoo.eval`` command line."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
import yaml
from timm.models.vision_transformer import VisionTransformer

from sslzoo.backbones import build_model
from sslzoo.checkpoint import atomic_save, load_checkpoint
from sslzoo.cli import attached_callbacks
from sslzoo.config import DataConfig
from sslzoo.errors import UserError
from sslzoo.eval.__main__ import main as eval_main
from sslzoo.eval.evaluate import Subject, method_from_checkpoint, stored_record, write_record
from sslzoo.eval.features import ViTProbeFeatures, feature_encoder
from sslzoo.eval.knn import knn_predict_many, knn_top1
from sslzoo.eval.linear import linear_probe
from sslzoo.eval.protocol import load_protocol
from sslzoo.trainer import Stopped, Trainer

SMALL_HEAD = {"method.out_dim": 256, "method.proj_hidden_dim": 256}  # DINO's CPU head is most of a step's cost

# --------------------------------------------------------------------------- kNN


def brute_force_knn(train: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, k: int, t: float) -> int:
    """One query, written out: cosine similarity to every training point, the k largest vote exp(sim / t)."""
    sims = []
    for i, x in enumerate(train):
        cos = float(query @ x) / (math.sqrt(float(query @ query)) * math.sqrt(float(x @ x)))
        sims.append((cos, int(labels[i])))
    sims.sort(key=lambda pair: -pair[0])
    votes: dict[int, float] = {}
    for cos, label in sims[:k]:
        votes[label] = votes.get(label, 0.0) + math.exp(cos / t)
    return max(votes, key=votes.get)


def test_knn_matches_brute_force() -> None:
    gen = torch.Generator().manual_seed(0)
    train, labels = torch.randn(60, 6, generator=gen), torch.randint(0, 4, (60,), generator=gen)
    test, test_labels = torch.randn(25, 6, generator=gen), torch.randint(0, 4, (25,), generator=gen)
    ks, t = [1, 5, 20, 100], 0.07  # k=100 > 60 training points: all of them vote
    predicted = knn_predict_many(train, labels, test, ks, t, num_classes=4, chunk=7)  # chunks of uneven size
    for k in ks:
        want = torch.tensor([brute_force_knn(train, labels, q, min(k, len(train)), t) for q in test])
        assert torch.equal(predicted[k], want), k
    accuracy = knn_top1(train, labels, test, test_labels, ks, t, num_classes=4)
    for k in ks:
        assert accuracy[k] == pytest.approx((predicted[k] == test_labels).float().mean().item())
    # the weighting matters: a large temperature (near-uniform votes) changes some predictions
    assert not torch.equal(knn_predict_many(train, labels, test, [20], 100.0, 4)[20], predicted[20])


# --------------------------------------------------------------------------- linear probe


def separable(n: int, dim: int, classes: int, seed: int, spread: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian clusters around orthogonal, far-apart centres; with ``spread``, the dimensions'
    scales span 10^-spread .. 10^spread (as the features of different backbones do)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=gen)
    centres = 8.0 * torch.eye(classes, dim)
    scale = torch.logspace(-spread, spread, dim)
    return (centres[labels] + 0.5 * torch.randn(n, dim, generator=gen)) * scale, labels


@pytest.mark.parametrize("standardize, spread", [(True, 2.0), (False, 0.0)])
def test_linear_probe_separates_separable_features(standardize: bool, spread: float) -> None:
    p = load_protocol({"linear.epochs": 30, "linear.batch_size": 64, "linear.standardize": standardize})
    train, test = separable(600, 16, 5, 0, spread), separable(300, 16, 5, 1, spread)
    result = linear_probe(train, test, 5, p.linear, seed=0)
    assert result["linear_top1"] >= 0.99 and result["train_top1"] >= 0.99
    assert result["train_loss_per_epoch"][-1] < result["train_loss_per_epoch"][0]
    chance = linear_probe(train, (test[0], test[1].roll(1)), 5, p.linear, seed=0)["linear_top1"]
    assert chance < 0.5  # shuffled test labels: the accuracy is measured, not assumed


def test_linear_probe_is_deterministic_per_seed() -> None:
    p = load_protocol({"linear.epochs": 2, "linear.batch_size": 32})
    train, test = separable(128, 8, 3, seed=0), separable(64, 8, 3, seed=1)
    a, b = (linear_probe(train, test, 3, p.linear, seed=3) for _ in range(2))
    assert a["train_loss_per_epoch"] == b["train_loss_per_epoch"]


# --------------------------------------------------------------------------- features


def test_vit_probe_features_are_dinos() -> None:
    torch.manual_seed(0)
    vit = build_model("vit_micro_patch4_28", in_chans=1).eval()
    x = torch.randn(3, 1, 28, 28)
    encoder = feature_encoder(vit, "vit_micro_patch4_28", load_protocol().linear)
    assert isinstance(encoder, ViTProbeFeatures) and encoder.n_last_blocks == 4
    with torch.no_grad():
        pooled, probe = encoder(x)
        tokens = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
        cls = []
        for block in vit.blocks:  # the forward pass written out: [CLS] of each block after the final norm
            tokens = block(tokens)
            cls.append(vit.norm(tokens)[:, 0])
        assert torch.allclose(pooled, vit(x), atol=1e-5)
        assert torch.allclose(probe, torch.cat(cls[-4:], dim=1), atol=1e-5)
        base_rule = ViTProbeFeatures(vit, 1, True)  # the ViT-B rule: last [CLS] + mean patch token
        _, with_avg = base_rule(x)
        assert torch.allclose(with_avg, torch.cat([cls[-1], vit.norm(tokens)[:, 1:].mean(1)], dim=1), atol=1e-5)


def test_vit_probe_features_of_a_vit_shallower_than_its_rule_take_every_block() -> None:
    vit = build_model("vit_convstem_micro_28", in_chans=1).eval()  # 2 blocks; the "*" rule asks for 4
    encoder = ViTProbeFeatures(vit, 4, False)
    with torch.no_grad():
        _, probe = encoder(torch.randn(2, 1, 28, 28))
    assert encoder.n_last_blocks == 2 and probe.shape == (2, 2 * vit.embed_dim)


def test_vit_feature_rule_by_backbone() -> None:
    linear = load_protocol().linear
    base = linear.vit_rule("vit_base_patch16_224")
    small = linear.vit_rule("vit_small_patch16_224")
    assert (base.n_last_blocks, base.avgpool_patchtokens) == (1, True)
    assert (small.n_last_blocks, small.avgpool_patchtokens) == (4, False)
    deep = linear.vit_rule("vit_deepstem_micro_28")  # one block: ViT-B's rule
    assert (deep.n_last_blocks, deep.avgpool_patchtokens) == (1, True)
    resnet = build_model("resnet18_cifar", in_chans=1)
    assert not isinstance(resnet, VisionTransformer)
    assert not isinstance(feature_encoder(resnet, "resnet18_cifar", linear), ViTProbeFeatures)


def test_a_stored_record_is_kept_only_for_the_same_subject_protocol_and_weights(tmp_path: Path) -> None:
    weights, path = tmp_path / "backbone.pt", tmp_path / "eval_finetune.json"
    weights.write_bytes(b"w")
    data = DataConfig("fmnist", "data", batch_size=8, num_workers=0, download=False, on_corrupt="skip")
    subject = Subject("dino", torch.nn.Identity(), "vit_micro_patch4_28", data, {"source": str(weights), "step": 3})
    protocol = load_protocol({"finetune.budget": 2})
    assert stored_record(path, subject, protocol, newer_than=weights) is None  # nothing written yet
    write_record(path, {"finetune_top1": 0.5, "subject": subject.describe()}, subject, protocol)
    assert stored_record(path, subject, protocol, newer_than=weights)["finetune_top1"] == 0.5
    assert stored_record(path, subject, load_protocol({"finetune.budget": 3}), newer_than=weights) is None
    other = dataclasses.replace(subject, weights={"source": str(weights), "step": 4})
    assert stored_record(path, other, protocol, newer_than=weights) is None
    os.utime(weights, (path.stat().st_mtime + 10,) * 2)  # weights saved after the record
    assert stored_record(path, subject, protocol, newer_than=weights) is None


def test_protocol_refuses_bad_keys_and_values() -> None:
    with pytest.raises(UserError, match="knn.ks"):
        load_protocol({"knn.k": [5]})
    with pytest.raises(UserError, match="headline_k"):
        load_protocol({"knn.ks": [5, 10]})
    with pytest.raises(UserError, match="must be"):
        load_protocol({"linear.epochs": "many"})


# --------------------------------------------------------------------------- online probe


def train_with_stop(cfg, stop_after: int | None = None) -> Trainer:
    """Train ``cfg``; with ``stop_after``, a SIGTERM arrives after that many steps (checkpoint, Stopped)."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    trainer = Trainer(cfg, attached_callbacks(cfg))  # the online probe, as train.py attaches it
    if stop_after is not None:
        step = trainer.step

        def step_then_stop(views, labels=None):
            record = step(views, labels)
            if trainer.clock.step + 1 == stop_after:
                trainer.stop_signal = signal.SIGTERM
            return record

        trainer.step = step_then_stop
    try:
        if stop_after is None:
            trainer.fit()
        else:
            with pytest.raises(Stopped):
                trainer.fit()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return trainer


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, dict):
            assert_same_tensors(value, b[key])
        elif isinstance(value, torch.Tensor):
            assert torch.equal(value, b[key]), key
        else:
            assert value == b[key], key


def test_online_probe_leaves_the_method_alone_and_resumes_exactly(tiny_config, tmp_path: Path) -> None:
    steps = {"trainer.max_steps": 4, "trainer.log_every": 2, "trainer.checkpoint_every": 100, **SMALL_HEAD}
    probed = train_with_stop(tiny_config("dino_fmnist", **steps, **{"trainer.online_probe": True}))
    plain_cfg = tiny_config("dino_fmnist", **steps, **{"trainer.out_dir": str(tmp_path / "plain")})
    plain = train_with_stop(plain_cfg)
    assert_same_tensors(probed.method.state_dict(), plain.method.state_dict())  # the probe changed nothing

    metrics = Path(probed.cfg.trainer.out_dir) / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    assert all(0.0 <= r["online_linear_top1"] <= 1.0 and r["online_linear_loss"] > 0 for r in records)
    plain_records = (tmp_path / "plain" / "metrics.jsonl").read_text()
    assert "online" not in plain_records
    saved_config = yaml.safe_load((Path(probed.cfg.trainer.out_dir) / "config.yaml").read_text())
    assert saved_config["callbacks"] == {"online_probe": dataclasses.asdict(load_protocol().online_probe)}
    assert "callbacks" not in yaml.safe_load((tmp_path / "plain" / "config.yaml").read_text())

    resumed_cfg = {**steps, "trainer.online_probe": True, "trainer.out_dir": str(tmp_path / "resumed")}
    train_with_stop(tiny_config("dino_fmnist", **resumed_cfg), stop_after=2)
    saved = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert saved["step"] == 2 and set(saved["callbacks"]) == {"online_probe"}
    resumed = train_with_stop(tiny_config("dino_fmnist", **{**resumed_cfg, "resume": "auto"}))
    assert_same_tensors(resumed.method.state_dict(), probed.method.state_dict())
    assert_same_tensors(resumed.callbacks[0].state_dict(), probed.callbacks[0].state_dict())


# --------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sslzoo.cli import train
    from sslzoo.recipes import load_config

    out = tmp_path_factory.mktemp("run")
    small = {"trainer.max_steps": 2, "data.batch_size": 16, "data.num_workers": 0, "trainer.device": "cpu"}
    train(load_config("dino_fmnist", {**small, **SMALL_HEAD, "trainer.out_dir": str(out), "resume": "none"}))
    return out


QUICK = ["train_limit=300", "test_limit=100", "linear.epochs=2", "knn.ks=[5,20]"]


def test_eval_cli_writes_offline_results(tiny_run: Path, capsys: pytest.CaptureFixture) -> None:
    assert eval_main(["all", f"run={tiny_run}", *QUICK]) == 0
    printed = capsys.readouterr().out
    assert "offline kNN" in printed and "offline linear probe" in printed
    knn = json.loads((tiny_run / "eval_knn.json").read_text())
    linear = json.loads((tiny_run / "eval_linear.json").read_text())
    assert knn["evaluation"] == linear["evaluation"] == "offline"
    assert (knn["protocol"], linear["protocol"]) == ("kNN", "linear")
    assert set(knn["knn_top1"]) == {"5", "20"} and knn["headline"]["k"] == 20
    assert all(0.0 <= v <= 1.0 for v in [*knn["knn_top1"].values(), linear["linear_top1"]])
    assert (knn["train_images"], knn["test_images"]) == (300, 100)
    assert knn["feature_dim"] == 128  # dino_fmnist's one block: its [CLS]
    assert linear["feature_dim"] == 256  # ViT-B's rule at one block: [CLS] + mean patch token
    for record in (knn, linear):
        assert record["provenance"]["torch_version"] == torch.__version__
        assert "git_commit" in record["provenance"] and record["provenance"]["hardware"]["cpu_cores"]
        assert record["run_config"] == yaml.safe_load((tiny_run / "config.yaml").read_text())


def test_a_checkpoint_saved_before_a_key_existed_loads_as_it_trained(tiny_run: Path, tmp_path: Path) -> None:
    state = load_checkpoint(tiny_run / "checkpoints" / "last.pt")
    assert (state["config"]["optim"]["lr_decay"], state["config"]["method"]["momentum_end"]) == ("none", 0.99)
    del state["config"]["optim"]["lr_decay"], state["config"]["method"]["momentum_end"]
    atomic_save(state, tmp_path / "old.pt")
    _, cfg, _ = method_from_checkpoint(tmp_path / "old.pt")
    assert (cfg.optim.lr_decay, cfg.method.momentum_end) == ("cosine", 1.0)  # how runs trained before the keys


def test_eval_cli_checkpoint_evaluates_the_same_backbone(tiny_run: Path, tmp_path: Path) -> None:
    """ckpt= builds the method and takes eval_backbone() (DINO's teacher): the weights of backbone.pt."""
    out = tmp_path / "ckpt_eval"
    assert eval_main(["knn", f"ckpt={tiny_run / 'checkpoints' / 'last.pt'}", f"out={out}", *QUICK]) == 0
    from_ckpt = json.loads((out / "eval_knn.json").read_text())
    assert from_ckpt["subject"]["weights"]["step"] == 2
    assert eval_main(["knn", f"run={tiny_run}", f"out={tmp_path / 'run_eval'}", *QUICK]) == 0
    from_run = json.loads((tmp_path / "run_eval" / "eval_knn.json").read_text())
    assert from_ckpt["knn_top1"] == from_run["knn_top1"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["knn"], "name what to evaluate"),
        (["knnn", "run=x"], "unknown command"),
        (["knn", "run=/no/such/run"], "is not a folder"),
        (["linear", "run=.", "linear.epoch=3"], "did you mean 'linear.epochs'"),
        (["knn", "ckpt=/no/such.pt"], "does not exist"),
    ],
)
def test_eval_cli_bad_input_is_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        eval_main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and len(err.strip().splitlines()) == 1
