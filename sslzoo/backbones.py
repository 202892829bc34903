"""Backbones by name: timm ViTs and torchvision ResNets, plus small-input variants.

``create_backbone(name)`` returns a :class:`Backbone` whose ``.model`` is the plain
timm/torchvision model with its classifier removed; ``backbone.pt`` is that
model's ``state_dict`` and loads strictly into ``build_model(name)``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import timm
import torch
import torchvision
from lightly.models.utils import get_at_index
from timm.layers import PatchEmbed, build_sincos2d_pos_embed
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from sslzoo.errors import UserError
from sslzoo.registry import Registry

# --------------------------------------------------------------------------- small ViTs
# Small-patch ViTs for 28/32 px inputs, registered in timm so that
# ``timm.create_model`` builds them like any other timm model.


def _small_vit(architecture: dict, kwargs: dict) -> VisionTransformer:
    # timm passes its pretrained-weight bookkeeping too; these models have no weights.
    for key in ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    return VisionTransformer(**{**architecture, **kwargs})


@register_model
def vit_tiny_patch4_32(**kwargs) -> VisionTransformer:
    """ViT-Ti (192 wide, 12 blocks, 3 heads) with 4x4 patches on 32 px (CIFAR/STL)."""
    return _small_vit(dict(img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3), kwargs)


@register_model
def vit_micro_patch4_28(**kwargs) -> VisionTransformer:
    """A 4-block, 128-wide ViT (4 heads) with 4x4 patches on 28 px: Fashion-MNIST on a 2-core CPU.

    Initialised as the original ViT (Dosovitskiy et al. 2021; timm's "jax" scheme: xavier-uniform
    linear layers, lecun-normal patch projection) rather than timm's default truncated normal with
    std 0.02, which DINO and DeiT chose for 384-768 wide ViTs: at width 128 it is 4x below
    1/sqrt(width), and the random network maps Fashion-MNIST to features of effective rank 2.5
    (5.7 with this init), from which DINO's student collapsed to a constant output on the CPU budget.
    """
    return _small_vit(dict(img_size=28, patch_size=4, embed_dim=128, depth=4, num_heads=4, weight_init="jax"), kwargs)


class ConvStem(PatchEmbed):
    """A convolutional stem in place of the patchify projection (Xiao et al. 2021, "Early
    convolutions help transformers see better", §3): 3x3 convolutions of ``stem_channels``, each with
    BN and ReLU, with ``stem_strides`` (stride 2 each, unless given) down to one token per
    ``patch_size`` pixels, then a 1x1 convolution to the width.

    Everything else (the token grid, dynamic image sizes, the NHWC output) is timm's PatchEmbed,
    so iBOT's masks and the attention maps see the same 7x7 grid as with 4x4 patches.
    """

    def __init__(
        self, *args, stem_channels: tuple[int, ...] = (), stem_strides: tuple[int, ...] | None = None, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        strides = stem_strides or (2,) * len(stem_channels)
        if (
            len(strides) != len(stem_channels)
            or math.prod(strides) != self.patch_size[0]
            or self.patch_size[0] != self.patch_size[1]
        ):
            raise ValueError(f"convolutions of strides {strides} cannot make {self.patch_size} patches")
        layers: list[nn.Module] = []
        in_chans = self.proj.in_channels
        for channels, stride in zip(stem_channels, strides):
            layers += [
                nn.Conv2d(in_chans, channels, kernel_size=3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            ]
            in_chans = channels
        layers.append(nn.Conv2d(in_chans, self.proj.out_channels, kernel_size=1))
        self.proj = nn.Sequential(*layers)


@register_model
def vit_convstem_micro_28(**kwargs) -> VisionTransformer:
    """A 2-block, 128-wide ViT (4 heads) on a convolutional stem (:class:`ConvStem`, 64 and 128
    channels) for 28 px: the token grid (7x7) and initialisation of ``vit_micro_patch4_28`` at about
    half its cost per image, and the convolutions' inductive bias (Xiao et al. 2021) learn faster
    on the CPU budget (README, "Side-by-side benchmark")."""
    stem = functools.partial(ConvStem, stem_channels=(64, 128))
    return _small_vit(
        dict(img_size=28, patch_size=4, embed_dim=128, depth=2, num_heads=4, weight_init="jax", embed_layer=stem),
        kwargs,
    )


@register_model
def vit_deepstem_micro_28(**kwargs) -> VisionTransformer:
    """One 128-wide transformer block (4 heads) on a deeper convolutional stem for 28 px: 3x3
    convolutions of 32, 64, 128 and 128 channels with strides 1, 2, 2, 1, then the 1x1 projection.
    Xiao et al.'s trade (2021, §3: a conv stem in place of one transformer block) applied to
    ``vit_convstem_micro_28``: the same 7x7 token grid at about its cost per image (README,
    "Side-by-side benchmark", measures both)."""
    stem = functools.partial(ConvStem, stem_channels=(32, 64, 128, 128), stem_strides=(1, 2, 2, 1))
    return _small_vit(
        dict(img_size=28, patch_size=4, embed_dim=128, depth=1, num_heads=4, weight_init="jax", embed_layer=stem),
        kwargs,
    )


# --------------------------------------------------------------------------- registry

ModelFactory = Callable[..., nn.Module]
MODELS: Registry[tuple[str, ModelFactory]] = Registry("backbone")


def _timm_vit(name: str) -> ModelFactory:
    def build(in_chans: int = 3, drop_path: float = 0.0) -> nn.Module:
        # dynamic_img_size: timm interpolates the position embeddings for crops of
        # any size (96 px local crops on a 224 px model), as DINO's interpolate_pos_encoding.
        return timm.create_model(
            name,
            pretrained=False,
            num_classes=0,
            in_chans=in_chans,
            drop_path_rate=drop_path,
            dynamic_img_size=True,
        )

    return build


def _torchvision_resnet(name: str, small_input: bool) -> ModelFactory:
    def build(in_chans: int = 3, drop_path: float = 0.0) -> nn.Module:
        del drop_path  # ResNets have no stochastic depth
        model = getattr(torchvision.models, name)(weights=None)
        if small_input:
            # 28/32 px inputs: a 3x3 stride-1 stem and no max-pool (SimCLR Appendix B.9).
            model.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
        elif in_chans != 3:
            model.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        model.fc = nn.Identity()
        return model

    return build


for _name in (
    "vit_small_patch16_224",
    "vit_base_patch16_224",
    "vit_tiny_patch4_32",
    "vit_micro_patch4_28",
    "vit_convstem_micro_28",
    "vit_deepstem_micro_28",
):
    MODELS.register(_name)(("vit", _timm_vit(_name)))
for _name in ("resnet18", "resnet50"):
    MODELS.register(_name)(("resnet", _torchvision_resnet(_name, small_input=False)))
    MODELS.register(f"{_name}_cifar")(("resnet", _torchvision_resnet(_name, small_input=True)))


def build_model(name: str, in_chans: int = 3, drop_path: float = 0.0) -> nn.Module:
    """The plain timm/torchvision model named ``name``, without classifier."""
    _, factory = MODELS.get(name)
    return factory(in_chans=in_chans, drop_path=drop_path)


def feature_dim(model: nn.Module) -> int:
    if isinstance(model, VisionTransformer):
        return model.embed_dim
    return model.inplanes  # a torchvision ResNet's width after its last stage


class Backbone(nn.Module):
    """A timm ViT or torchvision ResNet with one pooled-feature interface.

    ``forward`` gives the pooled features ([CLS] after the final norm for ViTs, the
    global average pool for ResNets). ViTs also expose ``forward_tokens``.
    """

    def __init__(self, name: str, in_chans: int = 3, drop_path: float = 0.0) -> None:
        super().__init__()
        self.name = name
        self.kind, _ = MODELS.get(name)
        self.model = build_model(name, in_chans=in_chans, drop_path=drop_path)
        self.embed_dim = feature_dim(self.model)

    @property
    def is_vit(self) -> bool:
        return self.kind == "vit"

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def forward_tokens(
        self, x: Tensor, mask: Tensor | None = None, mask_token: Tensor | None = None, keep: Tensor | None = None
    ) -> Tensor:
        """Output tokens (B, 1 + H*W, D) of a ViT after the final norm.

        ``mask`` (B, H, W), if given, replaces the masked patch embeddings with
        ``mask_token`` after the patch projection and before the position
        embeddings are added (iBOT, BEiT).

        ``keep`` (B, K), if given, are the indices (row-major in the H x W grid) of the only patches
        the blocks see, after the position embeddings (MAE §3): the output is (B, 1 + K, D), the
        prefix tokens first, then the kept patches in ``keep``'s order. The pixels of the other
        patches are zeroed before the patch embedding: a stem whose receptive fields overlap
        (:class:`ConvStem`'s 3x3 convolutions reach 3 pixels into the patches above and to the
        left) would otherwise leak them into the kept tokens; a patchify projection is unchanged.
        """
        if not self.is_vit:
            raise TypeError(f"{self.name} is not a ViT: it has no tokens")
        vit = self.model
        if keep is not None:
            x = x * self.visible_pixels(keep, x.shape[-2:]).to(x.dtype)
        tokens = vit.patch_embed(x)  # (B, H, W, D) with dynamic_img_size
        if mask is not None:
            tokens = torch.where(mask.unsqueeze(-1), mask_token.to(tokens.dtype), tokens)
        tokens = vit.patch_drop(vit._pos_embed(tokens))
        if keep is not None:
            prefix = vit.num_prefix_tokens
            tokens = torch.cat([tokens[:, :prefix], get_at_index(tokens[:, prefix:], keep)], dim=1)
        return vit.norm(vit.blocks(vit.norm_pre(tokens)))

    def visible_pixels(self, keep: Tensor, size: tuple[int, int]) -> Tensor:
        """(B, 1, height, width): 1 on the pixels of the patches in ``keep``, 0 elsewhere."""
        patch = self.model.patch_embed.patch_size
        grid = (size[0] // patch[0], size[1] // patch[1])
        visible = torch.zeros(len(keep), grid[0] * grid[1], device=keep.device).scatter(1, keep, 1.0)
        return visible.view(-1, 1, *grid).repeat_interleave(patch[0], dim=2).repeat_interleave(patch[1], dim=3)

    def patch_grid(self, size: int) -> tuple[int, int]:
        """The (H, W) patch grid of a square crop of ``size`` pixels."""
        patch = self.model.patch_embed.patch_size
        return size // patch[0], size // patch[1]


def create_backbone(name: str, in_chans: int = 3, drop_path: float = 0.0) -> Backbone:
    return Backbone(name, in_chans=in_chans, drop_path=drop_path)


# --------------------------------------------------------------------------- MoCo v3's ViT and backbone options
# MoCo v3 (Chen, Xie, He 2021, §4 and moco-v3 vits.py) changes the ViT: 12 heads in
# ViT-S, its own initialisation, a fixed 2-D sin-cos position embedding and a frozen
# random patch projection. The last two are options of the method (applied below);
# the architecture and the initialisation are the backbone name's.


@register_model
def vit_small_12h_patch16_224(**kwargs) -> VisionTransformer:
    """ViT-S/16 as MoCo v3 defines it: 12 heads of 32 dims (DeiT-S has 6), MoCo v3's initialisation."""
    # weight_init="moco": timm's port of vits.py's init (xavier-uniform, q/k/v as three
    # matrices), which leaves out the patch projection: initialised here as vits.py does.
    model = _small_vit(
        dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=12, weight_init="moco"), kwargs
    )
    init_patch_embed_xavier(model)
    return model


