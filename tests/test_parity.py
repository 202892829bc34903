"""Parity with the official code, checked against its definitions written out here (none of it copied).

- heads and predictors: layer lists (types, shapes, bias flags, BN scale/shift) against the
  constructions of dino, bytedance/ibot, moco-v3, deepmind byol, google-research simclr and swav;
- iBOT's BN head: the loss of one head pass over all tokens of each backbone call (main_ibot.py);
- optimizers: steps against the official update rules (torch AdamW as dino/ibot/moco-v3 use it,
  moco-v3's LARS, which BYOL's optax LARS equals, SimCLR's LARS);
- the measured size of each deviation in the README's "Deviations from the official code".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightly.utils.lars import LARS as LightlyLARS
from torch import Tensor, nn

from sslzoo.build import build_method
from sslzoo.errors import UserError
from sslzoo.heads import dino_head
from sslzoo.methods.base import Method
from sslzoo.optim import apply_schedules, build_optimizer, parameter_groups
from sslzoo.recipes import load_config
from sslzoo.schedules import Clock, cosine, linear_warmup, warmup_cosine

IMAGENET_TRAIN = 1281167  # images per epoch of the ImageNet recipes


def built(recipe: str, **overrides: object) -> Method:
    cfg = load_config(recipe, {"trainer.device": "cpu", "resume": "none", "model.drop_path": 0.0, **overrides})
    return build_method(cfg)


# --------------------------------------------------------------------------- layer lists


def describe(layers: Iterable[nn.Module]) -> list[tuple]:
    """("Linear", in, out, bias[, "weight_norm", norm trainable]) | ("BatchNorm1d", n, scale, shift) | (activation,)."""
    rows = []
    for layer in layers:
        if isinstance(layer, nn.Linear):
            row = ("Linear", layer.in_features, layer.out_features, layer.bias is not None)
            if hasattr(layer, "weight_g"):
                row += ("weight_norm", layer.weight_g.requires_grad)
            rows.append(row)
        elif isinstance(layer, nn.BatchNorm1d):
            rows.append(("BatchNorm1d", layer.num_features, layer.weight is not None, layer.bias is not None))
        else:
            rows.append((type(layer).__name__,))
    return rows


def official_dino_head(
    in_dim: int, out_dim: int, norm: bool, norm_last_layer: bool, hidden: int = 2048, bottleneck: int = 256
) -> list[tuple]:
    """DINOHead with nlayers=3 (dino vision_transformer.py, ibot models/head.py): Linear (with bias),
    BN if asked, GELU, twice; Linear to the bottleneck; prototypes: weight-normed Linear without bias."""
    bn = [("BatchNorm1d", hidden, True, True)] if norm else []
    return [
        ("Linear", in_dim, hidden, True), *bn, ("GELU",),
        ("Linear", hidden, hidden, True), *bn, ("GELU",),
        ("Linear", hidden, bottleneck, True),
        ("Linear", bottleneck, out_dim, False, "weight_norm", not norm_last_layer),
    ]  # fmt: skip


def official_moco_mlp(num_layers: int, in_dim: int, mlp_dim: int, out_dim: int, last_bn: bool = True) -> list[tuple]:
    """moco-v3 builder.py _build_mlp: Linear(bias=False)-BN-ReLU blocks, last Linear(bias=False), BN(affine=False)."""
    rows = []
    for layer in range(num_layers):
        d_in = in_dim if layer == 0 else mlp_dim
        d_out = out_dim if layer == num_layers - 1 else mlp_dim
        rows.append(("Linear", d_in, d_out, False))
        if layer < num_layers - 1:
            rows += [("BatchNorm1d", d_out, True, True), ("ReLU",)]
        elif last_bn:
            rows.append(("BatchNorm1d", d_out, False, False))
    return rows


def official_byol_mlp(in_dim: int, hidden: int, out_dim: int) -> list[tuple]:
    """byol utils/networks.py MLP: Linear(with_bias=True), BatchNorm (scale, offset), relu, Linear(with_bias=False)."""
    return [
        ("Linear", in_dim, hidden, True),
        ("BatchNorm1d", hidden, True, True),
        ("ReLU",),
        ("Linear", hidden, out_dim, False),
    ]


def official_simclr_head(in_dim: int, out_dim: int, num_layers: int) -> list[tuple]:
    """simclr tf2/model.py ProjectionHead, 'nonlinear': middle LinearLayer(use_bias=True, use_bn=True) + relu,
    whose Dense drops the bias under BN and whose BN keeps its centre; last LinearLayer(use_bias=False,
    use_bn=True): no bias, a BN that scales without centring."""
    middle = [("Linear", in_dim, in_dim, False), ("BatchNorm1d", in_dim, True, True), ("ReLU",)]
    return middle * (num_layers - 1) + [("Linear", in_dim, out_dim, False), ("BatchNorm1d", out_dim, True, False)]


def without_bias_before_bn(rows: list[tuple]) -> list[tuple]:
    """The deviation kept (README): a Linear directly followed by BN has no bias here, since BN cancels it."""
    following = [*rows[1:], ("end",)]
    return [
        (*row[:3], False, *row[4:]) if row[0] == "Linear" and nxt[0] == "BatchNorm1d" else row
        for row, nxt in zip(rows, following)
    ]


def dino_layers(head: nn.Module) -> list[nn.Module]:
    return [*head.layers, head.last_layer]


@pytest.mark.parametrize("recipe", ["dino_vits16", "dino_fmnist"])
def test_dino_head_is_dinohead(recipe):
    method = built(recipe)
    hp = method.hp
    want = official_dino_head(
        method.student.backbone.embed_dim, hp.out_dim, hp.use_bn_in_head, hp.norm_last_layer, hp.proj_hidden_dim
    )
    if hp.use_bn_in_head:
        want = without_bias_before_bn(want)
    assert describe(dino_layers(method.student.head)) == want
    untrained = [row[:5] for row in want]  # the teacher is never trained: its norms' flag does not matter
    assert [row[:5] for row in describe(dino_layers(method.teacher.net.head))] == untrained


@pytest.mark.parametrize("recipe", ["ibot_vits16", "ibot_fmnist"])
def test_ibot_head_is_ibothead_with_one_bn_module(recipe):
    method = built(recipe)
    hp = method.hp
    head = method.student.head
    want = official_dino_head(
        method.student.backbone.embed_dim, hp.out_dim, hp.use_bn_in_head, hp.norm_last_layer, hp.proj_hidden_dim
    )
    if hp.use_bn_in_head:
        want = without_bias_before_bn(want)
        norms = [layer for layer in head.layers if isinstance(layer, nn.BatchNorm1d)]
        assert norms[0] is norms[1]  # models/head.py appends the same norm module after both hidden layers
    assert describe(dino_layers(head)) == want
    assert hp.shared_head and head.patch_layer is None  # --shared_head true: last_layer2 is last_layer


@pytest.mark.parametrize(
    "recipe, projector_layers, predictor_last_bn", [("mocov3_r50", 2, False), ("mocov3_vits16", 3, True)]
)
def test_mocov3_projector_and_predictor_are_build_mlp(recipe, projector_layers, predictor_last_bn):
    """builder.py MoCo_ResNet / MoCo_ViT with main_moco.py's --moco-dim 256, --moco-mlp-dim 4096."""
    method = built(recipe)
    width = method.online.backbone.embed_dim
    projector = official_moco_mlp(projector_layers, width, 4096, 256)
    assert describe(method.online.head.layers) == projector
    assert describe(method.target.net.head.layers) == projector
    assert describe(method.predictor.layers) == official_moco_mlp(2, 256, 4096, 256, predictor_last_bn)


