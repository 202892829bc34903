"""Released weights (sslzoo.weights): every official layout, written here in small synthetic files,
loads into the matching backbone; mismatches and bad input fail in one line; nothing is downloaded."""

from __future__ import annotations

import argparse
import json
import socket
from pathlib import Path, PurePosixPath

import pytest
import torch
import torchvision
from torch import Tensor

from sslzoo.backbones import build_model
from sslzoo.errors import UserError
from sslzoo.eval.__main__ import main as eval_main
from sslzoo.weights import load_weights, read, released

VIT = "vit_micro_patch4_28"


def vit_state(seed: int, in_chans: int = 3) -> dict[str, Tensor]:
    torch.manual_seed(seed)
    return build_model(VIT, in_chans=in_chans).state_dict()


def head(prefix: str) -> dict[str, Tensor]:
    """A projection head's tensors, as the official wrappers name them."""
    return {f"{prefix}mlp.0.weight": torch.randn(8, 128), f"{prefix}last_layer.weight_g": torch.randn(4, 1)}


def dino_args() -> argparse.Namespace:
    return argparse.Namespace(arch="vit_micro", patch_size=4, out_dim=65536, lr=5e-4)


def same(model: torch.nn.Module, state: dict[str, Tensor]) -> bool:
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def write(tmp_path: Path, name: str, contents: object) -> Path:
    path = tmp_path / name
    torch.save(contents, path)
    return path


# --------------------------------------------------------------------------- layouts


def test_dino_backbone_only(tmp_path: Path) -> None:
    """dino_deitsmall16_pretrain.pth: the bare ViT state dict with timm's names."""
    teacher = vit_state(0)
    model, name, info = load_weights(str(write(tmp_path, "dino.pth", teacher)), VIT, None, 3)
    assert name == VIT and info["layout"] == "backbone state dict" and same(model, teacher)


@pytest.mark.parametrize("part", [None, "teacher", "student"])
def test_dino_and_ibot_full_checkpoints(tmp_path: Path, part: str | None) -> None:
    """main_dino.py / main_ibot.py: MultiCropWrapper state dicts (the student DDP-wrapped), args, heads dropped."""
    teacher, student = vit_state(0), vit_state(1)
    contents = {
        "teacher": {**{f"backbone.{k}": v for k, v in teacher.items()}, **head("head.")},
        "student": {**{f"module.backbone.{k}": v for k, v in student.items()}, **head("module.head.")},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]},
        "epoch": 100,
        "args": dino_args(),
        "dino_loss": {"center": torch.zeros(1, 8)},
    }
    model, _, info = load_weights(str(write(tmp_path, "checkpoint.pth", contents)), VIT, part, 3)
    assert same(model, student if part == "student" else teacher)
    assert info["part"] == (part or "teacher") and info["epoch"] == 100


def test_ibot_teacher_checkpoint(tmp_path: Path) -> None:
    """iBOT's checkpoint_teacher.pth: {"state_dict": teacher backbone}, with the mask token."""
    teacher = vit_state(0)
    contents = {"state_dict": {**teacher, "masked_embed": torch.zeros(128)}}
    model, _, info = load_weights(str(write(tmp_path, "checkpoint_teacher.pth", contents)), VIT, None, 3)
    assert same(model, teacher) and info["layout"].startswith("iBOT teacher")


@pytest.mark.parametrize("part", [None, "momentum_encoder"])
def test_mocov3_vit_checkpoint(tmp_path: Path, part: str | None) -> None:
    """main_moco.py: state_dict with module.base_encoder. / module.momentum_encoder. (projector as head.)."""
    base, momentum = vit_state(0), vit_state(1)
    state = {
        **{f"module.base_encoder.{k}": v for k, v in base.items()},
        **{f"module.momentum_encoder.{k}": v for k, v in momentum.items()},
        "module.base_encoder.head.0.weight": torch.randn(16, 128),
        "module.momentum_encoder.head.0.weight": torch.randn(16, 128),
        "module.predictor.0.weight": torch.randn(16, 16),
    }
    contents = {"epoch": 300, "arch": "vit_micro", "state_dict": state, "optimizer": {}, "scaler": {}}
    model, _, info = load_weights(str(write(tmp_path, "vit-s-300ep.pth.tar", contents)), VIT, part, 3)
    assert same(model, momentum if part else base) and info["layout"] == "MoCo v3 checkpoint"


