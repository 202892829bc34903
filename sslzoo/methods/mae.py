"""MAE: masked autoencoders (He et al. 2022, §3 and Figure 1; facebookresearch/mae models_mae.py).

f = ViT encoder; g = light ViT decoder          # g sees every position, f only the visible ones
for x in loader:
    x = aug(x)                                  # one view: random resized crop, flip; no colour
    keep, m = random_masking(x, r)              # per image: keep a random (1 - r) N of the N patches
    z = f(x[keep])                              # [CLS] + visible patches, with their position embeddings
    u = scatter(e_[MASK], keep, W_e z)          # visible tokens back at their places, e_[MASK] elsewhere
    y = W_p g(u + pos)                          # pixels of every patch (fixed sin-cos position embeddings)
    t = patchify(x); t = (t - mean(t)) / std(t) # per patch (norm_pix_loss)
    loss = mean over removed patches of ||y - t||^2 / P
    loss.backward(); update(f, g)

f is evaluated, on whole images (no masking), by the linear probe and fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lightly.models.modules.masked_vision_transformer_decoder_timm import MaskedVisionTransformerDecoderTIMM
from lightly.models.modules.masked_vision_transformer_timm import init_weights
from lightly.models.utils import initialize_2d_sine_cosine_positional_embedding, patchify, set_at_index
from timm.layers import resample_abs_pos_embed
from torch import Tensor, nn

from sslzoo.backbones import Backbone
from sslzoo.errors import UserError
from sslzoo.losses.mae import MaskedPixelLoss
from sslzoo.masking import random_masking
from sslzoo.methods.base import METHODS, Method, MethodCard, MethodSetup, StepOutput
from sslzoo.schedules import Clock


@torch.no_grad()
def init_mae_encoder(vit: nn.Module) -> None:
    """models_mae.py ``initialize_weights`` on a timm ViT: fixed (frozen) 2-D sin-cos position embedding,
    xavier-uniform linear layers with zero biases, LayerNorms at 1 and 0, [CLS] ~ N(0, 0.02), and a
    patchify projection initialised as the linear map it is. A convolutional stem keeps its own init."""
    initialize_2d_sine_cosine_positional_embedding(vit.pos_embed, num_prefix_tokens=vit.num_prefix_tokens)
    nn.init.normal_(vit.cls_token, std=0.02)
    vit.apply(init_weights)  # lightly's port of models_mae.py _init_weights
    proj = vit.patch_embed.proj
    if isinstance(proj, nn.Conv2d):
        nn.init.xavier_uniform_(proj.weight.view(proj.out_channels, -1))


@METHODS.register("mae")
class MAE(Method):
    @dataclass
    class Config:
        name: str
        mask_ratio: float  # r, the share of patches removed
        norm_pix_loss: bool  # targets normalised per patch
        decoder_dim: int  # the decoder's width
        decoder_depth: int  # its blocks
        decoder_heads: int  # its attention heads

    card = MethodCard(
        family="masked modelling",
        target="the pixels of the removed patches (normalised per patch); no target network",
        predictor="a light ViT decoder over the encoded visible patches and mask tokens (8 blocks, 512 wide)",
        negatives="none",
        loss="mean squared error on the removed patches only",
        anti_collapse="reconstruction of the input: a constant representation cannot predict the pixels",
        crops="1 view (random resized crop 0.2-1, flip; no colour); 75% of its patches removed",
    )
    global_crops = 1

    def __init__(self, setup: MethodSetup) -> None:
        super().__init__(setup)
        hp = self.hp
        self.encoder = self.make_backbone()
        vit = self.encoder.model
        self.patch_size = vit.patch_embed.patch_size[0]
        self.num_patches = vit.patch_embed.num_patches
        self.channels = setup.in_chans
        self.decoder_embed = nn.Linear(vit.embed_dim, hp.decoder_dim)  # W_e
        self.decoder = MaskedVisionTransformerDecoderTIMM(  # e_[MASK], sin-cos position embeddings, blocks, norm
            self.num_patches, hp.decoder_dim, hp.decoder_depth, hp.decoder_heads, vit.num_prefix_tokens
        )
        self.decoder_pred = nn.Linear(hp.decoder_dim, self.patch_size**2 * self.channels)  # W_p
        for layer in (self.decoder_embed, self.decoder_pred):
            init_weights(layer)
        self.loss = MaskedPixelLoss(hp.norm_pix_loss)

    @classmethod
    def check_setup(cls, setup: MethodSetup) -> None:
        super().check_setup(setup)
        hp = setup.hp
        setup.require_vit("drops patch tokens")
        if not 0 < hp.mask_ratio < 1:
            raise UserError(f"method.mask_ratio={hp.mask_ratio} must lie strictly between 0 and 1 (MAE: 0.75)")
        if hp.decoder_dim % hp.decoder_heads or hp.decoder_depth < 1:
            raise UserError("method.decoder_dim must be a multiple of method.decoder_heads, decoder_depth at least 1")

    def make_backbone(self, drop_path: float | None = None, zero_init: bool = False) -> Backbone:
        backbone = super().make_backbone(drop_path, zero_init)
        init_mae_encoder(backbone.model)
        return backbone

    def reconstruct(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(y, m, z): predicted pixels of every patch (B, N, P), the mask (B, N) and the encoder's tokens."""
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        n = grid[0] * grid[1]
        keep, m = random_masking(len(x), n, self.hp.mask_ratio, x.device)
        z = self.encoder.forward_tokens(x, keep=keep)  # [CLS] + visible patches
        prefix = z.shape[1] - keep.shape[1]
        places = torch.cat([torch.arange(prefix, device=x.device).expand(len(x), -1), keep + prefix], dim=1)
        e = self.decoder_embed(z)
        u = set_at_index(self.decoder.mask_token.expand(len(x), prefix + n, -1).to(e.dtype), places, e)
        y = self.decoder_pred(self.decoder.decode(u + self.decoder_pos_embed(grid, prefix)))
        return y[:, prefix:], m, z

    def decoder_pos_embed(self, grid: tuple[int, int], prefix: int) -> Tensor:
        """The decoder's fixed sin-cos position embedding, resampled to another crop's patch grid as timm
        resamples the encoder's (dynamic_img_size): one recipe trains at any crop size, e.g. 20-px crops of
        28-px images (FixRes)."""
        native = self.encoder.model.patch_embed.grid_size
        if tuple(grid) == tuple(native):
            return self.decoder.pos_embed
        return resample_abs_pos_embed(self.decoder.pos_embed, list(grid), list(native), num_prefix_tokens=prefix)

    def training_step(self, views: list[Tensor], clock: Clock) -> StepOutput:
        (x,) = views
        y, m, z = self.reconstruct(x)
        loss = self.loss(y, patchify(x, self.patch_size), m)
        features = z[:, 0].detach()  # the encoder's [CLS] of the masked image
        return StepOutput(loss, {"mask_ratio": m.float().mean().item()}, embeddings=features, features=features)

    def eval_backbone(self) -> Backbone:
        return self.encoder  # MAE evaluates the encoder
