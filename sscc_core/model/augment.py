"""The SSCC spectral-spatial augmentation pool: batched in torch, seeded, drawn per sample.

Each view of a patch batch ``x`` of shape (N, C, P, P) (C = PCA components, P = patch side in
pixels) is built, independently for every sample, as the authors' pipeline does with
torchvision:

1. RandomResizedCrop back to P x P (area fraction ``crop_scale``, aspect ratio ``crop_ratio``;
   bilinear, same sampling as ``torchvision.transforms.RandomResizedCrop``).
2. Horizontal flip (along the width axis) with probability ``flip_p``.
3. Exactly one of three ops, chosen uniformly:

   * ``OP_BLUR``: 3x3 Gaussian blur over the two spatial axes, sigma ~ U(``blur_sigma``) pixels,
     applied with probability ``blur_p`` (reflect padding, as torchvision's ``GaussianBlur``);
   * ``OP_PIXEL_MASK``: each spatial position zeroed in all bands with probability
     ``pixel_mask_p``;
   * ``OP_BAND_MASK``: each band zeroed at all positions with probability ``band_mask_p``.

All random numbers come from the given :class:`torch.Generator` in a fixed order and in a fixed
amount for a given batch shape, so the same seed gives the same views.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from sscc_core.config import AugmentConfig

OP_BLUR = 0
OP_PIXEL_MASK = 1
OP_BAND_MASK = 2

_CROP_ATTEMPTS = 10  # torchvision's number of tries before falling back to a central crop


def _uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator,
             device: torch.device) -> Tensor:
    """U(low, high) float32 samples drawn on the generator's device, returned on ``device``."""
    u = torch.rand(shape, generator=generator, device=generator.device)
    return (low + (high - low) * u).to(device)


def _check_range(name: str, bounds: tuple[float, float], upper: float = math.inf) -> None:
    lo, hi = bounds
    if not 0.0 < lo <= hi <= upper:
        raise ValueError(f"AugmentConfig.{name}: expected 0 < low <= high <= {upper}, got {bounds}")


def _check_inputs(x: Tensor, cfg: AugmentConfig) -> None:
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(
            f"augment: expected a floating patch batch of shape (N, C, P, P), got "
            f"{tuple(x.shape)} {x.dtype}"
        )
    _check_range("crop_scale", cfg.crop_scale, upper=1.0)
    _check_range("crop_ratio", cfg.crop_ratio)
    _check_range("blur_sigma", cfg.blur_sigma)


