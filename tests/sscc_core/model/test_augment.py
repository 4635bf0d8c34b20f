"""Invariants of the augmentation pool, on patches of the real Salinas-A scene."""

from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from sscc_core.model.augment import (
    OP_BAND_MASK,
    OP_BLUR,
    OP_PIXEL_MASK,
    augment,
    augment_with_ops,
    gaussian_blur,
    resized_crop,
    sample_crop_boxes,
    two_views,
)
from sscc_core.config import AugmentConfig, replace

P = 11
C = 8
# Crop and flip off: the view is the input unless one of the three ops changes it.
NO_GEOMETRY = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0)


@pytest.fixture(scope="module")
def patches(salinas_features: torch.Tensor) -> torch.Tensor:
    """600 random 11x11 patches of Salinas-A after the recipe's pre-processing."""
    pcs = salinas_features.numpy()
    rng = np.random.default_rng(0)
    ys = rng.integers(0, pcs.shape[1] - P + 1, 600)
    xs = rng.integers(0, pcs.shape[2] - P + 1, 600)
    stack = np.stack([pcs[:, y : y + P, x : x + P] for y, x in zip(ys, xs)])
    return torch.from_numpy(stack).float()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_and_dtype_preserved(patches: torch.Tensor, dtype: torch.dtype) -> None:
    x = patches[:50].to(dtype)
    out = augment(x, AugmentConfig(), gen(0))
    assert out.shape == x.shape and out.dtype == dtype


def test_seeded_reproducible_and_views_independent(patches: torch.Tensor) -> None:
    cfg = AugmentConfig()
    a = augment(patches, cfg, gen(1))
    assert torch.equal(a, augment(patches, cfg, gen(1)))
    assert not torch.equal(a, augment(patches, cfg, gen(2)))
    va, vb = two_views(patches, cfg, gen(1))
    assert torch.equal(va, a) and not torch.equal(va, vb)


def test_identity_when_every_op_is_off(patches: torch.Tensor) -> None:
    cfg = replace(NO_GEOMETRY, blur_p=0.0, pixel_mask_p=0.0, band_mask_p=0.0)
    boxes = sample_crop_boxes(len(patches), P, P, cfg.crop_scale, cfg.crop_ratio, gen(0))
    assert torch.equal(boxes, torch.tensor([[0, 0, P, P]]).expand(len(patches), 4))
    torch.testing.assert_close(augment(patches, cfg, gen(0)), patches, atol=1e-6, rtol=0)


def test_resized_crop_equals_per_sample_interpolate(patches: torch.Tensor) -> None:
    x = patches[:200]
    boxes = sample_crop_boxes(len(x), P, P, (0.08, 1.0), (3 / 4, 4 / 3), gen(3))
    expected = torch.cat([
        F.interpolate(x[i : i + 1, :, t : t + h, l : l + w], size=(P, P), mode="bilinear",
                      align_corners=False)
        for i, (t, l, h, w) in enumerate(boxes.tolist())
    ])
    torch.testing.assert_close(resized_crop(x, boxes, (P, P)), expected, atol=1e-5, rtol=1e-5)


def test_crop_boxes_fit_and_vary_per_sample() -> None:
    n = 4000
    boxes = sample_crop_boxes(n, P, P, (0.08, 1.0), (3 / 4, 4 / 3), gen(4))
    top, left, h, w = boxes.T
    assert (h >= 1).all() and (w >= 1).all()
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= P).all() and (left + w <= P).all()
    assert len(set(map(tuple, boxes.tolist()))) > 100  # drawn per sample, not once per batch
    # sqrt(area * ratio) rounded: sides stay within the rounding of the ratio range
    assert ((w.float() / h.float()) < 2.0).all() and ((h.float() / w.float()) < 2.0).all()
    frac = (h * w).float() / P**2
    assert frac.min() < 0.15 and frac.max() == 1.0


def test_flip_p1_is_torch_flip(patches: torch.Tensor) -> None:
    cfg = replace(NO_GEOMETRY, flip_p=1.0, blur_p=0.0, pixel_mask_p=0.0, band_mask_p=0.0)
    torch.testing.assert_close(
        augment(patches, cfg, gen(0)), torch.flip(patches, dims=[-1]), atol=1e-6, rtol=0
    )


