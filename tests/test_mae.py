"""MAE: the loss against its formula, random masking, token dropping in the backbone (and the conv stem's
leak it closes), the decoder's unshuffle, the encoder's init, the one colour-free view, refusals."""

from __future__ import annotations

import math

import pytest
import torch

from sslzoo.augment import CropsAndParams, DeviceViews
from sslzoo.backbones import create_backbone
from sslzoo.build import build_method, check_method
from sslzoo.data import data_info
from sslzoo.errors import UserError
from sslzoo.losses.mae import MaskedPixelLoss
from sslzoo.masking import random_masking
from sslzoo.optim import parameter_groups
from sslzoo.recipes import load_config
from sslzoo.schedules import Clock

CLOCK = Clock(step=0, total_steps=10, steps_per_epoch=10, epochs=1)
SMALL_DECODER = {"method.decoder_dim": 32, "method.decoder_depth": 1, "method.decoder_heads": 2}


def make_mae(tiny_config, **overrides):
    return build_method(tiny_config("mae_fmnist", **{**SMALL_DECODER, **overrides}))


# --------------------------------------------------------------------------- the loss


def direct_loss(pred, images, mask, patch, norm_pix):
    """The paper's loss element by element: patches of the images in row-major order with pixels in (row,
    column, channel) order, optionally normalised by their mean and unbiased variance; the mean squared error
    per removed patch, averaged over the removed patches."""
    batch, channels, height, width = len(images), len(images[0]), len(images[0][0]), len(images[0][0][0])
    total, count = 0.0, 0
    for n in range(batch):
        for i in range((height // patch) * (width // patch)):
            if not mask[n][i]:
                continue
            row, col = divmod(i, width // patch)
            x = [
                images[n][c][row * patch + a][col * patch + b]
                for a in range(patch)
                for b in range(patch)
                for c in range(channels)
            ]
            if norm_pix:
                mean = sum(x) / len(x)
                var = sum((v - mean) ** 2 for v in x) / (len(x) - 1)
                x = [(v - mean) / math.sqrt(var + 1e-6) for v in x]
            total += sum((p - t) ** 2 for p, t in zip(pred[n][i], x)) / len(x)
            count += 1
    return total / count


@pytest.mark.parametrize("norm_pix", [True, False])
def test_loss_matches_the_formula(norm_pix):
    from lightly.models.utils import patchify

    torch.manual_seed(0)
    batch, channels, size, patch = 3, 2, 8, 4
    images = torch.randn(batch, channels, size, size, dtype=torch.float64)
    images[0, :, :4, :4] = 0.5  # a constant patch: the variance is 0, the eps keeps it finite
    pred = torch.randn(batch, 4, patch * patch * channels, dtype=torch.float64)
    mask = torch.rand(batch, 4) < 0.6
    mask[0, 0] = True
    got = MaskedPixelLoss(norm_pix)(pred, patchify(images, patch), mask)
    want = direct_loss(pred.tolist(), images.tolist(), mask.tolist(), patch, norm_pix)
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_loss_ignores_the_visible_patches():
    torch.manual_seed(1)
    pred = torch.randn(4, 9, 12, requires_grad=True)
    patches, mask = torch.randn(4, 9, 12), torch.rand(4, 9) < 0.75
    loss = MaskedPixelLoss(True)
    base = loss(pred, patches, mask)
    base.backward()
    assert not pred.grad[~mask].any() and pred.grad[mask].abs().sum() > 0
    changed = pred.detach().clone()
    changed[~mask] += 100.0
    assert loss(changed, patches, mask).item() == pytest.approx(base.item(), rel=1e-6)
    changed[mask] += 1.0
    assert loss(changed, patches, mask).item() != pytest.approx(base.item(), rel=1e-3)


def test_loss_is_fp32_under_bf16_inputs():
    pred, patches = torch.randn(2, 4, 16).bfloat16(), torch.randn(2, 4, 16).bfloat16()
    assert MaskedPixelLoss(True)(pred, patches, torch.ones(2, 4, dtype=torch.bool)).dtype == torch.float32


# --------------------------------------------------------------------------- masking and token dropping


@pytest.mark.parametrize("num_patches, ratio", [(49, 0.75), (196, 0.75), (49, 0.5), (16, 0.8)])
def test_masking_keeps_exactly_the_papers_share_of_patches_per_image(num_patches, ratio):
    torch.manual_seed(2)
    keep, mask = random_masking(64, num_patches, ratio, torch.device("cpu"))
    kept = int(num_patches * (1 - ratio))  # models_mae.py len_keep
    assert keep.shape == (64, kept) and mask.shape == (64, num_patches)
    assert (mask.sum(dim=1) == num_patches - kept).all()
    assert all(len(set(row.tolist())) == kept for row in keep)  # distinct patches
    assert not mask.gather(1, keep).any()  # the kept patches are exactly the unmasked ones
    assert len({tuple(sorted(row.tolist())) for row in keep}) > 60  # each image draws its own
    first = mask.float().mean(dim=0)
    assert 0.5 * ratio < first.min() and first.max() < min(1.0, 1.5 * ratio)  # every position gets removed


def test_the_encoder_sees_only_the_kept_tokens_at_their_positions():
    """With a patchify projection: [CLS] + the kept patches' embeddings plus their position embeddings,
    through the blocks, as models_mae.py forward_encoder computes it."""
    torch.manual_seed(3)
    backbone = create_backbone("vit_micro_patch4_28", in_chans=1).eval()
    vit = backbone.model
    x = torch.randn(3, 1, 28, 28)
    keep, _ = random_masking(3, 49, 0.75, x.device)
    got = backbone.forward_tokens(x, keep=keep)
    patches = vit.patch_embed(x).flatten(1, 2) + vit.pos_embed[:, 1:]
    kept = torch.gather(patches, 1, keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
    cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(3, -1, -1)
    want = vit.norm(vit.blocks(torch.cat([cls, kept], dim=1)))
    assert got.shape == (3, 1 + 12, vit.embed_dim)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["vit_convstem_micro_28", "vit_deepstem_micro_28"])
def test_a_conv_stem_sees_no_pixel_of_a_removed_patch(name):
    """Its overlapping 3x3 convolutions reach into neighbouring patches: without the zeroing the kept tokens
    would depend on removed pixels (checked below on the stem alone); with it they do not, even in train mode."""
    torch.manual_seed(4)
    backbone = create_backbone(name, in_chans=1).train()
    x = torch.randn(4, 1, 28, 28, requires_grad=True)
    keep, mask = random_masking(4, 49, 0.75, x.device)
    backbone.forward_tokens(x, keep=keep).sum().backward()
    removed = mask.view(4, 1, 7, 1, 7, 1).expand(4, 1, 7, 4, 7, 4).reshape(4, 1, 28, 28)
    assert not x.grad[removed].any() and x.grad[~removed].abs().sum() > 0

    x.grad = None
    tokens = backbone.model.patch_embed(x).flatten(1, 2)  # the stem on the whole image
    torch.gather(tokens, 1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])).sum().backward()
    assert x.grad[removed].abs().sum() > 0  # the leak the zeroing closes


# --------------------------------------------------------------------------- the method


def test_decoder_input_is_the_official_unshuffle(tiny_config, monkeypatch):
    """The decoder sees W_e z at the kept positions and e_[MASK] elsewhere, plus the position embedding: the same
    tokens as models_mae.py's forward_decoder (mask tokens appended, then gathered by ids_restore)."""
    torch.manual_seed(5)
    method = make_mae(tiny_config).eval()
    x = torch.randn(2, 1, 28, 28)
    seen = []
    original = method.decoder.decode
    monkeypatch.setattr(method.decoder, "decode", lambda u: seen.append(u) or original(u))
    torch.manual_seed(6)
    y, m, z = method.reconstruct(x)
    torch.manual_seed(6)
    noise = torch.rand(2, 49)  # models_mae.py random_masking from the same draw
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    e = method.decoder_embed(z)
    tokens = torch.cat([e[:, 1:], method.decoder.mask_token.expand(2, 49 - 12, -1)], dim=1)
    tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, e.shape[-1]))
    want = torch.cat([e[:, :1], tokens], dim=1)
    torch.testing.assert_close(seen[0], want + method.decoder.pos_embed)  # forward_decoder's x + decoder_pos_embed
    assert torch.equal(m, torch.ones(2, 49, dtype=torch.bool).scatter(1, ids_shuffle[:, :12], False))
    assert y.shape == (2, 49, 16)