def sample_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> Tensor:
    """Draw one RandomResizedCrop box per sample, exactly as torchvision's ``get_params``.

    Up to 10 attempts per sample draw an area fraction ~ U(scale) and a log aspect ratio ~
    U(log ratio); the first attempt whose rounded box fits the image is kept, at a uniform
    position. Samples with no fitting attempt get torchvision's central fallback crop.

    Args:
        n: Number of samples N.
        height: Image height H, pixels.
        width: Image width W, pixels.
        scale: Area fraction range (low, high), 0 < low <= high <= 1.
        ratio: Width / height range (low, high).
        generator: Source of randomness.

    Returns:
        int64 tensor (N, 4) of ``(top, left, box_height, box_width)`` in pixels, on the
        generator's device.
    """
    dev = generator.device
    area = height * width * _uniform((n, _CROP_ATTEMPTS), *scale, generator, dev)
    log_r = _uniform((n, _CROP_ATTEMPTS), math.log(ratio[0]), math.log(ratio[1]), generator, dev)
    aspect = torch.exp(log_r)
    w = torch.round(torch.sqrt(area * aspect)).long()
    h = torch.round(torch.sqrt(area / aspect)).long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.int().argmax(dim=1, keepdim=True)  # first fitting attempt (0 when none fits)
    h = h.gather(1, first).squeeze(1)
    w = w.gather(1, first).squeeze(1)

    in_ratio = width / height
    if in_ratio < ratio[0]:
        fb_w, fb_h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fb_w, fb_h = int(round(height * ratio[1])), height
    else:
        fb_w, fb_h = width, height
    found = fits.any(dim=1)
    h = torch.where(found, h, torch.full_like(h, fb_h))
    w = torch.where(found, w, torch.full_like(w, fb_w))

    u_top = torch.rand(n, generator=generator, device=dev)
    u_left = torch.rand(n, generator=generator, device=dev)
    top = torch.where(found, (u_top * (height - h + 1)).long(), (height - h) // 2)
    left = torch.where(found, (u_left * (width - w + 1)).long(), (width - w) // 2)
    return torch.stack([top, left, h, w], dim=1)


def _linear_taps(start: Tensor, length: Tensor, out: int) -> tuple[Tensor, Tensor, Tensor]:
    """Bilinear taps (``F.interpolate``, ``align_corners=False``) of per-sample 1-D boxes.

    Args:
        start: Box starts (N, 1), pixels.
        length: Box lengths (N, 1), pixels.
        out: Output length, pixels.

    Returns:
        ``(i0, i1, frac)``, each (N, out): the two source indices in the full image and the
        weight of ``i1``.
    """
    scale = length.to(torch.float32) / out
    dst = torch.arange(out, device=start.device, dtype=torch.float32)[None]
    src = (scale * (dst + 0.5) - 0.5).clamp(min=0.0)  # position inside the box, as interpolate
    lo = src.floor()
    frac = src - lo
    i0 = lo.long()
    i1 = torch.where(i0 < length - 1, i0 + 1, i0)
    return start + i0, start + i1, frac


def _take(t: Tensor, dim: int, index: Tensor) -> Tensor:
    """Per-sample ``t[i, :, index[i], :]`` (dim 2) or ``t[i, :, :, index[i]]`` (dim 3).

    Args:
        t: (N, C, H, W).
        dim: 2 or 3, the spatial axis to index.
        index: int64 (N, M) indices along ``dim``.
    """
    shape = list(t.shape)
    shape[dim] = index.shape[1]
    view = [t.shape[0], 1, 1, 1]
    view[dim] = index.shape[1]
    return t.gather(dim, index.view(view).expand(shape))


def resized_crop(x: Tensor, boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Crop a per-sample box from each sample and resize it bilinearly to ``size``.

    Equal (up to float rounding) to slicing ``x[i, :, top:top+h, left:left+w]`` and calling
    ``F.interpolate(..., size, mode="bilinear", align_corners=False)`` per sample, but batched:
    separable gathers along the width, then the height, with the same taps and weights.

    Args:
        x: Patches (N, C, H, W).
        boxes: int64 (N, 4) ``(top, left, box_height, box_width)``, pixels.
        size: Output (height, width), pixels.

    Returns:
        Tensor (N, C, size[0], size[1]) of ``x``'s dtype.
    """
    out_h, out_w = size
    b = boxes.to(x.device)
    x0, x1, fx = _linear_taps(b[:, 1:2], b[:, 3:4], out_w)
    y0, y1, fy = _linear_taps(b[:, 0:1], b[:, 2:3], out_h)
    fx = fx.to(x.dtype)[:, None, None, :]
    fy = fy.to(x.dtype)[:, None, :, None]
    cols = (1 - fx) * _take(x, 3, x0) + fx * _take(x, 3, x1)  # (N, C, H, out_w)
    return (1 - fy) * _take(cols, 2, y0) + fy * _take(cols, 2, y1)


def gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """3x3 Gaussian blur over the two spatial axes with a per-sample sigma.

    The kernel is ``exp(-d^2 / (2 sigma^2))`` for d in {-1, 0, 1}, normalised to sum 1, applied
    separably (as an outer product) to every band; borders use reflect padding (replicate when a
    spatial side is 1 pixel, where reflection is undefined).

    Args:
        x: Patches (N, C, H, W).
        sigma: Per-sample sigma (N,), pixels, > 0.

    Returns:
        Blurred tensor (N, C, H, W).
    """
    n, c, height, width = x.shape
    d = torch.tensor([-1.0, 0.0, 1.0], device=x.device, dtype=x.dtype)
    k1 = torch.exp(-0.5 * (d[None, :] / sigma.to(x)[:, None]) ** 2)
    k1 = k1 / k1.sum(dim=1, keepdim=True)  # (N, 3)
    k2 = (k1[:, :, None] * k1[:, None, :]).repeat_interleave(c, dim=0)  # (N*C, 3, 3)
    mode = "reflect" if min(height, width) > 1 else "replicate"
    padded = F.pad(x.reshape(1, n * c, height, width), (1, 1, 1, 1), mode=mode)
    return F.conv2d(padded, k2[:, None], groups=n * c).reshape(n, c, height, width)


def augment_with_ops(
    x: Tensor, cfg: AugmentConfig, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """One augmented view of every patch, plus which of the three ops each sample got.

    Args:
        x: Patches (N, C, P, P), floating.
        cfg: Augmentation parameters.
        generator: Source of all randomness (drawn on its device, applied on ``x``'s).

    Returns:
        ``(view, ops)``: the view (N, C, P, P) with ``x``'s dtype and device, and int64 (N,)
        op codes in {``OP_BLUR``, ``OP_PIXEL_MASK``, ``OP_BAND_MASK``}.

    Raises:
        ValueError: ``x`` is not a 4-D floating tensor, or a range in ``cfg`` is invalid.
    """
    _check_inputs(x, cfg)
    n, c, height, width = x.shape
    dev = x.device

    boxes = sample_crop_boxes(n, height, width, cfg.crop_scale, cfg.crop_ratio, generator)
    x = resized_crop(x, boxes, (height, width))
    flip = _uniform((n,), 0.0, 1.0, generator, dev) < cfg.flip_p
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)

    ops = torch.randint(0, 3, (n,), generator=generator, device=generator.device).to(dev)
    sigma = _uniform((n,), *cfg.blur_sigma, generator, dev)
    blur_on = _uniform((n,), 0.0, 1.0, generator, dev) < cfg.blur_p
    pixel_zero = _uniform((n, 1, height, width), 0.0, 1.0, generator, dev) < cfg.pixel_mask_p
    band_zero = _uniform((n, c, 1, 1), 0.0, 1.0, generator, dev) < cfg.band_mask_p

    blurred = torch.where(blur_on[:, None, None, None], gaussian_blur(x, sigma), x)
    pixel_masked = x.masked_fill(pixel_zero, 0.0)
    band_masked = x.masked_fill(band_zero, 0.0)
    op = ops[:, None, None, None]
    view = torch.where(
        op == OP_BLUR, blurred, torch.where(op == OP_PIXEL_MASK, pixel_masked, band_masked)
    )
    return view, ops


def augment(x: Tensor, cfg: AugmentConfig, generator: torch.Generator) -> Tensor:
    """One augmented view (N, C, P, P) of a patch batch; see :func:`augment_with_ops`."""
    return augment_with_ops(x, cfg, generator)[0]


def two_views(x: Tensor, cfg: AugmentConfig, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Two independently drawn views ``(va, vb)`` of a patch batch, each (N, C, P, P)."""
    return augment(x, cfg, generator), augment(x, cfg, generator)
