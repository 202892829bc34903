"""DINO: the loss against Eq. 2-3 computed directly, the centre, the teacher, training."""

from __future__ import annotations

import math

import pytest
import torch

from sslzoo.backbones import build_model
from sslzoo.build import build_method
from sslzoo.cli import train
from sslzoo.errors import UserError
from sslzoo.losses.dino import DINOLoss
from sslzoo.methods.distillation import SelfDistillation
from sslzoo.schedules import Clock


def direct_dino_loss(student, teacher, center, tau_s, tau_t):
    """min H(P_t, P_s) averaged over pairs of different views, written element by element."""
    total, pairs = 0.0, 0
    for t_index, t in enumerate(teacher):
        for s_index, s in enumerate(student):
            if t_index == s_index:
                continue
            for b in range(len(t)):
                p_t = [math.exp((t[b][k] - center[k]) / tau_t) for k in range(len(center))]
                z_t = sum(p_t)
                z_s = sum(math.exp(s[b][k] / tau_s) for k in range(len(center)))
                ce = -sum(p_t[k] / z_t * (s[b][k] / tau_s - math.log(z_s)) for k in range(len(center)))
                total += ce / len(t)
            pairs += 1
    return total / pairs


def test_loss_matches_the_formula():
    torch.manual_seed(0)
    batch, dim, n_global, n_local = 3, 7, 2, 3
    student = [torch.randn(batch, dim, dtype=torch.float64) for _ in range(n_global + n_local)]
    teacher = [torch.randn(batch, dim, dtype=torch.float64) for _ in range(n_global)]
    loss = DINOLoss(dim, student_temp=0.1, center_momentum=0.9)
    loss.center = torch.randn(1, dim)
    got = loss(student, teacher, teacher_temp=0.04)
    want = direct_dino_loss(
        [s.tolist() for s in student], [t.tolist() for t in teacher], loss.center[0].tolist(), 0.1, 0.04
    )
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_same_view_pairs_are_skipped():
    """With identical student and teacher logits on every view, only cross-view pairs count."""
    torch.manual_seed(1)
    views = [torch.randn(4, 5) for _ in range(2)]
    loss = DINOLoss(5, student_temp=1.0, center_momentum=0.9)
    got = loss(views, views, teacher_temp=1.0)
    cross = -(torch.softmax(views[0], -1) * torch.log_softmax(views[1], -1)).sum(-1).mean()
    cross2 = -(torch.softmax(views[1], -1) * torch.log_softmax(views[0], -1)).sum(-1).mean()
    assert got.item() == pytest.approx(((cross + cross2) / 2).item(), rel=1e-6)


def test_centre_update_is_an_ema_of_the_batch_mean():
    loss = DINOLoss(4, student_temp=0.1, center_momentum=0.9)
    loss.center.fill_(1.0)
    teacher_out = torch.tensor([[0.0, 2.0, 4.0, 6.0], [2.0, 2.0, 0.0, 2.0]])
    loss.update_center(loss.batch_center(teacher_out))
    assert torch.allclose(loss.center, 0.9 * torch.ones(4) + 0.1 * teacher_out.mean(0))


def test_step_teacher_has_no_gradient_and_follows_the_student(tiny_config):
    cfg = tiny_config(
        "dino_fmnist", **{"method.out_dim": 64, "method.proj_hidden_dim": 32, "method.bottleneck_dim": 16}
    )
    method = build_method(cfg)
    clock = Clock(step=5, total_steps=10, steps_per_epoch=2, epochs=5)
    views = [torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28), torch.randn(4, 1, 12, 12)]
    out = method(views, clock)
    out.loss.backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    assert all(not p.requires_grad for p in method.teacher.parameters())
    assert any(p.grad is not None for p in method.student.parameters())

    before = [p.clone() for p in method.teacher.parameters()]
    student = list(method.student.parameters())
    with torch.no_grad():
        for p in student:
            p.add_(1.0)
    momentum = method.distillation.momentum(clock)
    method.after_optimizer_step(clock)
    for old, new, s in zip(before, method.teacher.parameters(), student):
        assert torch.allclose(new, momentum * old + (1 - momentum) * s, atol=1e-6)
    assert method.teacher.updates == 1
    assert not torch.equal(method.loss.center, torch.zeros_like(method.loss.center))


