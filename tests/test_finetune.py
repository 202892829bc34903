"""Fine-tuning (sslzoo.eval.finetune): what trains, the layer-wise lr, mixup and smoothing, the record, refusals."""

from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import one_line_error

import sslzoo.eval.finetune as ft_module
from sslzoo.backbones import build_model
from sslzoo.eval.__main__ import main as eval_main
from sslzoo.eval.evaluate import Evaluator, official_data, random_init
from sslzoo.eval.finetune import finetune, finetune_model, parameter_groups, schedule, with_classifier
from sslzoo.eval.protocol import load_protocol
from sslzoo.rundir import RunDir

VIT = "vit_convstem_micro_28"
QUICK = {"train_limit": 64, "test_limit": 32, "finetune.budget": 3}
FMNIST = official_data({"data.name": "fmnist"})


def run_finetune(monkeypatch: pytest.MonkeyPatch, **overrides: object) -> tuple[dict, torch.nn.Module, list[dict]]:
    """Fine-tune the random-init ViT on 64 images for 3 steps; the record, the trained model and
    what each ``F.cross_entropy`` call received (targets, label_smoothing)."""
    calls: list[dict] = []
    trained: list[torch.nn.Module] = []

    def cross_entropy(logits, targets, label_smoothing=0.0):
        calls.append({"targets": targets.detach().clone(), "label_smoothing": label_smoothing})
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)

    top1 = ft_module.top1
    monkeypatch.setattr(ft_module, "F", types.SimpleNamespace(cross_entropy=cross_entropy))
    monkeypatch.setattr(ft_module, "top1", lambda model, *a: trained.append(model) or top1(model, *a))
    protocol = load_protocol({**QUICK, "device": "cpu", **overrides})
    record = finetune(Evaluator(protocol), random_init(VIT, FMNIST, seed=0))
    return record, trained[0], calls


def test_the_classifier_and_every_part_of_the_backbone_train(monkeypatch: pytest.MonkeyPatch) -> None:
    subject = random_init(VIT, FMNIST, seed=0)
    record, model, _ = run_finetune(monkeypatch)
    ft = load_protocol().finetune
    torch.manual_seed(ft.seed)  # finetune() seeds the classifier's initialisation the same way
    start = finetune_model(subject, ft.rule(VIT), ft.head_init_std)
    for name in ("head.weight", "patch_embed.proj.0.weight", "blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.weight"):
        assert not torch.equal(model.state_dict()[name], start.state_dict()[name]), f"{name} did not change"
    assert (record["steps"], record["batch_size"], record["train_images"]) == (3, 64, 64)
    assert not torch.equal(subject.model.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)


def test_layer_decay_gives_earlier_blocks_smaller_lr_and_resnets_none() -> None:
    vit = build_model(VIT, in_chans=1)
    with_classifier(vit, 10, 2e-5)
    groups = parameter_groups(vit, 0.65, 0.05)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    named = dict(vit.named_parameters())
    stem, first, last = (
        scale[id(named[f"{n}.weight"])] for n in ("patch_embed.proj.0", "blocks.0.attn.qkv", "blocks.1.attn.qkv")
    )
    assert stem == pytest.approx(0.65**3) and first == pytest.approx(0.65**2) and last == pytest.approx(0.65)
    assert scale[id(named["head.weight"])] == scale[id(named["head.bias"])] == 1.0
    assert scale[id(named["norm.weight"])] == last  # timm groups the final norm with the last block
    assert scale[id(named["cls_token"])] == scale[id(named["pos_embed"])] == stem
    assert decay[id(named["head.weight"])] == 0.05
    assert decay[id(named["head.bias"])] == decay[id(named["pos_embed"])] == decay[id(named["cls_token"])] == 0.0
    resnet = build_model("resnet18_cifar", in_chans=1)
    with_classifier(resnet, 10, 2e-5)
    assert resnet.fc.out_features == 10
    assert all("lr_scale" not in g for g in parameter_groups(resnet, None, 0.05))


def test_the_scaled_lr_reaches_each_group(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[float, float]] = []
    step = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        seen.append({g["lr_scale"]: g["lr"] for g in self.param_groups})
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    record, _, _ = run_finetune(monkeypatch)
    plan = schedule(load_protocol(QUICK).finetune.rule(VIT), load_protocol().finetune, 64)
    assert record["layer_decay"] == 0.65 and len(seen) == 3
    for i, lrs in enumerate(seen):
        for lr_scale, lr in lrs.items():
            assert lr == pytest.approx(plan.lr(i) * lr_scale)
    assert len(seen[0]) == 4  # stem, two blocks, norm + classifier