def test_byol_projector_and_predictor_are_the_haiku_mlp():
    """byol_experiment.py: projector MLP(4096, 256) on the 2048-d ResNet-50 output, predictor MLP(4096, 256)."""
    method = built("byol_r50")
    assert describe(method.online.head.layers) == without_bias_before_bn(official_byol_mlp(2048, 4096, 256))
    assert describe(method.predictor.layers) == without_bias_before_bn(official_byol_mlp(256, 4096, 256))


def test_simclr_head_is_the_tf2_projection_head():
    """run.py --proj_out_dim 128 --num_proj_layers 3 on the 2048-d ResNet-50 output."""
    method = built("simclr_r50")
    assert describe(method.encoder.head.layers) == official_simclr_head(2048, 128, 3)


def official_swav_head(in_dim: int, hidden: int, out_dim: int, prototypes: int) -> list[tuple]:
    """swav src/resnet50.py: projection_head Linear, BatchNorm1d, ReLU, Linear (all with bias), then the
    prototypes Linear(output_dim, nmb_prototypes, bias=False)."""
    return [
        ("Linear", in_dim, hidden, True),
        ("BatchNorm1d", hidden, True, True),
        ("ReLU",),
        ("Linear", hidden, out_dim, True),
        ("Linear", out_dim, prototypes, False),
    ]