def test_training_step_reconstructs_the_removed_patches(tiny_config):
    torch.manual_seed(7)
    method = make_mae(tiny_config, **{"method.norm_pix_loss": False})
    x = torch.randn(4, 1, 28, 28)
    torch.manual_seed(8)
    out = method([x], CLOCK)
    torch.manual_seed(8)
    y, m, z = method.reconstruct(x)
    from lightly.models.utils import patchify

    want = direct_loss(y.tolist(), x.tolist(), m.tolist(), 4, norm_pix=False)
    assert out.loss.item() == pytest.approx(want, rel=1e-5)
    assert out.logs["mask_ratio"] == pytest.approx(37 / 49)
    assert torch.equal(out.features, z[:, 0])
    out.loss.backward()
    assert method.decoder.mask_token.grad.abs().sum() > 0 and method.encoder.model.cls_token.grad.abs().sum() > 0
    assert patchify(x, 4).shape == y.shape


def test_the_encoder_has_maes_fixed_sincos_position_embedding(tiny_config):
    from lightly.models.utils import get_2d_sine_cosine_positional_embedding

    method = make_mae(tiny_config)
    pos = method.encoder.model.pos_embed
    want = torch.from_numpy(get_2d_sine_cosine_positional_embedding(128, 7, cls_token=True)).float()
    assert torch.equal(pos[0], want) and not pos.requires_grad
    assert torch.equal(method.decoder.pos_embed[0], torch.from_numpy(
        get_2d_sine_cosine_positional_embedding(32, 7, cls_token=True)).float())  # fmt: skip
    trained = {id(p) for group in parameter_groups(method, True) for p in group["params"]}
    assert id(pos) not in trained and id(method.decoder.pos_embed) not in trained
    decayed = {
        id(p) for group in parameter_groups(method, True) if group["apply_weight_decay"] for p in group["params"]
    }
    assert id(method.encoder.model.cls_token) in decayed  # timm add_weight_decay decays it (3-D)