@pytest.mark.parametrize("full", [False, True])
def test_mae_checkpoint_drops_its_decoder(tmp_path: Path, full: bool) -> None:
    """mae_pretrain_vit_base.pth: {"model": encoder}; a main_pretrain.py checkpoint (and the visualize
    files) also hold the decoder and the mask token."""
    encoder = vit_state(0)
    decoder = {
        "mask_token": torch.zeros(1, 1, 64),
        "decoder_embed.weight": torch.randn(64, 128),
        "decoder_blocks.0.attn.qkv.weight": torch.randn(192, 64),
        "decoder_pred.weight": torch.randn(48, 64),
    }
    contents = {"model": {**encoder, **decoder} if full else encoder, "epoch": 799}
    model, _, info = load_weights(str(write(tmp_path, "mae.pth", contents)), VIT, None, 3)
    assert same(model, encoder) and info["layout"] == "MAE checkpoint (model)" and info["epoch"] == 799
    assert "leave part= out" in message(released, contents, "teacher")


def test_mae_finetuned_classifier_is_refused_with_the_fix(tmp_path: Path) -> None:
    """mae_finetuned_vit_base.pth: the encoder with fc_norm (after average pooling) in place of norm, and a head."""
    encoder = vit_state(0)
    finetuned = {k.replace("norm.", "fc_norm.") if k.startswith("norm.") else k: v for k, v in encoder.items()}
    finetuned["head.weight"] = torch.randn(1000, 128)
    path = str(write(tmp_path, "mae_finetuned.pth", {"model": finetuned}))
    text = message(load_weights, path, VIT, None, 3)
    assert "fine-tuned classifier" in text and "'norm.weight'" in text and "pre-trained checkpoint" in text


def test_mae_training_checkpoint_names_its_architecture() -> None:
    contents = {"model": {"cls_token": torch.zeros(1, 1, 4)}, "args": argparse.Namespace(model="mae_vit_base_patch16")}
    assert released(contents).arch == "vit_base_patch16_224"


