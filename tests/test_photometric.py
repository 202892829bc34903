"""The batched photometric stage against torchvision's functional ops, image by image."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from sslzoo.augment import CroppedViews, CropsAndParams, DeviceViews, MultiCrop, draw_crop
from sslzoo.photometric import (
    NUM_PARAMS,
    P,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    apply_params,
    blur_kernel_size,
    color_jitter,
    draw_params,
    gaussian_blur,
    grayscale,
    solarize,
)
from sslzoo.recipes import load_config

TOLERANCE = 1e-5  # float32 rounding; the hue round trip through HSV is looser
HUE_TOLERANCE = 1e-4


def images(batch: int = 6, channels: int = 3, size: int = 12) -> torch.Tensor:
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(channels))


@pytest.mark.parametrize("channels", [1, 3])
def test_brightness_contrast_saturation_match_torchvision(channels: int) -> None:
    x = images(channels=channels)
    factors = torch.tensor([0.0, 0.2, 0.7, 1.0, 1.4, 1.8])
    for ours, theirs in (
        (adjust_brightness, TF.adjust_brightness),
        (adjust_contrast, TF.adjust_contrast),
        (adjust_saturation, TF.adjust_saturation),
    ):
        if theirs is TF.adjust_saturation and channels == 1:
            assert torch.equal(ours(x, factors), x)  # no saturation in grayscale
            continue
        expected = torch.stack([theirs(image, float(f)) for image, f in zip(x, factors)])
        torch.testing.assert_close(ours(x, factors), expected, atol=TOLERANCE, rtol=0)


def test_hue_matches_torchvision() -> None:
    x = images()
    x[0, :, :2] = 0.5  # gray pixels: no chroma
    x[1, 0], x[1, 1] = x[1, 1], x[1, 0].clone()  # other channel orders
    shifts = torch.tensor([-0.5, -0.3, -0.05, 0.0, 0.1, 0.45])
    expected = torch.stack([TF.adjust_hue(image, float(s)) for image, s in zip(x, shifts)])
    torch.testing.assert_close(adjust_hue(x, shifts), expected, atol=HUE_TOLERANCE, rtol=0)
    assert torch.equal(adjust_hue(x, shifts)[3], x[3])  # no shift, no round trip


def test_grayscale_blur_solarize_match_torchvision() -> None:
    x = images()
    chosen = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    expected = torch.stack(
        [TF.rgb_to_grayscale(image, num_output_channels=3) if c else image for image, c in zip(x, chosen)]
    )
    torch.testing.assert_close(grayscale(x, chosen), expected, atol=TOLERANCE, rtol=0)

    kernel = blur_kernel_size(2.0)
    sigmas = torch.tensor([0.1, 0.0, 0.5, 1.0, 1.7, 2.0])
    expected = torch.stack(
        [TF.gaussian_blur(im, [kernel, kernel], [float(s), float(s)]) if s > 0 else im for im, s in zip(x, sigmas)]
    )
    torch.testing.assert_close(gaussian_blur(x, sigmas, kernel), expected, atol=TOLERANCE, rtol=0)

    expected = torch.stack([TF.solarize(image, 128 / 255) if c else image for image, c in zip(x, chosen)])
    torch.testing.assert_close(solarize(x, chosen), expected, atol=0, rtol=0)


def reference_view(image_u8: torch.Tensor, params: torch.Tensor, kernel: int, mean, std) -> torch.Tensor:
    """What the per-image pipeline does with these parameters, torchvision op by op, on a float image."""
    x = image_u8.float() / 255
    ops = (
        lambda im: TF.adjust_brightness(im, float(params[P.BRIGHTNESS])),
        lambda im: TF.adjust_contrast(im, float(params[P.CONTRAST])),
        lambda im: TF.adjust_saturation(im, float(params[P.SATURATION])) if im.shape[0] == 3 else im,
        lambda im: TF.adjust_hue(im, float(params[P.HUE])) if params[P.HUE] != 0 else im,
    )
    for op_index in params[P.ORDER : P.ORDER + 4].long().tolist():
        x = ops[op_index](x)
    if params[P.GRAYSCALE] and x.shape[0] == 3:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if params[P.SIGMA] > 0:
        sigma = float(params[P.SIGMA])
        x = TF.gaussian_blur(x, [kernel, kernel], [sigma, sigma])
    if params[P.SOLARIZE]:
        x = TF.solarize(x, 128 / 255)
    return TF.normalize(x, list(mean), list(std))


@pytest.mark.parametrize("channels", [1, 3])
def test_apply_params_matches_per_image_reference(channels: int) -> None:
    torch.manual_seed(0)
    crops = torch.randint(0, 256, (16, channels, 12, 12), dtype=torch.uint8)
    params = torch.stack(
        [draw_params((0.8, 0.8, 0.8, 0.2), 0.8, 0.2 if channels == 3 else 0.0, (0.1, 2.0), 0.5, 0.3) for _ in crops]
    )
    assert params[:, P.ORDER : P.ORDER + 4].long().sort(dim=1).values.eq(torch.arange(4)).all()
    assert len({tuple(row) for row in params[:, P.ORDER : P.ORDER + 4].tolist()}) > 1  # random orders drawn
    mean, std = (0.3,) * channels, (0.2,) * channels
    kernel = blur_kernel_size(2.0)
    expected = torch.stack([reference_view(c, p, kernel, mean, std) for c, p in zip(crops, params)])
    torch.testing.assert_close(apply_params(crops, params, kernel, mean, std), expected, atol=5 * HUE_TOLERANCE, rtol=0)


def test_draw_params_follow_the_configured_distributions() -> None:
    torch.manual_seed(0)
    drawn = torch.stack([draw_params((0.4, 0.4, 0.2, 0.1), 0.8, 0.2, (0.1, 2.0), 0.5, 0.2) for _ in range(4000)])
    assert drawn.shape == (4000, NUM_PARAMS)
    jittered = drawn[:, P.BRIGHTNESS] != 1
    assert abs(jittered.float().mean() - 0.8) < 0.03
    assert drawn[:, P.BRIGHTNESS].min() >= 0.6 and drawn[:, P.BRIGHTNESS].max() <= 1.4
    assert drawn[:, P.SATURATION].min() >= 0.8 and drawn[:, P.SATURATION].max() <= 1.2
    assert drawn[:, P.HUE].abs().max() <= 0.1
    assert (drawn[~jittered, P.ORDER : P.ORDER + 4] == torch.arange(4.0)).all()  # unjittered: no shuffle
    assert abs(drawn[:, P.GRAYSCALE].mean() - 0.2) < 0.03
    blurred = drawn[:, P.SIGMA] > 0
    assert abs(blurred.float().mean() - 0.5) < 0.03
    assert drawn[blurred, P.SIGMA].min() >= 0.1 and drawn[blurred, P.SIGMA].max() <= 2.0
    assert abs(drawn[:, P.SOLARIZE].mean() - 0.2) < 0.03
    orders = [tuple(row) for row in drawn[jittered, P.ORDER : P.ORDER + 4].long().tolist()]
    counts = [orders.count(order) for order in set(orders)]
    assert len(counts) == 24 and max(counts) - min(counts) < 0.5 * len(orders) / 24  # ColorJitter's uniform randperm
    torch.manual_seed(1)
    first = draw_params((0.4, 0.4, 0.2, 0.1), 0.8, 0.2, (0.1, 2.0), 0.5, 0.2)
    torch.manual_seed(1)
    assert torch.equal(first, draw_params((0.4, 0.4, 0.2, 0.1), 0.8, 0.2, (0.1, 2.0), 0.5, 0.2))


def test_unjittered_view_is_only_normalised() -> None:
    crops = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    params = torch.stack([draw_params((0.4, 0.4, 0.0, 0.0), 0.0, 0.0, (0.1, 0.5), 0.0, 0.0) for _ in crops])
    out = apply_params(crops, params, 3, (0.5,), (0.25,))
    torch.testing.assert_close(out, (crops.float() / 255 - 0.5) / 0.25)
    assert torch.equal(color_jitter(crops.float() / 255, params), crops.float() / 255)


@pytest.mark.parametrize("channels", [1, 3])
def test_both_paths_give_the_same_views_shapes_and_statistics(channels: int) -> None:
    """The loader's two outputs, finished on the device, give views of the same shapes, and the pixel
    statistics of each view over 600 augmented images agree within 0.02 of the [0, 1] range: three standard
    errors (0.008) plus the per-image path's rounding down to uint8 after each of up to five ops (jitter,
    grayscale), which darkens its views by up to 2.5/255 on average (the module's docstring)."""
    cfg = load_config("dino_fmnist", {})
    mean, std = [0.0] * channels, [1.0] * channels
    image = torch.randint(0, 256, (channels, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    count = 600
    multi_crop = MultiCrop(cfg.augment, channels, mean, std)
    per_image = [multi_crop.seeded(image, seed) for seed in range(count)]
    crops_and_params = CropsAndParams(cfg.augment, channels)
    batched = [crops_and_params.seeded(image, count + seed) for seed in range(count)]
    assert all(isinstance(b, CroppedViews) and b.images[0].dtype == torch.uint8 for b in batched)
    collated = CroppedViews(*([torch.stack(views) for views in zip(*part)] for part in zip(*batched)))
    finished = DeviceViews(cfg.augment, mean, std)(collated, torch.device("cpu"))
    reference = [torch.stack(views) for views in zip(*per_image)]
    assert [f.shape for f in finished] == [r.shape for r in reference]
    for ours, theirs in zip(finished, reference):
        assert ours.dtype == theirs.dtype == torch.float32
        assert abs(ours.mean() - theirs.mean()) < 0.02
        assert abs(ours.std() - theirs.std()) < 0.02


def test_seeded_views_repeat_and_leave_the_global_rng_alone() -> None:
    cfg = load_config("simclr_fmnist", {})
    image = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8)
    transform = CropsAndParams(cfg.augment, 1)
    state = torch.get_rng_state()
    first, again, other = transform.seeded(image, 7), transform.seeded(image, 7), transform.seeded(image, 8)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(first.images + first.params, again.images + again.params))
    assert not all(torch.equal(a, b) for a, b in zip(first.params, other.params))


def test_crop_boxes_follow_random_resized_crop() -> None:
    """Boxes inside the image, areas within the scale range and ratios within [3/4, 4/3] (up to rounding)."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(500):
        top, left, h, w = draw_crop(28, 20, (0.2, 0.9), generator)
        assert 0 <= top and top + h <= 28 and 0 <= left and left + w <= 20
        assert 0.2 * 560 * 0.85 <= h * w <= 0.9 * 560 * 1.15
        assert 3 / 4 * 0.85 <= w / h <= 4 / 3 * 1.15
    boxes = [draw_crop(28, 28, (0.25, 0.25), generator) for _ in range(2000)]
    relative_tops = torch.tensor([top / (28 - h) for top, _, h, _ in boxes])  # 0: at the top, 1: at the bottom
    assert relative_tops.min() == 0 and relative_tops.max() == 1 and abs(relative_tops.mean() - 0.5) < 0.03
    assert draw_crop(10, 40, (1.0, 1.0), generator) == (0, 13, 10, 13)  # no try fits: the centred fallback