def test_one_view_without_colour(tiny_config):
    """The preset's view is the crop and flip alone: the batched photometric stage only normalises it."""
    cfg = tiny_config("mae_fmnist")
    assert cfg.augment.global_crops == 1 and cfg.augment.local_crops == 0
    assert tuple(cfg.augment.global_scale) == (0.2, 1.0)
    info = data_info(cfg.data)
    views = CropsAndParams(cfg.augment, info.channels)(torch.randint(0, 256, (28, 28), dtype=torch.uint8))
    batch = type(views)([v[None] for v in views.images], [p[None] for p in views.params])
    (got,) = DeviceViews(cfg.augment, list(info.mean), list(info.std))(batch, torch.device("cpu"))
    want = (views.images[0][None].float() / 255 - info.mean[0]) / info.std[0]
    torch.testing.assert_close(got, want)


def test_a_20px_view_trains_with_the_decoder_positions_resampled(tiny_config):
    """FixRes-style 20-px crops: a 5x5 grid, 6 of 25 patches kept, the decoder's sin-cos embedding resampled
    (bicubic, as timm resamples the encoder's); the [CLS] position is kept as it is."""
    torch.manual_seed(0)
    method = make_mae(tiny_config)
    x = torch.randn(2, 1, 20, 20)
    y, m, z = method.reconstruct(x)
    assert y.shape == (2, 25, 16) and m.shape == (2, 25) and z.shape[1] == 1 + 6
    assert int(m.sum(1)[0]) == 19
    native = method.decoder.pos_embed
    pos = method.decoder_pos_embed((5, 5), 1)
    assert pos.shape == (1, 26, native.shape[-1]) and torch.equal(pos[:, 0], native[:, 0])
    assert not torch.allclose(pos[:, 1:], native[:, 1:26])
    out = method([x], CLOCK)
    out.loss.backward()
    assert torch.isfinite(out.loss) and method.decoder_embed.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model.backbone": "resnet18_cifar"}, "not a ViT"),
        ({"method.mask_ratio": 1.0}, "mask_ratio"),
        ({"method.decoder_heads": 3}, "multiple"),
        ({"augment.global_crops": 2, "augment.blur_p": [0, 0], "augment.solarize_p": [0, 0]}, "global_crops=1"),
    ],
)
def test_bad_settings_are_refused(tiny_config, overrides, message):
    with pytest.raises(UserError, match=message):
        check_method(tiny_config("mae_fmnist", **overrides))