def test_swav_head_and_prototypes_are_resnet50s():
    """scripts/swav_200ep_bs256_pretrain.sh: --hidden_mlp 2048 (default), --feat_dim 128, --nmb_prototypes 3000."""
    method = built("swav_r50")
    layers = [*method.encoder.head.layers, method.prototypes]
    assert describe(layers) == without_bias_before_bn(official_swav_head(2048, 2048, 128, 3000))


# --------------------------------------------------------------------------- iBOT's BN head


def official_ibot_head(head: nn.Module, tokens: Tensor, biases: list[Tensor]) -> tuple[Tensor, Tensor]:
    """models/head.py iBOTHead.forward on (B, 1 + N, D) tokens, with ``head``'s weights and ``biases`` for the
    Linear layers before BN: CustomSequential moves the features to dim 1 so that the one BN module
    normalises over crops and tokens together; L2 normalisation; last_layer (shared) on [CLS] and patches."""
    linears = [layer for layer in head.layers if isinstance(layer, nn.Linear)]
    norm = head.layers[1]
    x = tokens
    for i, linear in enumerate(linears):
        x = F.linear(x, linear.weight, biases[i] if i < 2 else linear.bias)
        if i < 2:
            x = F.batch_norm(x.transpose(1, 2), None, None, norm.weight, norm.bias, True, 0.0, norm.eps).transpose(1, 2)
            x = F.gelu(x)
    x = F.normalize(x, dim=-1)
    v, g = head.last_layer.weight_v, head.last_layer.weight_g
    prototypes = g * v / v.norm(dim=1, keepdim=True)
    return x[:, 0] @ prototypes.T, x[:, 1:] @ prototypes.T


def official_ibot_loss(
    s_cls: Tensor, s_patch: Tensor, t_cls: Tensor, t_patch: Tensor, masks: Tensor, method: Method, clock: Clock
) -> Tensor:
    """main_ibot.py iBOTLoss for 2 global crops: [CLS] cross-entropy over pairs of different crops; patch
    cross-entropy of the same global crop, averaged over its masked patches; each term over its number of
    pairs, times its lambda."""
    hp, n_global, batch = method.hp, 2, len(masks) // 2
    tau_t, tau_tp = method.distillation.teacher_temp(clock), method.teacher_patch_temp(clock)
    student_cls = (s_cls / hp.student_temp).split(batch)  # every crop
    student_patch = (s_patch / hp.student_temp).chunk(n_global)
    teacher_cls = F.softmax((t_cls - method.loss.center) / tau_t, dim=-1).chunk(n_global)
    teacher_patch = F.softmax((t_patch - method.patch_loss.center) / tau_tp, dim=-1).chunk(n_global)
    crop_masks = masks.flatten(1).chunk(n_global)
    total_cls, pairs_cls, total_patch, pairs_patch = 0.0, 0, 0.0, 0
    for q in range(n_global):
        for v in range(len(student_cls)):
            if v == q:
                per_patch = torch.sum(-teacher_patch[q] * F.log_softmax(student_patch[v], dim=-1), dim=-1)
                mask = crop_masks[v].float()
                total_patch += (torch.sum(per_patch * mask, dim=-1) / mask.sum(dim=-1).clamp(min=1.0)).mean()
                pairs_patch += 1
            else:
                total_cls += torch.sum(-teacher_cls[q] * F.log_softmax(student_cls[v], dim=-1), dim=-1).mean()
                pairs_cls += 1
    return total_cls / pairs_cls * hp.lambda_cls + total_patch / pairs_patch * hp.lambda_patch