@pytest.mark.parametrize("recipe", ["dino_fmnist", "ibot_fmnist", "dinov2_fmnist"])
def test_teacher_momentum_follows_its_cosine_from_momentum_to_momentum_end(tiny_config, recipe):
    """m(k) = m_end - (m_end - m_0) (1 + cos(pi k / K)) / 2: m_0 at step 0, m_end at the last step."""
    total = 40
    for end in (1.0, 0.98, 0.97):  # the papers' 1; one under it; constant at m_0
        hp = tiny_config(recipe, **{"method.momentum": 0.97, "method.momentum_end": end}).method
        schedule = SelfDistillation(hp, student=torch.nn.Identity(), teacher=None, centres=[])
        for k in (0, 10, 20, 30, 40):
            expected = end - (end - 0.97) * (1 + math.cos(math.pi * k / total)) / 2
            clock = Clock(step=k, total_steps=total, steps_per_epoch=4, epochs=10)
            assert schedule.momentum(clock) == pytest.approx(expected, abs=1e-12)


def test_a_teacher_momentum_outside_0_1_is_refused_in_one_line(tiny_config):
    with pytest.raises(UserError, match=r"method\.momentum_end=1\.5 must lie in \[0, 1\]"):
        tiny_config("dino_fmnist", **{"method.momentum_end": 1.5})


def test_bn_in_head_normalises_the_hidden_layers_of_student_and_teacher(tiny_config):
    small = {"method.out_dim": 64, "method.proj_hidden_dim": 32, "method.bottleneck_dim": 16}
    plain = build_method(tiny_config("dino_fmnist", **small, **{"method.use_bn_in_head": False}))
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in plain.modules())
    method = build_method(tiny_config("dino_fmnist", **small, **{"method.use_bn_in_head": True}))
    for encoder in (method.student, method.teacher.net):
        norms = [m for m in encoder.head.modules() if isinstance(m, torch.nn.BatchNorm1d)]
        assert [n.num_features for n in norms] == [32, 32]  # after each hidden layer (main_dino.py DINOHead)
    views = [torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28), torch.randn(4, 1, 12, 12)]
    method(views, Clock(step=5, total_steps=10, steps_per_epoch=2, epochs=5)).loss.backward()
    assert method.student.head.layers[1].weight.grad is not None  # the first BN trains


def test_last_layer_is_frozen_during_the_first_epoch(tiny_config):
    cfg = tiny_config(  # main_dino.py's one epoch (dino_fmnist freezes none)
        "dino_fmnist",
        **{
            "method.out_dim": 64,
            "method.proj_hidden_dim": 32,
            "method.bottleneck_dim": 16,
            "method.freeze_last_layer_epochs": 1,
        },
    )
    method = build_method(cfg)
    views = [torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28)]
    for step, frozen in ((0, True), (9, False)):
        method.zero_grad()
        clock = Clock(step=step, total_steps=10, steps_per_epoch=5, epochs=2)  # epoch 1 ends at step 5
        method(views, clock).loss.backward()
        method.before_optimizer_step(clock)
        grads = [p.grad for p in method.student.head.last_layer.parameters() if p.requires_grad]
        assert all((g is None) == frozen for g in grads)


def test_teacher_temperature_warms_up_linearly(tiny_config):
    cfg = tiny_config(
        "dino_vits16_boosted", **{"data.name": "fmnist", "model.backbone": "vit_micro_patch4_28", "method.out_dim": 64}
    )
    method = build_method(cfg)
    clock = Clock(step=0, total_steps=300, steps_per_epoch=1, epochs=300)
    assert method.distillation.teacher_temp(clock) == pytest.approx(0.04)
    assert method.distillation.teacher_temp(clock.at(15)) == pytest.approx(0.055)
    assert method.distillation.teacher_temp(clock.at(30)) == pytest.approx(0.07)
    assert method.distillation.teacher_temp(clock.at(200)) == pytest.approx(0.07)


def test_few_steps_on_fashion_mnist_write_a_complete_run(tiny_config):
    cfg = tiny_config("dino_fmnist", **{"method.out_dim": 256})
    out = train(cfg)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    import json

    record = json.loads(lines[-1])
    for key in ("step", "epoch", "loss", "lr", "teacher_temp", "momentum", "teacher_entropy", "kl"):
        assert key in record
    assert math.isfinite(record["loss"])
    assert (out / "config.yaml").exists() and (out / "checkpoints" / "last.pt").exists()
    state = torch.load(out / "backbone.pt", weights_only=True)
    model = build_model(cfg.model.backbone, in_chans=1)
    model.load_state_dict(state, strict=True)
    # backbone.pt is the teacher's backbone, as the paper evaluates
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    teacher_key = "teacher.net.backbone.model.pos_embed"
    assert torch.equal(ckpt["model"][teacher_key], state["pos_embed"])
    assert not torch.equal(ckpt["model"]["student.backbone.model.pos_embed"], state["pos_embed"])