@pytest.mark.parametrize("recipe, width", [("mae_vitb16", 768), ("mae_vits16", 384)])
def test_imagenet_recipes_follow_main_pretrain(recipe, width):
    cfg = load_config(recipe, {"resume": "none"})
    assert (cfg.method.mask_ratio, cfg.method.norm_pix_loss) == (0.75, True)
    assert (cfg.method.decoder_dim, cfg.method.decoder_depth, cfg.method.decoder_heads) == (512, 8, 16)
    assert cfg.optim.betas == [0.9, 0.95] and cfg.optim.lr * 4096 / 256 == pytest.approx(2.4e-3)
    assert (cfg.optim.weight_decay, cfg.optim.weight_decay_end, cfg.optim.warmup_epochs) == (0.05, 0.05, 40)
    assert cfg.trainer.epochs == 800 and cfg.augment.jitter_p == 0 and cfg.augment.global_crops == 1
    from sslzoo.backbones import build_model

    assert build_model(cfg.model.backbone).embed_dim == width


# --------------------------------------------------------------------------- the teaching lab


def test_a_tiny_run_draws_reconstructions_and_fine_tunes(tiny_config, tmp_path, capsys):
    import json

    from conftest import one_line_error

    from sslzoo.cli import train
    from sslzoo.eval.__main__ import main as eval_main
    from sslzoo.eval.evaluate import method_from_checkpoint
    from sslzoo.rundir import RunDir
    from sslzoo.viz.__main__ import main
    from sslzoo.viz.reconstructions import reconstruct

    cfg = tiny_config("mae_fmnist", **SMALL_DECODER, **{"trainer.max_steps": 2, "data.batch_size": 8})
    run = train(cfg)
    out = tmp_path / "figure.png"
    main(["reconstructions", f"run={run}", "images=3", f"out={out}"])
    assert out.is_file() and out.read_bytes()[:4] == b"\x89PNG"

    method, _, _ = method_from_checkpoint(run / "checkpoints" / "last.pt")
    images = torch.randn(2, 1, 28, 28)
    torch.manual_seed(9)
    masked, reconstruction, original = reconstruct(method.eval(), images)
    torch.manual_seed(9)
    _, m, _ = method.reconstruct(images)
    removed = m.view(2, 1, 7, 1, 7, 1).expand(2, 1, 7, 4, 7, 4).reshape(2, 1, 28, 28)
    assert not masked[removed].any() and torch.equal(masked[~removed], images[~removed])
    assert torch.equal(reconstruction[~removed], images[~removed])  # the visible patches pasted back
    assert not torch.allclose(reconstruction[removed], images[removed])
    assert torch.equal(original, images)

    assert eval_main(["finetune", f"run={run}", "train_limit=64", "test_limit=32", "finetune.budget=2"]) == 0
    record = json.loads(RunDir(run).eval_record("finetune").read_text())
    assert record["subject"]["backbone"] == cfg.model.backbone and 0 <= record["finetune_top1"] <= 1

    other = {"trainer.max_steps": 1, "trainer.out_dir": str(tmp_path / "simclr"), "method.proj_hidden_dim": 32}
    simclr = train(tiny_config("simclr_fmnist", **other))
    capsys.readouterr()
    assert "reconstructs no pixels" in one_line_error(main, ["reconstructions", f"run={simclr}"], capsys)
    assert "no checkpoint" in one_line_error(main, ["reconstructions", f"run={tmp_path}"], capsys)
