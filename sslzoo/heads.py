"""Projection and prediction heads, built from lightly's blocks.

- :func:`dino_head`: DINO's 3-layer GELU MLP, L2-normalised bottleneck and
  weight-normalised prototype layer without bias (DINO §3.1, main_dino.py's DINOHead).
- :func:`mlp_head`: bias-free Linear-BN-ReLU blocks, the shape of BYOL's projector and
  predictor, SimCLR's projection head and MoCo v3's projector and predictor.
"""

from __future__ import annotations

from lightly.models.modules.heads import DINOProjectionHead, ProjectionHead
from torch import nn


def dino_head_settings(
    in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int, norm_last_layer: bool, batch_norm: bool = False
) -> dict:
    """lightly's DINOProjectionHead arguments for DINO's head; ``norm_last_layer`` fixes the prototypes'
    norms to 1 (weight_g frozen); ``batch_norm`` adds BN after the hidden layers (main_dino.py
    ``--use_bn_in_head``); the Linear layers before it lose the bias they have in DINOHead, which BN cancels."""
    return dict(
        input_dim=in_dim,
        hidden_dim=hidden_dim,
        bottleneck_dim=bottleneck_dim,
        output_dim=out_dim,
        batch_norm=batch_norm,
        norm_last_layer=norm_last_layer,
    )


def dino_head(
    in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int, norm_last_layer: bool, batch_norm: bool = False
) -> DINOProjectionHead:
    """The DINO head (:func:`dino_head_settings`)."""
    return DINOProjectionHead(
        **dino_head_settings(in_dim, out_dim, hidden_dim, bottleneck_dim, norm_last_layer, batch_norm)
    )


def mlp_head(
    dims: list[int],
    last_bn: bool = False,
    last_bn_affine: bool = True,
    last_bn_shift: bool = True,
) -> ProjectionHead:
    """An MLP ``dims[0] -> ... -> dims[-1]``: hidden blocks Linear-BN-ReLU, last block Linear(-BN).

    No Linear layer has a bias, as in the official heads built from it: moco-v3 builder.py
    ``_build_mlp`` (``bias=False`` throughout), SimCLR's model.py ProjectionHead (no bias before
    BN) and BYOL's Haiku MLP (none on its output layer; its bias before BN is cancelled by the BN).
    lightly's ProjectionHead alone would add one to a last block without BN.
    ``last_bn_affine=False`` gives MoCo v3's final BN without learnable scale and shift;
    ``last_bn_shift=False`` SimCLR's, which scales but does not shift (BatchNorm with center=False).
    """
    blocks = [
        (d_in, d_out, nn.BatchNorm1d(d_out), nn.ReLU(inplace=True), False) for d_in, d_out in zip(dims[:-2], dims[1:-1])
    ]
    last_norm = nn.BatchNorm1d(dims[-1], affine=last_bn_affine) if last_bn else None
    if last_norm is not None and last_norm.affine and not last_bn_shift:
        last_norm.register_parameter("bias", None)  # scale only; older torch lacks BatchNorm(bias=False)
    blocks.append((dims[-2], dims[-1], last_norm, None, False))
    return ProjectionHead(blocks)