def test_ibot_bn_head_loss_is_one_head_pass_over_all_tokens_of_each_call(tiny_config):
    """The teacher's globals, the student's masked globals and the student's locals: one backbone call and
    one head pass each (main_ibot.py), with random BN weights and random biases before BN."""
    torch.manual_seed(0)
    small = {"method.out_dim": 64, "method.proj_hidden_dim": 32, "method.bottleneck_dim": 16, "model.drop_path": 0.0}
    overrides = {**small, "method.use_bn_in_head": True, "method.lambda_cls": 0.5, "method.lambda_patch": 2.0}
    method = build_method(tiny_config("ibot_fmnist", **overrides))
    hp = method.hp
    with torch.no_grad():
        for head in (method.student.head, method.teacher.net.head):
            head.layers[1].weight.normal_(1.0, 0.3)
            head.layers[1].bias.normal_(0.0, 0.3)
        method.loss.center.normal_()
        method.patch_loss.center.normal_()
        method.mask_token.normal_()
    batch = 4
    views = [torch.randn(batch, 1, 28, 28) for _ in range(2)] + [torch.randn(batch, 1, 12, 12) for _ in range(4)]
    masks = torch.rand(2 * batch, 7, 7) < 0.4
    method.masking = lambda n, height, width: masks[:n].clone()
    clock = Clock(step=3, total_steps=100, steps_per_epoch=10, epochs=10)
    biases = [torch.randn(hp.proj_hidden_dim) for _ in range(2)]

    out = method(views, clock)
    u, student, teacher = torch.cat(views[:2]), method.student, method.teacher.net
    with torch.no_grad():
        t_cls, t_patch = official_ibot_head(teacher.head, teacher.backbone.forward_tokens(u), biases)
    s_cls, s_patch = official_ibot_head(
        student.head, student.backbone.forward_tokens(u, masks, method.mask_token), biases
    )
    local_tokens = student.backbone.forward_tokens(torch.cat(views[2:]))
    s_cls = torch.cat([s_cls, official_ibot_head(student.head, local_tokens, biases)[0]])
    want = official_ibot_loss(s_cls, s_patch, t_cls, t_patch, masks, method, clock)
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-5)
    params = [student.head.layers[1].weight, student.head.layers[0].weight, method.mask_token]
    for got, expected in zip(torch.autograd.grad(out.loss, params), torch.autograd.grad(want, params)):
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-4 * expected.abs().max().item())
    # main_ibot.py's centres: the mean [CLS] output and the mean over crops of each crop's mean patch output
    torch.testing.assert_close(method.loss.pending_center, t_cls.mean(0, keepdim=True))
    torch.testing.assert_close(method.patch_loss.pending_center, t_patch.mean(1).mean(0, keepdim=True))

    # the order this replaces (separate head passes over [CLS] tokens and patches) gives another loss
    with torch.no_grad():
        split_cls = teacher.head(teacher.backbone.forward_tokens(u)[:, 0])
    assert (split_cls - t_cls).abs().max() > 0.1


# --------------------------------------------------------------------------- optimizer steps

Named = dict[str, Tensor]
Decays = Callable[[str, Tensor], bool]  # which tensors the official code decays (and LARS adapts)


