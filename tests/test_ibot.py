"""iBOT: the patch loss against its formula, masking in the student only, centres, heads, resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sslzoo.build import build_method, check_method
from sslzoo.checkpoint import load_checkpoint
from sslzoo.errors import UserError
from sslzoo.losses.dino import DINOLoss
from sslzoo.losses.ibot import MaskedPatchLoss
from sslzoo.recipes import load_config
from sslzoo.schedules import Clock
from sslzoo.trainer import Trainer

# The paper's BN-free head unless a test asks for BN (ibot_fmnist.yaml turns it on for the CPU budget).
SMALL_HEAD = {
    "method.out_dim": 64,
    "method.proj_hidden_dim": 32,
    "method.bottleneck_dim": 16,
    "model.drop_path": 0.0,
    "method.use_bn_in_head": False,
}
CLOCK = Clock(step=0, total_steps=100, steps_per_epoch=10, epochs=10)


def make_ibot(tiny_config, **overrides):
    cfg = tiny_config("ibot_fmnist", **{**SMALL_HEAD, **overrides})
    return build_method(cfg)


def fmnist_views(batch: int = 4, n_local: int = 4) -> list[torch.Tensor]:
    return [torch.randn(batch, 1, 28, 28) for _ in range(2)] + [torch.randn(batch, 1, 12, 12) for _ in range(n_local)]


def fixed_masks(batch: int) -> torch.Tensor:
    """Global-crop masks (2 * batch, 7, 7): a block in most crops, none in the last one."""
    masks = torch.zeros(2 * batch, 7, 7, dtype=torch.bool)
    for crop in range(2 * batch - 1):
        top, left = crop % 4, (2 * crop) % 5
        masks[crop, top : top + 3, left : left + 2] = True
    return masks


def use_masks(method, masks: torch.Tensor) -> None:
    method.masking = lambda batch, height, width: masks[:batch].clone()


# --------------------------------------------------------------------------- the loss


def direct_patch_loss(student, teacher, masks, center, tau_s, tau_t, n_views):
    """L_MIM element by element: per crop, the mean cross-entropy over its masked patches
    (0 for a crop without any), averaged over the crops of each view, then over views."""
    per_view = [0.0] * n_views
    crops_per_view = len(masks) // n_views
    for crop, crop_mask in enumerate(masks):
        total, count = 0.0, 0
        for i, masked in enumerate(crop_mask):
            if not masked:
                continue
            t, s = teacher[crop][i], student[crop][i]
            p_t = [math.exp((t[k] - center[k]) / tau_t) for k in range(len(center))]
            z_t = sum(p_t)
            z_s = sum(math.exp(s[k] / tau_s) for k in range(len(center)))
            total += -sum(p_t[k] / z_t * (s[k] / tau_s - math.log(z_s)) for k in range(len(center)))
            count += 1
        per_view[crop // crops_per_view] += total / max(count, 1) / crops_per_view
    return sum(per_view) / n_views


def test_patch_loss_matches_the_formula():
    torch.manual_seed(0)
    n_views, batch, patches, dim = 2, 3, 5, 6
    student = torch.randn(n_views * batch, patches, dim, dtype=torch.float64)
    teacher = torch.randn(n_views * batch, patches, dim, dtype=torch.float64)
    masks = torch.rand(n_views * batch, patches) < 0.5
    masks[1] = False  # a crop that drew no mask
    masks[4] = True
    loss = MaskedPatchLoss(dim, student_temp=0.1, center_momentum=0.9)
    loss.center = torch.randn(1, dim, dtype=torch.float64)
    got = loss(student, teacher, masks, teacher_temp=0.07)
    want = direct_patch_loss(
        student.tolist(), teacher.tolist(), masks.tolist(), loss.center[0].tolist(), 0.1, 0.07, n_views
    )
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_patch_loss_without_masked_patches_is_zero_and_differentiable():
    student = torch.randn(4, 5, 8, requires_grad=True)
    loss = MaskedPatchLoss(8, 0.1, 0.9)(student, torch.randn(4, 5, 8), torch.zeros(4, 5, dtype=torch.bool), 0.07)
    loss.backward()
    assert loss.item() == 0.0 and not student.grad.any()


def test_patch_centre_is_an_ema_of_the_mean_over_all_patch_tokens():
    """main_ibot.py: C' <- 0.9 C' + 0.1 * (sum over crops of the crop's mean patch output) / crops."""
    torch.manual_seed(1)
    teacher = torch.randn(6, 5, 4)
    loss = MaskedPatchLoss(4, student_temp=0.1, center_momentum=0.9)
    loss.center = torch.randn(1, 4)
    before = loss.center.clone()
    loss.update_center(loss.batch_center(teacher.flatten(0, 1)))
    crop_means = teacher.mean(dim=1)
    assert torch.allclose(loss.center, 0.9 * before + 0.1 * crop_means.sum(0) / len(teacher), atol=1e-6)


# --------------------------------------------------------------------------- the method


def test_method_losses_match_a_dense_recomputation(tiny_config):
    """The method predicts only the masked patches; the dense computation of main_ibot.py agrees."""
    torch.manual_seed(2)
    method = make_ibot(tiny_config, **{"method.lambda_cls": 0.5, "method.lambda_patch": 2.0})
    method.loss.center.normal_()
    method.patch_loss.center.normal_()
    views, masks = fmnist_views(), fixed_masks(4)
    use_masks(method, masks)
    out = method(views, CLOCK)

    hp = method.hp
    tau_s, tau_t, tau_tp = hp.student_temp, method.distillation.teacher_temp(CLOCK), method.teacher_patch_temp(CLOCK)
    u = torch.cat(views[:2])
    with torch.no_grad():
        t_tokens = method.teacher.net.backbone.forward_tokens(u)
        s_tokens = method.student.backbone.forward_tokens(u, masks, method.mask_token)
        s_local = method.student.head(method.student.backbone(torch.cat(views[2:])))
        t_patch = method.teacher.net.head(t_tokens[:, 1:])  # shared head
        s_patch = method.student.head(s_tokens[:, 1:])
        t_cls, s_cls = method.teacher.net.head(t_tokens[:, 0]), method.student.head(s_tokens[:, 0])
    flat = masks.flatten(1)
    want_patch = direct_patch_loss(
        s_patch.double().tolist(), t_patch.double().tolist(), flat.tolist(),
        method.patch_loss.center[0].tolist(), tau_s, tau_tp, 2,
    )  # fmt: skip
    want_cls = DINOLoss(hp.out_dim, tau_s, hp.center_momentum)
    want_cls.center.copy_(method.loss.center)
    want_cls = want_cls(list(torch.cat([s_cls, s_local]).chunk(6)), list(t_cls.chunk(2)), tau_t).item()

    assert out.logs["loss_patch"] == pytest.approx(want_patch, rel=1e-4)
    assert out.logs["loss_cls"] == pytest.approx(want_cls, rel=1e-4)
    assert out.loss.item() == pytest.approx(0.5 * want_cls + 2.0 * want_patch, rel=1e-4)
    assert out.logs["mask_ratio"] == pytest.approx(flat.float().mean().item())
    assert torch.allclose(method.patch_loss.pending_center, t_patch.mean(dim=(0, 1)), atol=1e-6)
    assert out.embeddings.shape == (4, hp.out_dim) and not out.embeddings.requires_grad
    assert torch.allclose(out.features, s_tokens[:4, 0], atol=1e-5)


def test_masked_patches_carry_the_mask_token_in_the_student_only(tiny_config, monkeypatch):
    """What enters the position embedding: the mask token at masked patches of the student's
    global crops; the plain patch embedding elsewhere, in the teacher and in local crops."""
    torch.manual_seed(3)
    method = make_ibot(tiny_config)
    with torch.no_grad():
        method.mask_token.normal_()
    views, masks = fmnist_views(), fixed_masks(4)
    use_masks(method, masks)
    seen = {"student": [], "teacher": []}

    def recorder(name, original):
        def record(tokens):
            seen[name].append(tokens)
            return original(tokens)

        return record

    for name, vit in (("student", method.student.backbone.model), ("teacher", method.teacher.net.backbone.model)):
        monkeypatch.setattr(vit, "_pos_embed", recorder(name, vit._pos_embed))
    method(views, CLOCK)

    u = torch.cat(views[:2])
    with torch.no_grad():
        s_embed = method.student.backbone.model.patch_embed(u)
        t_embed = method.teacher.net.backbone.model.patch_embed(u)
        local_embed = method.student.backbone.model.patch_embed(torch.cat(views[2:]))
    student_globals, student_locals = seen["student"]
    (teacher_globals,) = seen["teacher"]
    token = method.mask_token[0]
    assert torch.equal(student_globals[masks], token.expand(int(masks.sum()), -1))
    assert torch.equal(student_globals[~masks], s_embed[~masks])
    assert torch.equal(teacher_globals, t_embed)  # identical weights at the start: no mask token anywhere
    assert not torch.isclose(teacher_globals[masks], token).all(dim=-1).any()
    assert torch.equal(student_locals, local_embed)


def test_teacher_receives_no_gradient(tiny_config):
    torch.manual_seed(4)
    method = make_ibot(tiny_config)
    use_masks(method, fixed_masks(4))
    method(fmnist_views(), CLOCK).loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in method.teacher.parameters())
    assert method.mask_token.grad is not None and method.mask_token.grad.abs().sum() > 0
    assert all(p.grad is not None for p in method.student.backbone.parameters() if p.requires_grad)


