"""The teaching lab on released weights and a folder of pictures: attention maps at the pictures' own
shapes, embeddings of a picture folder, and one-line refusals of bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_viz import error_of  # one-line-error helper shared with the viz tests

from sslzoo.backbones import build_model
from sslzoo.viz.__main__ import main
from sslzoo.viz.attention import folder_images
from sslzoo.viz.images import open_source

VIT = "vit_micro_patch4_28"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_SIGNATURE


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A DINO full checkpoint of a 3-channel micro ViT, a ResNet's weights, and a folder of pictures
    in two class subfolders, of several sizes and modes."""
    root = tmp_path_factory.mktemp("lab")
    torch.manual_seed(0)
    teacher = build_model(VIT).state_dict()
    dino = root / "checkpoint.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in teacher.items()}, "epoch": 1}, dino)
    resnet = root / "resnet18.pth"
    torch.save(build_model("resnet18").state_dict(), resnet)
    rng = np.random.default_rng(0)
    shapes = {"cats/a.png": (40, 56, 3), "cats/b.jpg": (28, 28, 3), "dogs/c.png": (64, 48, 3), "dogs/d.png": (30, 30)}
    for name, shape in shapes.items():
        (root / "photos" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(root / "photos" / name)
    (root / "photos" / "notes.txt").write_text("not a picture")
    (root / "empty").mkdir()
    return {"dino": dino, "resnet": resnet, "photos": root / "photos", "empty": root / "empty", "root": root}


def test_attention_maps_of_released_weights_on_a_picture_folder(lab: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "attention.png"
    main(["attention", f"ckpt={lab['dino']}", f"backbone={VIT}", f"images={lab['photos']}", f"out={out}"])
    assert is_png(out)
    main(["attention", f"ckpt={lab['dino']}", f"backbone={VIT}", f"images={lab['photos'] / 'cats' / 'a.png'}"])
    assert is_png(lab["dino"].parent / "attention.png")  # beside the weights by default


def test_pictures_keep_their_shape_on_the_patch_grid(lab: dict[str, Path]) -> None:
    """The shorter side goes to size=, the longer follows, both trimmed to whole 4 px patches."""
    source = open_source(None, str(lab["dino"]), VIT, None, "attention")
    views, names = folder_images(source, lab["photos"], 28)
    assert names == ["a.png", "b.jpg", "c.png", "d.png"]
    assert [tuple(v.shape) for v in views] == [(3, 28, 36), (3, 28, 28), (3, 36, 28), (3, 28, 28)]
    large, _ = folder_images(source, lab["photos"] / "cats" / "b.jpg", 60)  # beyond the 28 px of the embedding
    assert tuple(large[0].shape) == (3, 60, 60)
    from sslzoo.viz.attention import cls_attention

    assert cls_attention(source.model, large[0][None]).shape == (1, 4, 15, 15)


def test_embeddings_of_a_picture_folder(lab: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "emb.png"
    main(
        ["embeddings", f"ckpt={lab['dino']}", f"backbone={VIT}", f"images={lab['photos']}", "projection=pca"]
        + [f"out={out}"]
    )
    assert is_png(out)


def test_bad_input_is_one_line(lab: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dino, photos = f"ckpt={lab['dino']}", f"images={lab['photos']}"
    assert "does not exist" in error_of(["attention", "ckpt=/no/such.pth", f"backbone={VIT}", photos], capsys)
    assert "must be an int" in error_of(["attention", dino, f"backbone={VIT}", "images=/no/such/folder"], capsys)
    assert "holds no pictures" in error_of(["attention", dino, f"backbone={VIT}", f"images={lab['empty']}"], capsys)
    assert "expects" in error_of(["attention", dino, "backbone=vit_tiny_patch4_32", photos], capsys)
    resnet = ["attention", f"ckpt={lab['resnet']}", "backbone=resnet18", photos]
    assert "not a ViT" in error_of(resnet, capsys)
    assert "pass images=FOLDER" in error_of(["attention", dino, f"backbone={VIT}", "images=3"], capsys)
    assert "needs run= (a run folder) or ckpt=" in error_of(["attention", photos], capsys)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"not a png")
    assert "cannot read the picture" in error_of(["attention", dino, f"backbone={VIT}", f"images={bad}"], capsys)
    assert "embeddings needs runs=" in error_of(["embeddings", photos], capsys)
    one = ["embeddings", dino, f"backbone={VIT}", f"images={lab['photos'] / 'cats' / 'a.png'}", "projection=pca"]
    assert "at least 2" in error_of(one, capsys)