def official_adamw(
    params: Named, grads: list[Named], lrs: list[float], wds: list[float], decays: Decays, beta2: float = 0.999
) -> Named:
    """torch.optim.AdamW at its defaults (betas 0.9, 0.999, eps 1e-8), as dino, ibot and moco-v3 create it
    (mae main_pretrain.py: betas 0.9, 0.95): p *= 1 - lr wd; m, v: moving averages of g and g^2;
    p -= lr m_hat / (sqrt(v_hat) + eps)."""
    beta1, eps = 0.9, 1e-8
    params = {name: p.clone() for name, p in params.items()}
    m = {name: torch.zeros_like(p) for name, p in params.items()}
    v = {name: torch.zeros_like(p) for name, p in params.items()}
    for t, (step_grads, lr, wd) in enumerate(zip(grads, lrs, wds), start=1):
        for name, p in params.items():
            g = step_grads[name]
            if decays(name, p):
                p.mul_(1 - lr * wd)
            m[name] = beta1 * m[name] + (1 - beta1) * g
            v[name] = beta2 * v[name] + (1 - beta2) * g * g
            m_hat, v_hat = m[name] / (1 - beta1**t), v[name] / (1 - beta2**t)
            p.sub_(lr * m_hat / (v_hat.sqrt() + eps))
    return params


def trust_ratio(p: Tensor, update: Tensor, eta: float = 0.001) -> Tensor:
    """eta ||p|| / ||update||, or 1 where either norm is 0 (moco-v3, dino, byol and simclr alike)."""
    p_norm, u_norm = p.norm(), update.norm()
    return eta * p_norm / u_norm if p_norm > 0 and u_norm > 0 else torch.tensor(1.0)


def official_lars(params: Named, grads: list[Named], lrs: list[float], wds: list[float], decays: Decays) -> Named:
    """moco-v3 optimizer.py LARS (momentum 0.9, trust_coefficient 0.001), which BYOL's optax chain
    add_weight_decay -> scale_by_lars -> scale(-lr) equals: u = q (g + wd p) on decayed tensors, else g;
    mu = 0.9 mu + u; p -= lr mu."""
    params = {name: p.clone() for name, p in params.items()}
    mu = {name: torch.zeros_like(p) for name, p in params.items()}
    for step_grads, lr, wd in zip(grads, lrs, wds):
        for name, p in params.items():
            update = step_grads[name]
            if decays(name, p):
                update = update + wd * p
                update = trust_ratio(p, update) * update
            mu[name] = 0.9 * mu[name] + update
            p.sub_(lr * mu[name])
    return params


def official_simclr_lars(
    params: Named, grads: list[Named], lrs: list[float], wds: list[float], decays: Decays
) -> Named:
    """simclr tf2/lars_optimizer.py with classic_momentum: the lr goes into the momentum,
    v = 0.9 v + lr q (g + wd p); p -= v (the same first step as moco-v3's)."""
    params = {name: p.clone() for name, p in params.items()}
    v = {name: torch.zeros_like(p) for name, p in params.items()}
    for step_grads, lr, wd in zip(grads, lrs, wds):
        for name, p in params.items():
            update, ratio = step_grads[name], torch.tensor(1.0)
            if decays(name, p):
                update = update + wd * p
                ratio = trust_ratio(p, update)
            v[name] = 0.9 * v[name] + lr * ratio * update
            p.sub_(v[name])
    return params


def no_bias_or_1d(name: str, p: Tensor) -> bool:
    """dino/ibot utils.get_params_groups: no decay on biases and 1-D tensors."""
    return not (name.endswith(".bias") or p.ndim == 1)


def no_bias_or_norm(norm_names: set[str]) -> Decays:
    """byol exclude_bias_and_norm, simclr exclude_from_weight_decay=['batch_normalization', 'bias']: by name."""
    return lambda name, p: not (name.endswith(".bias") or name in norm_names)


def norm_parameter_names(method: Method) -> set[str]:
    """Names of the normalisation layers' parameters (BYOL's "norm" scopes, SimCLR's batch_normalization)."""
    return {
        f"{module_name}.{name}"
        for module_name, module in method.named_modules()
        if isinstance(module, nn.modules.batchnorm._NormBase)
        for name, _ in module.named_parameters(recurse=False)
    }