def test_centres_move_once_per_optimizer_step(tiny_config):
    torch.manual_seed(5)
    method = make_ibot(tiny_config)
    views = fmnist_views()
    method(views, CLOCK)
    method(views, CLOCK)  # e.g. gradient accumulation: no centre update inside the forward
    assert not method.loss.center.any() and not method.patch_loss.center.any()
    pending = method.patch_loss.pending_center.clone()
    method.after_optimizer_step(CLOCK)
    assert torch.allclose(method.patch_loss.center, (1 - method.hp.center_momentum_patch) * pending)
    assert method.loss.center.any()
    assert method.teacher.updates == 1


def test_separate_patch_prototypes_and_their_freezing(tiny_config):
    torch.manual_seed(6)
    # main_ibot.py's one epoch (ibot_fmnist freezes none)
    method = make_ibot(tiny_config, **{"method.shared_head": False, "method.freeze_last_layer_epochs": 1})
    head = method.student.head
    assert head.patch_layer is not None
    assert method.teacher.net.head.patch_layer is not None
    tokens = torch.randn(3, 5, 128)
    cls, patches = head.forward_tokens(tokens)
    assert torch.allclose(cls, head(tokens[:, 0]), atol=1e-6)  # no BN: per token
    assert not torch.allclose(patches, head(tokens[:, 1:]))  # the [CLS] prototypes would give these
    method(fmnist_views(), CLOCK).loss.backward()
    method.before_optimizer_step(CLOCK)  # step 0 < freeze_last_layer_epochs: prototypes frozen
    assert all(p.grad is None for p in head.last_layer.parameters())
    assert all(p.grad is None for p in head.patch_layer.parameters())
    assert head.layers[0].weight.grad is not None  # the MLP keeps training


