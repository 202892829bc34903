"""The teaching lab's figures: attention maths on constructed inputs, and each command on a tiny run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import one_line_error

from sslzoo.backbones import build_model
from sslzoo.config import RunConfig, to_yaml
from sslzoo.methods import METHODS
from sslzoo.recipes import load_config
from sslzoo.viz.__main__ import main
from sslzoo.viz.attention import cls_attention, last_block_attention, mass_mask
from sslzoo.viz.runs import Run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_SIGNATURE


# --------------------------------------------------------------------------- attention maths


def test_recomputed_attention_reproduces_the_fused_block_output() -> None:
    """A @ v through the output projection must give what timm's (fused) attention returned."""
    torch.manual_seed(0)
    vit = build_model("vit_micro_patch4_28", in_chans=1).eval()
    images = torch.randn(3, 1, 28, 28)
    attn = vit.blocks[-1].attn
    seen: dict[str, torch.Tensor] = {}
    handle = attn.register_forward_hook(lambda _m, args, out: seen.update(x=args[0], out=out))
    weights = last_block_attention(vit, images)
    vit(images)
    handle.remove()
    x = seen["x"]
    batch, tokens, dim = x.shape
    v = attn.qkv(x).reshape(batch, tokens, 3, attn.num_heads, attn.head_dim)[:, :, 2].transpose(1, 2)
    rebuilt = attn.proj((weights @ v).transpose(1, 2).reshape(batch, tokens, dim))
    assert weights.shape == (3, 4, 50, 50)
    assert torch.allclose(weights.sum(-1), torch.ones(3, 4, 50), atol=1e-5)
    assert torch.allclose(rebuilt, seen["out"], atol=1e-5)


def test_cls_attention_is_one_map_per_head_over_the_patch_grid() -> None:
    vit = build_model("vit_micro_patch4_28", in_chans=1).eval()
    maps = cls_attention(vit, torch.randn(2, 1, 28, 28))
    assert maps.shape == (2, 4, 7, 7)
    assert torch.all(maps.flatten(2).sum(-1) < 1)  # the [CLS] token's attention to itself is left out


def test_mass_mask_keeps_the_fewest_largest_patches_holding_the_mass() -> None:
    attention = torch.tensor([0.05, 0.5, 0.15, 0.3])
    assert mass_mask(attention, 0.6).tolist() == [False, True, False, True]  # 0.5 + 0.3 >= 0.6
    assert mass_mask(attention, 0.9).tolist() == [False, True, True, True]
    assert mass_mask(attention * 7, 0.6).tolist() == [False, True, False, True]  # unnormalised input


def test_mass_mask_is_minimal_on_random_maps() -> None:
    torch.manual_seed(1)
    attention = torch.rand(5, 49) ** 3
    keep = 0.6
    mask = mass_mask(attention, keep)
    share = attention / attention.sum(-1, keepdim=True)
    for row, kept in zip(share, mask):
        assert row[kept].sum() >= keep - 1e-6
        assert row[kept].min() >= row[~kept].max()  # the largest patches
        assert row[kept].sum() - row[kept].min() < keep  # dropping any kept patch loses the mass


# --------------------------------------------------------------------------- commands on a tiny run


@pytest.fixture
def tiny_run(tiny_config: Callable[..., RunConfig]) -> Path:
    from sslzoo.cli import train

    return train(tiny_config("dino_fmnist"))


def test_each_command_writes_a_png_from_a_tiny_run(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    records = Run.open(tiny_run).metrics
    for key in ("loss", "lr", "momentum", "teacher_temp", "embed_std", "embed_rank", "teacher_entropy", "kl"):
        assert all(key in r for r in records), key
    run = str(tiny_run)
    main(["attention", f"run={run}", "images=3"])
    assert is_png(tiny_run / "attention.png")
    main(["embeddings", f"runs={run},{run}", "labels=a,b", "points=60", f"out={tmp_path / 'emb.png'}"])
    assert is_png(tmp_path / "emb.png")
    main(["embeddings", f"runs={run}", "points=40", "projection=pca", f"out={tmp_path / 'pca.png'}"])
    assert is_png(tmp_path / "pca.png")
    main(["dynamics", f"runs={run}", f"out={tmp_path / 'dyn.png'}"])
    assert is_png(tmp_path / "dyn.png")
    main(["dynamics", f"runs={run}", "keys=teacher_entropy,kl", f"out={tmp_path / 'dyn2.png'}"])
    assert is_png(tmp_path / "dyn2.png")
    main(["cards", f"out={tmp_path / 'cards.png'}"])
    assert is_png(tmp_path / "cards.png")
    err = error_of(["dynamics", f"runs={run}", "keys=tau"], capsys)
    assert "no run logged tau" in err and "teacher_entropy" in err


def test_the_loop_logs_the_collapse_diagnostics_the_figures_plot(tiny_config: Callable[..., RunConfig]) -> None:
    from sslzoo.cli import train

    records = Run.open(train(tiny_config("byol_fmnist"))).metrics
    assert [r["step"] for r in records] == [1, 2, 3]
    for key in ("loss", "lr", "momentum", "embed_std", "embed_rank"):  # every method logs these
        assert all(key in r for r in records), key


def test_the_card_table_lists_every_registered_method(tmp_path: Path) -> None:
    main(["cards", f"out={tmp_path / 'cards.md'}"])
    table = (tmp_path / "cards.md").read_text().splitlines()
    assert table[0].startswith("| method | family | target network | predictor | negatives | loss |")
    rows = {line.split("|")[1].strip(): line for line in table[2:]}
    assert set(rows) == set(METHODS.names())
    assert METHODS.get("dino").card.anti_collapse in rows["dino"]


# --------------------------------------------------------------------------- errors: one line, exit 2


def error_of(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    return one_line_error(main, argv, capsys)


def test_bad_commands_and_options_fail_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert "did you mean 'attention'" in error_of(["attentoin"], capsys)
    assert "did you mean 'run'" in error_of(["attention", "rnu=x"], capsys)
    assert "needs run=" in error_of(["attention"], capsys)
    assert "not a run folder" in error_of(["attention", f"run={tmp_path}"], capsys)
    assert "images='many' must be an int" in error_of(["attention", f"run={tmp_path}", "images=many"], capsys)


def test_attention_refuses_a_resnet_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = load_config("dino_fmnist", {"model.backbone": "resnet18_cifar", "trainer.out_dir": str(tmp_path)})
    (tmp_path / "config.yaml").write_text(to_yaml(cfg))
    torch.save(build_model("resnet18_cifar", in_chans=1).state_dict(), tmp_path / "backbone.pt")
    assert "not a ViT" in error_of(["attention", f"run={tmp_path}"], capsys)