def test_mocov3_resnet_checkpoint_drops_its_fc_projector(tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = build_model("resnet18").state_dict()
    state = {f"module.base_encoder.{k}": v for k, v in base.items()}
    state |= {"module.base_encoder.fc.0.weight": torch.randn(32, 512), "module.predictor.0.weight": torch.randn(4, 4)}
    model, _, _ = load_weights(str(write(tmp_path, "r-50.pth.tar", {"state_dict": state})), "resnet18", None, 3)
    assert same(model, base)


def test_torchvision_resnet_drops_its_classifier(tmp_path: Path) -> None:
    """BYOL / SimCLR weights converted to torchvision's format: a full resnet with its fc classifier."""
    torch.manual_seed(0)
    full = torchvision.models.resnet18(weights=None).state_dict()
    assert "fc.weight" in full
    model, _, _ = load_weights(str(write(tmp_path, "byol_r18.pth", full)), "resnet18", None, 3)
    assert same(model, {k: v for k, v in full.items() if not k.startswith("fc.")})
    converted = {k: v for k, v in full.items() if not k.endswith("num_batches_tracked")}  # often left out
    model, _, _ = load_weights(str(write(tmp_path, "simclr_r18.pth", converted)), "resnet18", None, 3)
    assert torch.equal(model.state_dict()["conv1.weight"], full["conv1.weight"])


def test_files_that_name_their_architecture() -> None:
    """DINO/iBOT args (arch, patch_size) and MoCo v3's arch map to our backbones; MoCo's ViT-S has 12 heads."""
    sd = {"cls_token": torch.zeros(1, 1, 4)}
    dino = {"teacher": sd, "args": argparse.Namespace(arch="vit_small", patch_size=16)}
    assert released(dino).arch == "vit_small_patch16_224"
    assert released({"teacher": sd, "args": argparse.Namespace(arch="vit_base", patch_size=8)}).arch is None
    moco = {"arch": "vit_small", "state_dict": {"module.base_encoder.cls_token": sd["cls_token"]}}
    assert released(moco).arch == "vit_small_12h_patch16_224"


# --------------------------------------------------------------------------- mismatches: one line


def message(fn, *args) -> str:
    with pytest.raises(UserError) as info:
        fn(*args)
    text = str(info.value)
    assert len(text.splitlines()) == 1
    return text


def test_mismatches_name_the_first_key_and_the_fix(tmp_path: Path) -> None:
    path = str(write(tmp_path, "dino.pth", vit_state(0)))
    wrong = message(load_weights, path, "vit_tiny_patch4_32", None, 3)
    assert "'cls_token'" in wrong and "(1, 1, 128)" in wrong and "(1, 1, 192)" in wrong and "backbone=" in wrong
    channels = message(load_weights, path, VIT, None, 1)
    assert "patch_embed.proj.weight" in channels and "the data has 1 channel(s), the weights 3" in channels
    assert "backbone=" in message(load_weights, path, "resnet18", None, 3)
    assert "pass backbone=" in message(load_weights, path, None, None, 3)  # a bare state dict names no architecture
    assert "part=teacher" in message(load_weights, path, VIT, "teacher", 3)
    named = {"teacher": vit_state(0), "args": argparse.Namespace(arch="vit_small", patch_size=16)}
    assert "pass backbone=vit_small_patch16_224" in message(
        load_weights, str(write(tmp_path, "full.pth", named)), VIT, None, 3
    )
    assert "does not exist" in message(read, tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert "not a readable PyTorch checkpoint" in message(read, tmp_path / "junk.pth")
    refused = write(tmp_path, "pickled.pth", {"state_dict": vit_state(0), "where": PurePosixPath("/data")})
    assert "weights-only load refuses" in message(read, refused) and "PurePosixPath" in message(read, refused)
    assert "unrecognised checkpoint layout" in message(released, {"epoch": 3, "notes": "x"})


def test_timm_tags_fail_in_one_line_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(socket, "create_connection", offline)
    text = message(load_weights, "timm:vit_small_patch16_224.dino", None, None, 3)
    assert "cannot reach the model hub" in text and "ckpt=PATH" in text
    unknown = message(load_weights, "timm:vit_small_patch16_224.nope", None, None, 3)
    assert "not one of timm's pretrained tags" in unknown


# --------------------------------------------------------------------------- the command line


QUICK = ["train_limit=200", "test_limit=50", "knn.ks=[5]", "knn.headline_k=5", "linear.epochs=1"]


def test_eval_cli_on_official_weights(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """ckpt= a DINO full checkpoint on Fashion-MNIST (1 channel): the teacher's kNN and linear probe."""
    teacher = vit_state(0, in_chans=1)
    contents = {"teacher": {f"backbone.{k}": v for k, v in teacher.items()}, "args": dino_args(), "epoch": 7}
    path = write(tmp_path, "checkpoint.pth", contents)
    argv = ["all", f"ckpt={path}", f"backbone={VIT}", "data.name=fmnist", f"out={tmp_path / 'eval'}", *QUICK]
    assert eval_main(argv) == 0
    record = json.loads((tmp_path / "eval" / "eval_knn.json").read_text())
    assert record["subject"]["backbone"] == VIT
    assert record["subject"]["weights"]["part"] == "teacher" and record["subject"]["weights"]["step"] == "epoch 7"
    assert (tmp_path / "eval" / "eval_linear.json").is_file()


@pytest.mark.parametrize(
    "args, text",
    [
        (["ckpt=/no/such.pth", f"backbone={VIT}"], "does not exist"),
        (["ckpt=WEIGHTS", "backbone=vit_tiny_patch4_32", "data.name=fmnist"], "expects"),
        (["ckpt=WEIGHTS", "backbone=vit_mcro_patch4_28"], "did you mean 'vit_micro_patch4_28'"),
        (["ckpt=WEIGHTS", f"backbone={VIT}", "part=student", "data.name=fmnist"], "leave part= out"),
        (["ckpt=WEIGHTS", f"backbone={VIT}", "data.nmae=fmnist"], "data.name"),
        (["run=.", f"backbone={VIT}"], "applies to ckpt= weights"),
    ],
)
def test_eval_cli_bad_weights_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], text: str
) -> None:
    path = write(tmp_path, "w.pth", vit_state(0, in_chans=1))
    argv = ["knn", *(a.replace("WEIGHTS", str(path)) for a in args), *QUICK]
    with pytest.raises(SystemExit) as exit_info:
        eval_main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and text in err and len(err.strip().splitlines()) == 1