@pytest.mark.parametrize("shared_head", [True, False])
def test_bn_in_head_normalises_over_every_token_with_one_bn_module(tiny_config, shared_head):
    """models/head.py: one BN module after both hidden layers, run once over all tokens of the crops."""
    torch.manual_seed(7)
    method = make_ibot(tiny_config, **{"method.use_bn_in_head": True, "method.shared_head": shared_head})
    head = method.student.head.train()
    norms = [layer for layer in head.layers if isinstance(layer, torch.nn.BatchNorm1d)]
    assert len(norms) == 2 and norms[0] is norms[1]
    assert method.teacher.net.head.layers[1] is method.teacher.net.head.layers[4]
    tokens = torch.randn(3, 5, 128)  # (crops, 1 + patches, width)
    cls, patches = head.forward_tokens(tokens)
    flat = torch.nn.functional.normalize(head.layers(tokens.reshape(15, 128)), dim=-1).reshape(3, 5, -1)
    patch_layer = head.last_layer if shared_head else head.patch_layer
    assert torch.allclose(cls, head.last_layer(flat[:, 0]), atol=1e-6)
    assert torch.allclose(patches, patch_layer(flat[:, 1:]), atol=1e-6)
    assert not torch.allclose(cls, head(tokens[:, 0]), atol=1e-3)  # BN over the [CLS] tokens alone differs
    use_masks(method, fixed_masks(4))
    method(fmnist_views(), CLOCK).loss.backward()
    assert norms[0].weight.grad is not None