SMALL_VIT = {"model.backbone": "vit_micro_patch4_28"}  # a ViT's kinds of tensors, in a fraction of the time
SMALL_RESNET = {"model.backbone": "resnet18_cifar"}
SMALL_DINO = {**SMALL_VIT, "method.out_dim": 256, "method.proj_hidden_dim": 64, "method.bottleneck_dim": 32}
SMALL_SIAMESE = {"method.proj_hidden_dim": 64, "method.pred_hidden_dim": 64, "method.out_dim": 32}
OFFICIAL_RULES = {  # recipe: (rule, the tensors it decays (and LARS adapts), steps, smaller networks)
    "dino_vits16": (official_adamw, lambda method: no_bias_or_1d, 2, SMALL_DINO),
    "ibot_vits16": (official_adamw, lambda method: no_bias_or_1d, 2, SMALL_DINO),
    "mocov3_vits16": (official_adamw, lambda method: lambda name, p: True, 2, {**SMALL_VIT, **SMALL_SIAMESE}),
    "mocov3_r50": (official_lars, lambda method: lambda name, p: p.ndim > 1, 2, {**SMALL_RESNET, **SMALL_SIAMESE}),
    "byol_r50": (
        official_lars,
        lambda method: no_bias_or_norm(norm_parameter_names(method)),
        2,
        {**SMALL_RESNET, **SMALL_SIAMESE},
    ),
    "vicreg_r50": (  # main_vicreg.py LARS: exclude_bias_and_norm (p.ndim == 1) from decay and adaptation
        official_lars,
        lambda method: lambda name, p: p.ndim > 1,
        2,
        {**SMALL_RESNET, "method.proj_hidden_dim": 64, "method.out_dim": 32},
    ),
    "mae_vits16": (  # timm add_weight_decay: no decay on 1-D tensors and biases
        partial(official_adamw, beta2=0.95),
        lambda method: no_bias_or_1d,
        2,
        {**SMALL_VIT, "method.decoder_dim": 32, "method.decoder_depth": 1, "method.decoder_heads": 2},
    ),
    "simclr_r50": (
        official_simclr_lars,
        lambda method: no_bias_or_norm(norm_parameter_names(method)),
        1,
        {**SMALL_RESNET, "method.proj_hidden_dim": 64, "method.out_dim": 32},
    ),
}


@pytest.mark.parametrize("weight_decay", [None, 0.01])
@pytest.mark.parametrize("recipe", list(OFFICIAL_RULES))
def test_optimizer_steps_follow_the_official_update_rule(recipe, weight_decay):
    """Steps on every trainable tensor of the recipe's method (on a small backbone and head), at warm-up
    steps 1 and 2 (the lr doubles), at the recipe's weight decay and at 0.01, where lightly's LARS differs.
    SimCLR's rule puts the lr into the momentum, which matches ours for one step only (README: deviations)."""
    rule, decays, steps, small = OFFICIAL_RULES[recipe]
    wd = {} if weight_decay is None else {"optim.weight_decay": weight_decay, "optim.weight_decay_end": weight_decay}
    run_cfg = load_config(recipe, {"trainer.device": "cpu", "resume": "none", "model.drop_path": 0.0, **small, **wd})
    method, cfg = build_method(run_cfg), run_cfg.optim
    named = {name: p for name, p in method.named_parameters() if p.requires_grad}
    before = {name: p.detach().clone() for name, p in named.items()}
    optimizer = build_optimizer(
        parameter_groups(method, cfg.exclude_bias_norm, method.lr_scales()), cfg, torch.device("cpu")
    )
    torch.manual_seed(0)
    grads = [{name: 1e-3 * torch.randn_like(p) for name, p in named.items()} for _ in range(steps)]
    clock = Clock(step=0, total_steps=1000, steps_per_epoch=10, epochs=run_cfg.trainer.epochs)
    lrs, wds = [], []
    for step, step_grads in enumerate(grads, start=1):
        lr, wd = apply_schedules(optimizer, cfg, clock.at(step), peak_lr=1.0)
        for name, p in named.items():
            p.grad = step_grads[name].clone()
        optimizer.step()
        lrs.append(lr)
        wds.append(wd)
    assert lrs[-1] == pytest.approx(lrs[0] * steps) and wds[0] > 0
    want = rule(before, grads, lrs, wds, decays(method))
    for name, p in named.items():
        change, want_change = p.detach() - before[name], want[name] - before[name]
        atol = 1e-3 * want_change.abs().max().item() + 1e-7 * before[name].abs().max().item()
        torch.testing.assert_close(change, want_change, rtol=1e-3, atol=atol, msg=f"{recipe}: {name}")