MODELS.register("vit_small_12h_patch16_224")(("vit", _timm_vit("vit_small_12h_patch16_224")))


@torch.no_grad()
def init_patch_embed_xavier(vit: VisionTransformer) -> None:
    """Xavier-uniform init of the patch projection seen as a linear map of a flattened patch, zero bias (vits.py)."""
    proj = vit.patch_embed.proj
    fan_in = proj.weight[0].numel()  # channels x patch height x patch width
    bound = math.sqrt(6.0 / (fan_in + proj.out_channels))
    nn.init.uniform_(proj.weight, -bound, bound)
    nn.init.zeros_(proj.bias)


@torch.no_grad()
def use_sincos_pos_embed(vit: VisionTransformer) -> None:
    """Replace the learned position embedding by a fixed 2-D sin-cos one (MoCo v3 §4, vits.py).

    Per patch (row r, column c) and frequency w_d = 1 / 10000^(d / (D/4)):
    [sin(r w), cos(r w), sin(c w), cos(c w)]; the [CLS] slot gets zeros. timm builds the
    same values in the order [sin r, sin c, cos r, cos c]; they are regrouped to vits.py's.
    """
    grid_h, grid_w = vit.patch_embed.grid_size
    dim = vit.embed_dim
    table = build_sincos2d_pos_embed([grid_h, grid_w], dim)  # (H*W, D): [sin r, sin c, cos r, cos c]
    table = table.view(grid_h * grid_w, 2, 2, dim // 4).transpose(1, 2).reshape(grid_h * grid_w, dim)
    prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
    pos_embed = torch.cat([table.new_zeros(prefix, dim), table])
    vit.pos_embed.copy_(pos_embed.unsqueeze(0))
    vit.pos_embed.requires_grad_(False)


def freeze_patch_embed(vit: VisionTransformer) -> None:
    """Stop the gradient at the patch projection: it stays random (MoCo v3 §4.1, main_moco.py --stop-grad-conv1)."""
    vit.patch_embed.requires_grad_(False)


@torch.no_grad()
def zero_init_residual(resnet: nn.Module) -> None:
    """Zero the scale of each residual branch's last BN, so every block starts as the identity
    (Goyal et al. 2017; torchvision's zero_init_residual=True, which MoCo v3's main_moco.py sets)."""
    for module in resnet.modules():
        if isinstance(module, torchvision.models.resnet.Bottleneck):
            nn.init.zeros_(module.bn3.weight)
        elif isinstance(module, torchvision.models.resnet.BasicBlock):
            nn.init.zeros_(module.bn2.weight)


def check_zero_init_residual(on: bool, backbone: str) -> None:
    """Refuse ``method.zero_init_residual: true`` on a backbone that is not a ResNet."""
    if on and MODELS.get(backbone)[0] != "resnet":
        raise UserError(f"method.zero_init_residual applies to ResNets, not {backbone}: set it false")