def test_pixel_mask_zeroes_whole_positions_about_half(patches: torch.Tensor) -> None:
    cfg = replace(NO_GEOMETRY, blur_p=0.0, band_mask_p=0.0)
    out, ops = augment_with_ops(patches, cfg, gen(5))
    sel = ops == OP_PIXEL_MASK
    x, y = patches[sel], out[sel]
    zero_pos = (y == 0).all(dim=1, keepdim=True)  # (n, 1, P, P)
    assert torch.equal((y == 0), zero_pos.expand_as(y))  # a zero is always a whole position
    assert torch.equal(y, x * ~zero_pos)  # everything else untouched
    assert 0.45 < zero_pos.float().mean().item() < 0.55
    torch.testing.assert_close(out[~sel], patches[~sel], atol=1e-6, rtol=0)


def test_band_mask_zeroes_whole_bands(patches: torch.Tensor) -> None:
    cfg = replace(NO_GEOMETRY, blur_p=0.0, pixel_mask_p=0.0)
    out, ops = augment_with_ops(patches, cfg, gen(6))
    sel = ops == OP_BAND_MASK
    x, y = patches[sel], out[sel]
    zero_band = (y == 0).flatten(2).all(dim=2)[..., None, None]  # (n, C, 1, 1)
    assert torch.equal((y == 0), zero_band.expand_as(y))
    assert torch.equal(y, x * ~zero_band)
    assert 0.4 < zero_band.float().mean().item() < 0.6


def test_blur_keeps_constants_and_matches_scipy(patches: torch.Tensor) -> None:
    sigma = torch.tensor([0.1, 0.7, 2.0])
    const = torch.full((3, C, P, P), 3.25)
    torch.testing.assert_close(gaussian_blur(const, sigma), const)
    x = patches[:3].double()
    out = gaussian_blur(x, sigma.double())
    for i, s in enumerate(sigma.tolist()):
        ref = gaussian_filter(x[i].numpy(), sigma=s, radius=1, mode="mirror", axes=(1, 2))
        np.testing.assert_allclose(out[i].numpy(), ref, atol=1e-12)


def test_each_sample_gets_exactly_one_op(patches: torch.Tensor) -> None:
    x = patches.repeat(5, 1, 1, 1)  # 3000 samples
    out, ops = augment_with_ops(x, replace(NO_GEOMETRY, blur_p=1.0), gen(7))
    counts = torch.bincount(ops, minlength=3)
    assert counts.sum() == len(x) and (abs(counts - len(x) / 3) < 150).all()
    zeros = out == 0
    pos_closure = zeros.all(dim=1, keepdim=True).expand_as(zeros)
    band_closure = zeros.flatten(2).all(dim=2)[..., None, None].expand_as(zeros)
    changed = (out - x).abs().flatten(1).amax(dim=1) > 1e-4
    for op in (OP_BLUR, OP_PIXEL_MASK, OP_BAND_MASK):
        sel = ops == op
        assert changed[sel].float().mean() > 0.8  # the chosen op does act
        z = zeros[sel]
        if op == OP_BLUR:
            assert not z.any()  # no masking on blurred samples
        else:  # only this op's zero pattern, every other value untouched
            closure = pos_closure if op == OP_PIXEL_MASK else band_closure
            assert torch.equal(z, closure[sel])
            assert torch.equal(out[sel], x[sel] * ~z)


@pytest.mark.parametrize(
    ("changes", "field"),
    [({"crop_scale": (0.0, 1.0)}, "crop_scale"), ({"crop_ratio": (2.0, 1.0)}, "crop_ratio"),
     ({"blur_sigma": (0.0, 2.0)}, "blur_sigma")],
)
def test_bad_config_raises(patches: torch.Tensor, changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"AugmentConfig.{field}"):
        augment(patches[:2], replace(AugmentConfig(), **changes), gen(0))


def test_bad_input_raises() -> None:
    with pytest.raises(ValueError, match=r"\(N, C, P, P\)"):
        augment(torch.zeros(8, P, P), AugmentConfig(), gen(0))
    with pytest.raises(ValueError, match="floating"):
        augment(torch.zeros(2, 8, P, P, dtype=torch.int64), AugmentConfig(), gen(0))