def test_teacher_temperatures_warm_up_separately(tiny_config):
    overrides = {"method.teacher_temp": 0.06, "method.teacher_patch_temp": 0.07, "method.warmup_teacher_temp_epochs": 2}
    method = make_ibot(tiny_config, **overrides)
    start, half, done = CLOCK, CLOCK.at(10), CLOCK.at(20)
    teacher_temp, patch_temp = method.distillation.teacher_temp, method.teacher_patch_temp
    assert teacher_temp(start) == pytest.approx(0.04) and patch_temp(start) == pytest.approx(0.04)
    assert teacher_temp(half) == pytest.approx(0.05) and patch_temp(half) == pytest.approx(0.055)
    assert teacher_temp(done) == pytest.approx(0.06) and patch_temp(done) == pytest.approx(0.07)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model.backbone": "resnet18_cifar"}, "not a ViT"),
        ({"method.pred_ratio": [0.3]}, "same number"),
        ({"method.pred_ratio_var": [0.0, 0.4]}, "within"),
        ({"method.mask_min_aspect": 1.5}, "mask_min_aspect"),
    ],
)
def test_bad_settings_are_refused(tiny_config, overrides, message):
    with pytest.raises(UserError, match=message):
        check_method(tiny_config("ibot_fmnist", **overrides))


@pytest.mark.parametrize("recipe", ["ibot_fmnist", "ibot_vits16"])
def test_recipes_use_ibots_minimum_block(recipe):
    """loader.py's minimum block area is (min(H, W) // 3) ** 2 of each crop's patch grid (masking.BlockMasking)."""
    cfg = load_config(recipe, {"resume": "none"})
    assert cfg.method.mask_min_block is None


# --------------------------------------------------------------------------- training


def test_training_logs_both_terms_and_resume_restores_both_centres(tiny_config):
    cfg = tiny_config("ibot_fmnist", **SMALL_HEAD, **{"data.batch_size": 8})
    out_dir = Trainer(cfg).fit()
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3
    for key in ("loss_cls", "loss_patch", "teacher_temp", "teacher_patch_temp", "momentum", "mask_ratio"):
        assert all(math.isfinite(r[key]) for r in records), key
    assert all(r["loss"] == pytest.approx(r["loss_cls"] + r["loss_patch"], rel=1e-5) for r in records)

    saved = load_checkpoint(out_dir / "checkpoints" / "last.pt", "ibot", cfg.model.backbone)["model"]
    assert saved["loss.center"].any() and saved["patch_loss.center"].any()
    resumed = Trainer(tiny_config("ibot_fmnist", **SMALL_HEAD, **{"data.batch_size": 8, "resume": "auto"}))
    resumed.maybe_resume()
    assert resumed.clock.step == 3
    assert torch.equal(resumed.method.loss.center, saved["loss.center"])
    assert torch.equal(resumed.method.patch_loss.center, saved["patch_loss.center"])
    assert torch.equal(resumed.method.mask_token, saved["mask_token"])