def test_lightlys_lars_would_fail_the_update_rule_test_at_weight_decay_0_01():
    """lightly's trust ratio eta ||p|| / (||g|| + wd ||p||) against moco-v3's eta ||p|| / ||g + wd p||."""
    torch.manual_seed(0)
    weight = torch.randn(256, 512) * 0.05
    grad = 1e-3 * torch.randn_like(weight)
    ours = official_lars({"w": weight}, [{"w": grad}], [1.0], [0.01], lambda name, p: True)["w"] - weight
    lightly_weight = weight.clone().requires_grad_()
    lightly_weight.grad = grad.clone()
    LightlyLARS([lightly_weight], lr=1.0, momentum=0.9, weight_decay=0.01, trust_coefficient=0.001).step()
    lightly = lightly_weight.detach() - weight
    assert abs(lightly.norm() / ours.norm() - 1) > 0.1  # 25% smaller here


def test_lars_with_decay_on_biases_and_norms_is_refused():
    with pytest.raises(UserError, match="no effect with LARS"):
        load_config("mocov3_r50", {"optim.exclude_bias_norm": False})


# --------------------------------------------------------------------------- measured deviations (README table)


def dino_cosine_scheduler(base: float, final: float, epochs: int, niter: int, warmup_epochs: int) -> np.ndarray:
    """dino utils.cosine_scheduler: np.linspace(0, base) over the warm-up iterations, then a half cosine."""
    warmup = np.linspace(0, base, warmup_epochs * niter)
    iters = np.arange(epochs * niter - len(warmup))
    return np.concatenate((warmup, final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))))


