"""The convolutional-stem ViT for 28 px (Xiao et al. 2021): the token grid, masking and features that
iBOT, the attention maps and the probes rely on."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sslzoo.backbones import ConvStem, build_model, create_backbone

NAME = "vit_convstem_micro_28"


def test_convstem_keeps_the_7x7_token_grid_of_4x4_patches() -> None:
    backbone = create_backbone(NAME, in_chans=1)
    assert backbone.is_vit and backbone.patch_grid(28) == (7, 7)
    tokens = backbone.forward_tokens(torch.randn(3, 1, 28, 28))
    assert tokens.shape == (3, 1 + 7 * 7, 128)
    local = backbone.forward_tokens(torch.randn(3, 1, 12, 12))  # a 12 px local crop: 3x3 tokens
    assert local.shape == (3, 1 + 3 * 3, 128)
    assert backbone(torch.randn(3, 1, 28, 28)).shape == (3, 128)


def test_convstem_is_stride_2_convolutions_with_bn_then_a_1x1_projection() -> None:
    stem = create_backbone(NAME, in_chans=1).model.patch_embed
    assert isinstance(stem, ConvStem)
    convs = [m for m in stem.proj if isinstance(m, nn.Conv2d)]
    assert [(c.kernel_size, c.stride, c.out_channels) for c in convs] == [
        ((3, 3), (2, 2), 64),
        ((3, 3), (2, 2), 128),
        ((1, 1), (1, 1), 128),
    ]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in stem.proj) == 2


@pytest.mark.parametrize(
    ("name", "rows"),
    [("vit_convstem_micro_28", (9, 15)), ("vit_deepstem_micro_28", (4, 20))],
)
def test_a_token_sees_past_its_patch_as_far_as_the_readme_says(name: str, rows: tuple[int, int]) -> None:
    """Token (3, 3) covers pixels 12-15; the stem's 3x3 convolutions reach 3 px above and to the left
    (conv stem), or 8 px above/left and 5 px below/right (deep stem): README, MAE's deviation row."""
    x = torch.randn(1, 1, 28, 28, requires_grad=True)
    build_model(name, in_chans=1).eval().patch_embed(x)[0, 3, 3].sum().backward()
    seen = x.grad[0, 0].abs() > 0
    for axis in (0, 1):
        idx = seen.any(dim=1 - axis).nonzero().flatten()
        assert (idx.min().item(), idx.max().item()) == rows


def test_masked_tokens_change_only_through_the_mask_token() -> None:
    backbone = create_backbone(NAME, in_chans=1).eval()
    x = torch.randn(2, 1, 28, 28)
    mask = torch.zeros(2, 7, 7, dtype=torch.bool)
    mask[:, 2:4, 2:4] = True
    token = torch.randn(128)
    with torch.no_grad():
        plain = backbone.forward_tokens(x)
        masked = backbone.forward_tokens(x, mask, token)
        unmasked = backbone.forward_tokens(x, torch.zeros_like(mask), token)
    assert torch.equal(plain, unmasked)
    assert not torch.allclose(plain, masked)


def test_stem_refuses_a_patch_size_its_strides_cannot_make() -> None:
    with pytest.raises(ValueError, match="cannot make"):
        ConvStem(img_size=28, patch_size=8, in_chans=1, embed_dim=16, stem_channels=(8, 16))
    with pytest.raises(ValueError, match="cannot make"):  # one stride for each convolution
        ConvStem(img_size=28, patch_size=4, in_chans=1, embed_dim=16, stem_channels=(8, 16), stem_strides=(4,))


def test_deepstem_trades_a_block_for_stride_1_convolutions_on_the_same_grid() -> None:
    backbone = create_backbone("vit_deepstem_micro_28", in_chans=1)
    convs = [m for m in backbone.model.patch_embed.proj if isinstance(m, nn.Conv2d)]
    assert [(c.stride[0], c.out_channels) for c in convs] == [(1, 32), (2, 64), (2, 128), (1, 128), (1, 128)]
    assert len(backbone.model.blocks) == 1 and backbone.patch_grid(28) == (7, 7)
    assert backbone.forward_tokens(torch.randn(2, 1, 28, 28)).shape == (2, 1 + 7 * 7, 128)
    assert backbone(torch.randn(2, 1, 12, 12)).shape == (2, 128)  # a local crop: 3x3 tokens


def test_backbone_state_dict_loads_strictly_into_the_plain_model() -> None:
    backbone = create_backbone(NAME, in_chans=1)
    build_model(NAME, in_chans=1).load_state_dict(backbone.model.state_dict(), strict=True)


@pytest.mark.parametrize(("name", "rates"), [("vit_deepstem_micro_28", [0.0]), ("vit_convstem_micro_28", [0.0, 0.1])])
def test_drop_path_rises_linearly_over_the_blocks_from_0(name: str, rates: list[float]) -> None:
    """timm's rule, which leaves the one-block deep stem without stochastic depth (the recipes' notes)."""
    model = build_model(name, in_chans=1, drop_path=0.1)
    found = [getattr(block.drop_path1, "drop_prob", 0.0) for block in model.blocks]
    assert found == pytest.approx(rates)