def test_mixup_and_label_smoothing_are_applied_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    mae = {"finetune.mixup": 0.8, "finetune.cutmix": 1.0}  # MAE's alphas over the CPU rule's; smoothing 0.1
    _, _, mixed = run_finetune(monkeypatch, **mae)
    for call in mixed:
        targets = call["targets"]
        assert call["label_smoothing"] == 0.0 and targets.shape == (64, 10)  # timm's soft targets
        assert torch.allclose(targets.sum(1), torch.ones(64)) and targets.min() >= 0.1 / 10 - 1e-6
    assert any((c["targets"].max(1).values < 0.9 + 0.01 - 1e-6).any() for c in mixed)  # two labels mixed
    off = {"finetune.mixup": 0.0, "finetune.cutmix": 0.0}
    _, _, smoothed = run_finetune(monkeypatch, **off)
    assert all(c["targets"].dtype == torch.int64 and c["label_smoothing"] == 0.1 for c in smoothed)
    _, _, plain = run_finetune(monkeypatch, **off, **{"finetune.label_smoothing": 0.0})
    assert all(c["targets"].dtype == torch.int64 and c["label_smoothing"] == 0.0 for c in plain)


def test_the_budget_keeps_the_schedule_shape() -> None:
    ft = load_protocol().finetune
    rule = ft.rule(VIT)
    assert rule.budget is not None and ft.rule("vit_base_patch16_224").budget is None
    deep = ft.rule("vit_deepstem_micro_28")  # the quick start's backbone takes the CPU rule too
    assert dataclasses.replace(deep, backbone=rule.backbone) == rule
    plan = schedule(dataclasses.replace(rule, budget=200), ft, 60000)
    assert (plan.total, plan.warmup) == (200, round(200 * rule.warmup_epochs / rule.epochs))
    assert plan.peak_lr == pytest.approx(rule.blr * rule.batch_size / 256) and plan.lr(200) == pytest.approx(ft.min_lr)
    full = schedule(dataclasses.replace(rule, budget=None), ft, 60000)
    assert full.total == rule.epochs * (60000 // rule.batch_size)
    assert load_protocol({"finetune.budget": 7}).finetune.rule("vit_base_patch16_224").budget == 7


def test_each_backbone_has_its_own_regularisation_and_the_command_line_overrides_all() -> None:
    ft = load_protocol().finetune
    vit_b, cpu = ft.rule("vit_base_patch16_224"), ft.rule(VIT)
    assert (vit_b.mixup, vit_b.cutmix, vit_b.crop_scale) == (0.8, 1.0, [0.08, 1.0])  # MAE FINETUNE.md
    assert not cpu.mixes and cpu.crop_scale != vit_b.crop_scale  # the CPU budget's own
    given = load_protocol({"finetune.mixup": 0.2, "finetune.crop_scale": [0.5, 1.0]}).finetune
    for backbone in ("vit_base_patch16_224", VIT):
        rule = given.rule(backbone)
        assert (rule.mixup, rule.crop_scale) == (0.2, [0.5, 1.0]) and rule.mixes
        assert rule.cutmix == ft.rule(backbone).cutmix  # not given: the rule's own


# --------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "backbone.pth"
    torch.save(build_model(VIT, in_chans=1).state_dict(), path)
    return path


ARGS = ["train_limit=64", "test_limit=32", "device=cpu"]


def test_finetune_cli_writes_the_record(weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["finetune", f"ckpt={weights}", f"backbone={VIT}", "data.name=fmnist", f"out={tmp_path}", *ARGS]
    assert eval_main([*argv, "finetune.budget=2"]) == 0
    record = json.loads(RunDir(tmp_path).eval_record("finetune").read_text())
    assert (record["evaluation"], record["protocol"], record["steps"]) == ("offline", "fine-tuning", 2)
    assert 0 <= record["finetune_top1"] <= 1 and record["test_images"] == 32
    assert record["layer_decay"] == 0.65 and record["subject"]["backbone"] == VIT
    assert record["protocol_settings"]["finetune"]["budget"] == 2 and "provenance" in record
    assert "offline fine-tuning top-1" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, text",
    [
        (["finetune.budget=0"], "budget=0 must be a positive number of optimizer steps"),
        (["finetune.budget=-5"], "budget=-5 must be a positive number of optimizer steps"),
        (["finetune.budget=abc"], "finetune.budget"),
        (["finetune.budgt=3"], "did you mean 'finetune.budget'"),
        (["finetune.mixup=-1"], "finetune: mixup and cutmix are alphas"),
        (["finetune.crop_scale=[0.5,0.2]"], "finetune: crop_scale must be [min, max] in (0, 1]"),
        (["train_limit=1", "finetune.budget=2", "finetune.mixup=0.8"], "has 1 image(s): too few for a batch"),
    ],
)
def test_finetune_bad_input_is_one_line(
    weights: Path, args: list[str], text: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    quick = [a for a in ARGS if a.split("=")[0] not in {arg.split("=")[0] for arg in args}]
    argv = ["finetune", f"ckpt={weights}", f"backbone={VIT}", "data.name=fmnist", f"out={tmp_path}", *quick, *args]
    assert text in one_line_error(eval_main, argv, capsys)


def test_finetune_of_a_missing_run_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert "is not a folder" in one_line_error(eval_main, ["finetune", f"run={tmp_path / 'nope'}"], capsys)