@pytest.mark.parametrize("epochs, niter, warmup_epochs", [(10, 35, 1), (100, IMAGENET_TRAIN // 1024, 10)])
def test_lr_warmup_is_mocov3s_and_trails_dinos_by_one_step(epochs, niter, warmup_epochs):
    """A 350-step run of 10 epochs (35 warm-up steps) and dino_vits16 (12510): the gap during warm-up is 1/W."""
    peak, end = 1.0, 1e-6
    total, warmup = epochs * niter, warmup_epochs * niter
    ours = np.array([warmup_cosine(k, total, warmup, peak, end) for k in range(total)])
    progress = (np.arange(total) - warmup) / (total - warmup)  # moco-v3 adjust_learning_rate (its end is 0)
    moco = np.where(
        np.arange(total) < warmup,
        peak * np.arange(total) / warmup,
        end + (peak - end) * 0.5 * (1 + np.cos(np.pi * progress)),
    )
    np.testing.assert_allclose(ours, moco, rtol=1e-9)
    dino = dino_cosine_scheduler(peak, end, epochs, niter, warmup_epochs)
    gap = (dino - ours)[1:warmup] / dino[1:warmup]
    assert gap.max() == pytest.approx(1 / warmup) and gap.min() == pytest.approx(1 / warmup)
    np.testing.assert_allclose(ours[warmup:], dino[warmup:], rtol=1e-9)


def test_teacher_temperature_warms_up_per_step_where_the_official_steps_per_epoch():
    """dino_vits16_boosted / ibot_vits16: 0.04 -> 0.07 over 30 epochs; main_dino.py's per-epoch
    np.linspace reaches 0.07 at epoch 29. Largest gap: 0.001 (2.5% of the temperature)."""
    hp = load_config("dino_vits16_boosted").method
    niter, warm = IMAGENET_TRAIN // 1024, int(hp.warmup_teacher_temp_epochs)
    official = np.linspace(hp.warmup_teacher_temp, hp.teacher_temp, warm)
    steps = np.arange((warm + 1) * niter)
    per_epoch = np.append(official, hp.teacher_temp)[steps // niter]
    ours = np.array([linear_warmup(k, warm * niter, hp.warmup_teacher_temp, hp.teacher_temp) for k in steps])
    gap = np.abs(ours - per_epoch)
    assert gap.max() == pytest.approx((hp.teacher_temp - hp.warmup_teacher_temp) / warm, rel=1e-3)
    assert (gap / per_epoch).max() == pytest.approx(0.025, abs=5e-4)


def test_mocov3_momentum_of_the_step_before_differs_by_under_2e_7():
    """moco-v3 applies the update after step k at forward k+1 with m_(k+1); here right after step k with m_k.
    mocov3_r50 / mocov3_vits16: 300 epochs of 312 steps at batch 4096."""
    hp = load_config("mocov3_r50").method
    total = 300 * (IMAGENET_TRAIN // 4096)
    momenta = np.array([cosine(k, total, hp.momentum, 1.0) for k in range(total + 1)])
    assert np.abs(np.diff(momenta)).max() == pytest.approx((1 - hp.momentum) / 2 * math.pi / total, rel=1e-3)
    assert np.abs(np.diff(momenta)).max() < 1.7e-7


def test_simclr_lars_folds_the_lr_into_the_momentum():
    """simclr_r50's schedule (3120 warm-up of 31200 steps, peak 4.8) under a constant gradient: our step
    over SimCLR's is 1.099 at step 100, 1.003 at the end of warm-up, and the total displacement agrees."""
    niter = IMAGENET_TRAIN // 4096
    total, warmup = 100 * niter, 10 * niter
    lrs = [warmup_cosine(k, total, warmup, 4.8, 0.0) for k in range(total)]
    bias = torch.zeros(1, requires_grad=True)  # 1-D: no trust ratio, the momentum alone
    optimizer = build_optimizer(
        [{"params": [bias], "apply_weight_decay": False}], load_config("simclr_r50").optim, torch.device("cpu")
    )
    ours, simclr, v = [], [], 0.0
    for lr in lrs:
        optimizer.param_groups[0]["lr"] = lr
        before = bias.item()
        bias.grad = torch.ones(1)
        optimizer.step()
        ours.append(before - bias.item())
        v = 0.9 * v + lr
        simclr.append(v)
    ratio = np.array(ours[1:]) / np.array(simclr[1:])
    assert ratio[99] == pytest.approx(1.099, abs=1e-3) and ratio[warmup - 1] == pytest.approx(1.003, abs=1e-3)
    assert sum(ours) == pytest.approx(sum(simclr), rel=1e-5)


def test_no_bias_before_bn_changes_the_dino_head_output_by_float_rounding():
    """DINOHead has a bias in the Linear layers before BN; BN subtracts it with the batch mean."""
    torch.manual_seed(0)
    head = dino_head(128, 4096, 2048, 256, norm_last_layer=True, batch_norm=True).train()
    linears = [layer for layer in head.layers if isinstance(layer, nn.Linear)]
    norms = [layer for layer in head.layers if isinstance(layer, nn.BatchNorm1d)]
    with torch.no_grad():
        for norm in norms:
            norm.weight.normal_(1.0, 0.2)
            norm.bias.normal_(0.0, 0.2)
    x = torch.randn(256, 128)
    h = x
    for linear, norm in zip(linears, norms):
        h = F.gelu(
            F.batch_norm(F.linear(h, linear.weight, 0.5 * torch.randn(2048)), None, None, norm.weight, norm.bias, True)
        )
    h = F.normalize(F.linear(h, linears[2].weight, linears[2].bias), dim=-1)
    v, g = head.last_layer.weight_v, head.last_layer.weight_g
    official = h @ (g * v / v.norm(dim=1, keepdim=True)).T
    assert (head(x) - official).abs().max() < 1e-6
