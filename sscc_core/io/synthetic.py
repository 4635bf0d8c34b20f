"""Deterministic synthetic flight-line mosaics built from real spectra, written out of core.

A synthetic mosaic is a field map of a real scene's classes filled with that scene's **real
labelled pixels**, so within-class variability is real, not modelled:

- **Class library** (:func:`class_library`): the labelled pixels of a benchmark scene (default
  Salinas-A: 6 classes, 204 bands int16; Indian Pines: 16 classes, 200 bands uint8 8-bit), one
  pool of real spectra per class, and the class mean spectra.
- **Fields**: a Voronoi partition from one jittered seed point per cell of a square grid of
  ``field_size`` pixels; each point carries a class drawn uniformly from 1..C. A pixel only needs
  the points of the 5 x 5 cells around its own (a point is at most sqrt(2) cells from any pixel of
  its cell, every point two or more cells away is farther), so any window is computed alone.
- **Layout from a real class map** (``layout``, optional): instead of Voronoi fields, the fields
  are a crop (``layout_origin``, ``height`` x ``width``) of a real ground-truth map read by
  :func:`sscc_core.io.ground_truth.read_class_map` (e.g. the Salinas or Pavia maps whose cubes
  are not held), so the scene has real field shapes, sizes, thin strips and class proportions.
  Each class of the crop is mapped to a class of the library by a seeded draw
  (:func:`layout_classes`: distinct classes while there are enough, every library class used
  once more are needed). The map's unlabelled pixels are nodata (``layout_unlabelled="nodata"``,
  what they hold is unknown) or, with ``"background"``, real *unlabelled* pixels of the source
  scene (valid, label 0, as in a real scene's realistic protocol; textured like a field).
  A pixel within ``mix_width`` of a pixel of another class mixes with that class, its distance to
  the edge taken as the Euclidean distance to that pixel's centre less half a pixel
  (:func:`layout_fields`). ``field_size`` is not used.
- **Smooth abundances instead of fields** (``abundance_length`` L > 0): every pixel is a
  linear mixture of all C classes, ``sum_c a_c(y, x) * p_c`` with ``p_c`` one real pixel of class
  c's pool (each class drawn independently, or at the texture's shared quantile when
  ``texture_length`` > 0) and abundances ``a(y, x) = softmax(abundance_sharpness * g(y, x))`` over
  the classes, where ``g_c`` are independent smooth N(0, 1) fields correlated over about L pixels
  (:func:`abundances`). As in the unmixing benchmarks (Samson, Jasper Ridge), whose ground truth is
  the most abundant endmember, a scene has no sharp fields: a class's patches fade into their
  neighbours through a continuum of mixed pixels, a class recurs in many separate patches, and
  ``labels`` is the most abundant class, ``abundance`` its fraction and ``mix_class`` the second
  most abundant class (:func:`dominant`). ``field_size``, ``mix_width`` and ``layout`` are not
  used (a ``layout`` is refused).
- **Mixing at edges**: within ``mix_width`` pixels of the bisector between the two nearest
  points of different classes, a pixel is the linear mixture ``f * a + (1 - f) * b`` of one real
  pixel of each class, with ``f = 0.5 + 0.5 * d / mix_width`` the abundance of the nearer class
  (d = distance to the edge); elsewhere it is one real pixel of its field's class (``f = 1``).
  The edge is the nearest bisector between the pixel's point and a point of another class, which
  is the true field edge except near junctions of three fields (measured: 99.98 % of mixed pixels
  lie within ``mix_width + 1`` pixels of a pixel of their second class).
- **Texture** (``texture_length`` L > 0; 0, the default, draws pool pixels independently): each
  class's pool is ordered along its first principal component (:attr:`ClassLibrary.order`), and
  the pixel drawn at a position is the pool's quantile ``u`` of a smooth random field ``u(y, x)``,
  uniform on [0, 1] at every pixel and correlated over about L pixels (:func:`texture_field`), so
  neighbouring pixels of a field carry similar real spectra and a field varies gradually, as a
  crop's vigour or a soil's moisture does, instead of changing pixel to pixel.
- **Noise**: additive Gaussian with one standard deviation for all bands,
  ``sigma = rms(class mean spectra) / snr`` in raw units (``snr = inf``: none).
- **Nodata**: the mosaic is cut into flight lines (vertical strips of ``line_width`` columns);
  each line starts with a gap of 0..``max_gap`` nodata columns (the seam between lines), and each
  row of each line is a dropped scan line with probability ``drop_line_p``. Those pixels hold
  ``NODATA`` in every band. With ``dtype="float32"`` a ``nan_fraction`` of the other pixels holds
  NaN in every band. Both kinds are invalid (``valid`` False, ``labels`` 0).
- **Ground truth**: ``labels`` is the dominant (nearer-field) class, 1..C, 0 where invalid or
  unlabelled (a layout's background); ``abundance`` (float32) is that class's fraction (1 for
  pure pixels, 0 where invalid or unlabelled) and
  ``mix_class`` (int16) the other class of a mixed pixel (0 for pure or invalid pixels).

**Determinism.** Every value depends only on the seed and the pixel position: the field layout
and nodata stripes come from generators seeded per grid cell / flight line
(``np.random.SeedSequence([seed, stream, ...])``), and the per-pixel draws (which pool pixels,
the noise, NaN) from one generator per fixed ``BLOCK`` x ``BLOCK`` block of the global grid.
A window is assembled from the blocks it touches, so writing the mosaic window by window, in any
order, with any chunk size, or in parallel, gives bit-identical stores, and no process ever holds
more than one window.

**Stored values.** ``dtype="int16"`` (default) stores raw values of the source scale: lossless for
the int16 Salinas-A and the uint8 Indian Pines spectra, mixtures and noise rounded to the nearest
integer and clipped to ``[NODATA + 1, 32767]``. ``dtype="float32"`` stores them unrounded and
allows NaN pixels. The reflectance scale and wavelengths of the source scene are kept.
"""

from __future__ import annotations

import datetime as _dt
import functools
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import dask.array as da
import numpy as np
import scipy.ndimage
import scipy.special
import xarray as xr

from sscc_core import __version__
from sscc_core.io import ground_truth, matlab, store

BLOCK = 64  # side, in pixels, of the fixed blocks that own the per-pixel random draws
NODATA = -9999
GB = 1e9  # --size-gb counts decimal gigabytes of reflectance

# Independent random streams (first entropy word after the seed).
_CELL, _GAP, _DROP, _PIXELS, _TEXTURE, _LAYOUT, _ABUNDANCE = 1, 2, 3, 4, 5, 6, 7
_DTYPES = {"int16": np.int16, "float32": np.float32}


@dataclass(frozen=True)
class ClassLibrary:
    """Real spectra of one scene, pooled by class.

    Attributes:
        name: Source scene (a key of :data:`sscc_core.io.matlab.BENCHMARKS`).
        pixels: (N, B) float32 raw values of every labelled pixel, grouped by class 1..C.
        offsets: (C + 1,) int64; class c's pool is ``pixels[offsets[c-1]:offsets[c]]``.
        means: (C, B) float64 class mean spectra, raw units.
        wavelength: (B,) band centres in nm, or ``None`` when the scene has no band table.
        scale: Physical reflectance = raw * scale.
        source_class_ids: Source label id of each class 1..C.
        source: Input paths of the scene.
        source_dtype: Raw dtype of the scene (``"int16"``, ``"uint8"``, ...).
        order: (N,) int64; ``pixels[order]`` holds each class's pool (same offsets) sorted by
            the pixels' scores on the pool's first principal component (textured mosaics).
        background: (M, B) float32 raw values of the scene's valid unlabelled pixels, sorted by
            their first principal component (M = 0 when every pixel is labelled).
    """

    name: str
    pixels: np.ndarray
    offsets: np.ndarray
    means: np.ndarray
    wavelength: np.ndarray | None
    scale: float
    source_class_ids: tuple[int, ...]
    source: tuple[str, ...]
    source_dtype: str
    order: np.ndarray
    background: np.ndarray

    @property
    def n_classes(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_bands(self) -> int:
        return int(self.pixels.shape[1])

    def pool(self, c: int) -> np.ndarray:
        """(n_c, B) real spectra of class ``c`` (1..C)."""
        return self.pixels[self.offsets[c - 1] : self.offsets[c]]


def class_library(source: str = "salinasA", data_dir: str | Path | None = None) -> ClassLibrary:
    """Pool the labelled pixels of a benchmark scene by class (and its valid unlabelled pixels
    as the background pool).

    Args:
        source: Benchmark name (``"salinasA"``, ``"indian_pines"``, ...).
        data_dir: Directory of the scenes (default: the repository's ``data/``).

    Raises:
        ValueError: Unknown scene, or a scene without labelled pixels.
        FileNotFoundError: A file of the scene is missing.
    """
    ds = matlab.read_benchmark(source, data_dir)
    if "labels" not in ds:
        raise ValueError(f"{source}: the scene has no ground truth to pool spectra by class")
    refl = ds["reflectance"].values
    labels = ds["labels"].values.ravel()
    flat = refl.reshape(refl.shape[0], -1).T
    order = np.argsort(labels, kind="stable")
    order = order[labels[order] > 0]
    classes = labels[order]
    n_classes = int(classes.max()) if classes.size else 0
    if n_classes < 1:
        raise ValueError(f"{source}: no labelled pixel to build class pools from")
    counts = np.bincount(classes, minlength=n_classes + 1)[1:]
    pixels = flat[order].astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    means = np.stack([pixels[offsets[c] : offsets[c + 1]].mean(axis=0, dtype=np.float64)
                      for c in range(n_classes)])
    wavelength = ds["wavelength"].values if "wavelength" in ds.coords else None
    order = np.concatenate([offsets[c] + _first_component_order(pixels[offsets[c]: offsets[c + 1]])
                            for c in range(n_classes)])
    background = flat[(labels == 0) & ds["valid"].values.ravel()].astype(np.float32)
    return ClassLibrary(
        name=source, pixels=pixels, offsets=offsets, means=means, wavelength=wavelength,
        scale=float(ds["reflectance"].attrs.get("reflectance_scale", 1.0)),
        source_class_ids=tuple(ds["labels"].attrs.get("source_class_ids", range(1, n_classes + 1))),
        source=tuple(ds.attrs.get("source") or ()),
        source_dtype=str(refl.dtype),
        order=order.astype(np.int64),
        background=background[_first_component_order(background)],
    )


def _first_component_order(pool: np.ndarray) -> np.ndarray:
    """Indices that sort an (n, B) pool by its pixels' scores on the pool's first principal
    component (the sign fixed so the score grows with the pixel's mean value), stable on ties."""
    if len(pool) < 2:
        return np.arange(len(pool))
    centred = pool.astype(np.float64) - pool.mean(axis=0, dtype=np.float64)
    if not centred.any():
        return np.arange(len(pool))
    axis = np.linalg.svd(centred, full_matrices=False)[2][0]
    if axis.sum() < 0:
        axis = -axis
    return np.argsort(centred @ axis, kind="stable")


def check_background(spec: SynthSpec, library: ClassLibrary) -> None:
    """Refuse ``layout_unlabelled="background"`` for a scene without unlabelled pixels.

    Raises:
        ValueError: The layout wants background pixels and the library has none.
    """
    wants = spec.layout is not None and spec.layout_unlabelled == "background"
    if wants and not len(library.background):
        raise ValueError(f"synthetic layout_unlabelled: {library.name} labels every pixel, so it "
                         f"has no unlabelled pixels to fill the map's unlabelled ones with; use "
                         f"'nodata'")


def check_dtype(spec: SynthSpec, library: ClassLibrary) -> None:
    """Refuse to store a scene as int16 when that would not keep its raw values exactly.

    Raises:
        ValueError: ``spec.dtype`` is int16 and the scene is floating-point or its values leave
            ``(NODATA, 32767]``.
    """
    if spec.dtype != "int16":
        return
    lo, hi = float(library.pixels.min()), float(library.pixels.max())
    if not np.issubdtype(np.dtype(library.source_dtype), np.integer) or lo <= NODATA or hi > 32767:
        raise ValueError(
            f"synthetic dtype: {library.name} ({library.source_dtype}, values {lo:g}..{hi:g}) "
            f"does not fit int16 exactly; use dtype float32"
        )


@dataclass(frozen=True)
class SynthSpec:
    """Everything that fixes a synthetic mosaic (with the library's scene, its values).

    Attributes:
        height: Rows, pixels.
        width: Columns, pixels.
        seed: Seed of every random draw.
        source: Benchmark scene whose labelled pixels fill the fields.
        dtype: Stored dtype, ``"int16"`` or ``"float32"`` (see module docstring).
        snr: RMS of the class mean spectra / noise standard deviation; ``inf`` for no noise.
        field_size: Side of the seed-point grid cells, pixels (mean field size).
        mix_width: Half-width of the mixed band along field edges, pixels; 0 for sharp edges.
        line_width: Width of one flight line, pixels.
        max_gap: Most nodata columns at the start of a flight line.
        drop_line_p: Probability that a row of a flight line is a dropped scan line.
        nan_fraction: Fraction of pixels set to NaN (``dtype="float32"`` only).
        texture_length: Correlation length of the within-field texture, pixels; 0 for none
            (each pixel an independent draw from its class's pool).
        layout: Class-map file whose crop is the field map (module docstring); ``None`` for
            Voronoi fields.
        layout_var: The ``.mat`` variable holding the class map (``None``: the only 2-D one).
        layout_origin: (row, column) of the crop's top-left pixel in the class map.
        layout_unlabelled: What the class map's unlabelled pixels hold: ``"nodata"`` or
            ``"background"`` (the source's real unlabelled pixels; module docstring).
        abundance_length: Correlation length of smooth abundance maps, pixels; > 0 makes
            every pixel a mixture of all classes instead of a field's (module docstring), 0 (the
            default) keeps fields.
        abundance_sharpness: Inverse temperature of the softmax that turns the smooth fields
            into abundances (> 0; larger: purer pixels, sharper transitions).
    """

    height: int
    width: int
    seed: int = 0
    source: str = "salinasA"
    dtype: Literal["int16", "float32"] = "int16"
    snr: float = 100.0
    field_size: int = 128
    mix_width: float = 2.0
    line_width: int = 512
    max_gap: int = 8
    drop_line_p: float = 0.002
    nan_fraction: float = 0.0
    texture_length: float = 0.0
    layout: str | None = None
    layout_var: str | None = None
    layout_origin: tuple[int, int] = (0, 0)
    layout_unlabelled: Literal["nodata", "background"] = "nodata"
    abundance_length: float = 0.0
    abundance_sharpness: float = 4.0

    def __post_init__(self) -> None:
        checks = [
            ("height", self.height >= 1, "must be >= 1 pixel"),
            ("width", self.width >= 1, "must be >= 1 pixel"),
            ("seed", self.seed >= 0, "must be >= 0"),
            ("dtype", self.dtype in _DTYPES, f"must be one of {sorted(_DTYPES)}"),
            ("snr", self.snr > 0, "must be > 0 (inf for no noise)"),
            ("field_size", self.field_size >= 2, "must be >= 2 pixels"),
            ("mix_width", self.mix_width >= 0, "must be >= 0"),
            ("line_width", self.line_width >= 1, "must be >= 1 pixel"),
            ("max_gap", 0 <= self.max_gap < self.line_width, "must be in [0, line_width)"),
            ("drop_line_p", 0 <= self.drop_line_p <= 1, "must be a probability in [0, 1]"),
            ("nan_fraction", 0 <= self.nan_fraction <= 1, "must be a fraction in [0, 1]"),
            ("texture_length", math.isfinite(self.texture_length) and self.texture_length >= 0,
             "must be >= 0 pixels (0 for no texture)"),
            ("layout_origin", len(self.layout_origin) == 2 and min(self.layout_origin) >= 0,
             "must be a (row, column) pair of pixels >= 0"),
            ("layout_unlabelled", self.layout_unlabelled in ("nodata", "background"),
             "must be 'nodata' or 'background'"),
            ("abundance_length",
             math.isfinite(self.abundance_length) and self.abundance_length >= 0,
             "must be >= 0 pixels (0 for fields)"),
            ("abundance_sharpness",
             math.isfinite(self.abundance_sharpness) and self.abundance_sharpness > 0,
             "must be a finite number > 0"),
        ]
        for name, ok, msg in checks:
            if not ok:
                raise ValueError(f"synthetic {name}: {msg}, got {getattr(self, name)!r}")
        if self.nan_fraction > 0 and self.dtype != "float32":
            raise ValueError(f"synthetic nan_fraction: NaN needs dtype float32, got {self.dtype}")
        if self.abundance_length > 0 and self.layout is not None:
            raise ValueError(f"synthetic abundance_length: smooth abundances replace the fields, "
                             f"so not with a layout ({self.layout})")

    @property
    def itemsize(self) -> int:
        return int(np.dtype(_DTYPES[self.dtype]).itemsize)

    def params(self) -> dict:
        """JSON-serialisable parameters (stored in the dataset attrs)."""
        doc = asdict(self)
        doc["snr"] = "inf" if math.isinf(self.snr) else self.snr
        doc["layout_origin"] = list(self.layout_origin)
        return doc


def shape_for_size(
    size_gb: float,
    n_bands: int,
    itemsize: int,
    height: int | None = None,
    width: int | None = None,
) -> tuple[int, int]:
    """Mosaic (height, width) whose reflectance takes about ``size_gb`` decimal GB.

    The pixel count is ``round(size_gb * 1e9 / (n_bands * itemsize))``; with one side given the
    other is ``ceil(pixels / side)``, with neither the mosaic is square (side = ceil(sqrt)).

    Raises:
        ValueError: Non-positive size or sides, both sides given, or a size below one row.
    """
    if not size_gb > 0 or not math.isfinite(size_gb):
        raise ValueError(f"size_gb: must be a positive number of GB, got {size_gb!r}")
    if height is not None and width is not None:
        raise ValueError("size_gb: give at most one of height/width with a size (or both sides "
                         "and no size)")
    for name, side in (("height", height), ("width", width)):
        if side is not None and side < 1:
            raise ValueError(f"{name}: must be >= 1 pixel, got {side}")
    pixels = round(size_gb * GB / (n_bands * itemsize))
    side = height or width
    if pixels < (side or 1):
        raise ValueError(
            f"size_gb: {size_gb} GB is less than one {'row' if side else 'pixel'} of "
            f"{n_bands} bands x {itemsize} bytes{f' x {side} pixels' if side else ''}"
        )
    if height is not None:
        return height, math.ceil(pixels / height)
    if width is not None:
        return math.ceil(pixels / width), width
    edge = math.ceil(math.sqrt(pixels))
    return edge, edge


def _rng(*words: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(w) for w in words]))


def layout_classes(n_layout: int, n_source: int, seed: int) -> np.ndarray:
    """(n_layout,) library class (1..n_source) of each layout class, in the layout's id order.

    A seeded draw: distinct classes when ``n_layout <= n_source``; otherwise every library
    class once (in a random order) and the remaining layout classes uniformly at random.
    """
    rng = _rng(seed, _LAYOUT)
    classes = np.arange(1, n_source + 1)
    if n_layout <= n_source:
        return rng.choice(classes, n_layout, replace=False)
    extra = rng.integers(1, n_source + 1, n_layout - n_source)
    return np.concatenate([rng.permutation(classes), extra])


@functools.lru_cache(maxsize=4)
def layout_map(path: str, var: str | None = None) -> np.ndarray:
    """(H, W) int64 class ids of a layout's class map (0 = unlabelled), read once per process
    (:func:`sscc_core.io.ground_truth.read_class_map`; the caller must not modify it)."""
    return ground_truth.read_class_map(path, var).labels


def _crop_where(spec: SynthSpec) -> str:
    """``"rows R0:R1, columns C0:C1"`` of a layout's crop, for messages."""
    r0, c0 = spec.layout_origin
    return f"rows {r0}:{r0 + spec.height}, columns {c0}:{c0 + spec.width}"


@functools.lru_cache(maxsize=4)
def layout_fields(spec: SynthSpec, n_classes: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, int]]:
    """The whole mosaic's field map from ``spec.layout`` (module docstring), computed once per
    process and spec.

    Returns:
        ``(near, far, frac, classes)``: (H, W) int16 library class of each pixel (0 where the
        map is unlabelled), int16 class of the nearest pixel of another class within
        ``mix_width`` (0 elsewhere), float32 abundance of ``near`` (1 for pure pixels, in
        [0.5, 1) within ``mix_width`` of an edge), and ``{layout class id: library class}``.

    Raises:
        ValueError: The crop leaves the class map or labels fewer than two classes (a
            clustering bench needs two; and the errors of :func:`layout_map`).
    """
    if spec.layout is None:
        raise ValueError("layout_fields: the spec has no layout")
    labels = layout_map(spec.layout, spec.layout_var)
    (r0, c0), (rows, cols) = spec.layout_origin, labels.shape
    where = _crop_where(spec)
    if r0 + spec.height > rows or c0 + spec.width > cols:
        raise ValueError(f"synthetic layout: {where} leave the {rows} x {cols} class map "
                         f"{spec.layout}")
    crop = labels[r0:r0 + spec.height, c0:c0 + spec.width]
    ids = np.unique(crop[crop > 0])
    if ids.size < 2:
        raise ValueError(f"synthetic layout: {where} of {spec.layout} label {int((crop > 0).sum())} "
                         f"pixels in {ids.size} class(es); a clustering bench needs at least 2 classes")
    target = layout_classes(len(ids), n_classes, spec.seed)
    lut = np.zeros(int(ids.max()) + 1, dtype=np.int16)
    lut[ids] = target
    near = lut[crop]
    far = np.zeros_like(near)
    frac = np.ones(near.shape, dtype=np.float32)
    if spec.mix_width > 0:
        edge = np.full(near.shape, np.inf)
        for c in np.unique(target):
            dist = scipy.ndimage.distance_transform_edt(near != c) - 0.5
            closer = (near > 0) & (near != c) & (dist < edge)
            edge[closer], far[closer] = dist[closer], c
        mixed = (near > 0) & (edge < spec.mix_width)
        far[~mixed] = 0
        frac[mixed] = 0.5 + 0.5 * edge[mixed] / spec.mix_width
    return near, far, frac, {int(i): int(t) for i, t in zip(ids, target)}


def layout_summary(spec: SynthSpec, n_classes: int) -> str:
    """One line on a layout crop: where it is, how many of its pixels are labelled, in how many
    of the library's classes (the scene's classes: layout classes beyond the library's count share
    them), the largest class's share, and what the unlabelled ones hold (a crop that labels
    little, or almost only one class, is visible before anything is written). Raises as
    :func:`layout_fields`."""
    near = layout_fields(spec, n_classes)[0]
    counts = np.bincount(near[near > 0])
    labelled = int(counts.sum())
    return (f"layout {_crop_where(spec)} of {spec.layout}: "
            f"{labelled} labelled pixels ({100 * labelled / near.size:.0f}%) in {int((counts > 0).sum())} classes, "
            f"the largest {100 * counts.max() / labelled:.1f}% of them; "
            f"unlabelled pixels are {spec.layout_unlabelled}")


def _layout_window(spec: SynthSpec, n_classes: int, y0: int, y1: int, x0: int, x1: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`layout_fields` of rows ``y0:y1``, columns ``x0:x1``; positions beyond the mosaic
    (a block's overhang) are unlabelled."""
    out = []
    for part, fill in zip(layout_fields(spec, n_classes)[:3], (0, 0, 1)):
        window = np.full((y1 - y0, x1 - x0), fill, dtype=part.dtype)
        h, w = max(0, min(y1, spec.height) - y0), max(0, min(x1, spec.width) - x0)
        window[:h, :w] = part[y0:y0 + h, x0:x0 + w]
        out.append(window)
    return out[0], out[1], out[2]


def field_layout(
    spec: SynthSpec, n_classes: int, y0: int, y1: int, x0: int, x1: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Field classes and edge abundances of rows ``y0:y1``, columns ``x0:x1`` (``y0, x0 >= 0``).

    Returns:
        ``(near, far, frac)``: (h, w) int16 class of the nearest seed point (with a ``layout``:
        of the class map, 0 where it is unlabelled), int16 class of the nearest point of
        another field (0 where the pixel is pure), float32 abundance of ``near`` (1 for pure
        pixels, in [0.5, 1) within ``mix_width`` of an edge). With ``abundance_length`` > 0:
        :func:`dominant` of :func:`abundances`.
    """
    if spec.layout is not None:
        return _layout_window(spec, n_classes, y0, y1, x0, x1)
    if spec.abundance_length > 0:
        return dominant(abundances(spec, n_classes, y0, y1, x0, x1))
    s = spec.field_size
    ci0, ci1 = y0 // s - 2, (y1 - 1) // s + 3
    cj0, cj1 = x0 // s - 2, (x1 - 1) // s + 3
    table = np.empty((ci1 - ci0, cj1 - cj0, 3))  # point y, point x, class
    for i in range(ci0, ci1):
        for j in range(cj0, cj1):
            u = _rng(spec.seed, _CELL, i + 2, j + 2).random(3)  # cells start at -2
            table[i - ci0, j - cj0] = ((i + u[0]) * s, (j + u[1]) * s, 1 + int(u[2] * n_classes))
    py = np.arange(y0, y1, dtype=np.float64)[:, None] + 0.5
    px = np.arange(x0, x1, dtype=np.float64)[None, :] + 0.5
    ci = (np.arange(y0, y1) // s - ci0)[:, None]
    cj = (np.arange(x0, x1) // s - cj0)[None, :]
    shape = (y1 - y0, x1 - x0)
    cand = np.stack([table[ci + di, cj + dj]
                     for di in range(-2, 3) for dj in range(-2, 3)])  # (25, h, w, 3)
    d2 = (cand[..., 0] - py) ** 2 + (cand[..., 1] - px) ** 2
    nearest = d2.argmin(axis=0)
    a = np.take_along_axis(cand, nearest[None, ..., None], axis=0)[0]
    near = a[..., 2].astype(np.int16)
    far = np.zeros(shape, dtype=np.int16)
    frac = np.ones(shape, dtype=np.float32)
    if spec.mix_width <= 0:
        return near, far, frac
    # Distance to the bisector with every point of another class; keep the closest edge.
    other = cand[..., 2] != near
    gap = np.hypot(cand[..., 0] - a[..., 0], cand[..., 1] - a[..., 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        edge = np.where(other, (d2 - d2.min(axis=0)) / (2 * gap), np.inf)
    k = edge.argmin(axis=0)
    dist = np.take_along_axis(edge, k[None], axis=0)[0]
    mixed = dist < spec.mix_width
    far[mixed] = np.take_along_axis(cand[..., 2], k[None], axis=0)[0][mixed].astype(np.int16)
    frac[mixed] = 0.5 + 0.5 * dist[mixed] / spec.mix_width
    return near, far, frac


def nodata_mask(spec: SynthSpec, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """(h, w) bool: True on flight-line seams and dropped scan lines of the window."""
    mask = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    L = spec.line_width
    for k in range(x0 // L, (x1 - 1) // L + 1):
        lx0, lx1 = max(x0, k * L), min(x1, (k + 1) * L)
        gap = int(_rng(spec.seed, _GAP, k).integers(0, spec.max_gap + 1))
        seam_end = min(lx1, k * L + gap)
        if seam_end > lx0:
            mask[:, lx0 - x0 : seam_end - x0] = True
        if spec.drop_line_p <= 0:
            continue
        for by in range(y0 // BLOCK, (y1 - 1) // BLOCK + 1):
            rows = by * BLOCK + np.flatnonzero(
                _rng(spec.seed, _DROP, k, by).random(BLOCK) < spec.drop_line_p)
            rows = rows[(rows >= y0) & (rows < y1)]
            mask[rows[:, None] - y0, np.arange(lx0, lx1)[None, :] - x0] = True
    return mask


def smooth_normal(words: tuple[int, ...], length: float, y0: int, y1: int, x0: int, x1: int
                  ) -> np.ndarray:
    """(h, w) float64 smooth random field of rows ``y0:y1``, columns ``x0:x1``, exactly N(0, 1)
    at every pixel and correlated over about ``length`` pixels; identical whatever the window.

    Independent standard normal values sit on a lattice of spacing ``length`` pixels, each drawn
    from its own generator (``words``, lattice row, lattice column); a pixel interpolates its
    four lattice neighbours with smoothstep weights and is divided by the standard deviation of
    that weighted sum.
    """
    gy = (np.arange(y0, y1) + 0.5) / length
    gx = (np.arange(x0, x1) + 0.5) / length
    iy, ix = np.floor(gy).astype(np.int64), np.floor(gx).astype(np.int64)
    lattice = {(i, j): _rng(*words, i, j).standard_normal()
               for i in range(iy.min(), iy.max() + 2) for j in range(ix.min(), ix.max() + 2)}
    grid = np.array([[lattice[(i, j)] for j in range(ix.min(), ix.max() + 2)]
                     for i in range(iy.min(), iy.max() + 2)])
    ty, tx = gy - iy, gx - ix
    wy1, wx1 = ty * ty * (3 - 2 * ty), tx * tx * (3 - 2 * tx)  # smoothstep
    wy, wx = np.stack([1 - wy1, wy1]), np.stack([1 - wx1, wx1])  # (2, h), (2, w)
    ry, rx = iy - iy.min(), ix - ix.min()
    value = sum(wy[a][:, None] * wx[b][None, :] * grid[ry[:, None] + a, rx[None, :] + b]
                for a in (0, 1) for b in (0, 1))
    std = np.sqrt((wy ** 2).sum(0))[:, None] * np.sqrt((wx ** 2).sum(0))[None, :]
    return value / std


def texture_field(spec: SynthSpec, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """(h, w) float64 smooth random field of rows ``y0:y1``, columns ``x0:x1``, uniform on [0, 1]
    at every pixel; identical whatever the window: the normal CDF of :func:`smooth_normal` with
    ``spec.texture_length``.

    Raises:
        ValueError: ``spec.texture_length`` is not positive.
    """
    L = spec.texture_length
    if not L > 0:
        raise ValueError(f"texture_field: needs texture_length > 0, got {L}")
    return scipy.special.ndtr(smooth_normal((spec.seed, _TEXTURE), L, y0, y1, x0, x1))


def abundances(spec: SynthSpec, n_classes: int, y0: int, y1: int, x0: int, x1: int
               ) -> np.ndarray:
    """(C, h, w) float64 abundances of the C classes at rows ``y0:y1``, columns ``x0:x1``:
    ``softmax(abundance_sharpness * g)`` over the classes of independent
    :func:`smooth_normal` fields ``g_c`` (one stream per class) with ``abundance_length``; each
    pixel's abundances are positive and sum to 1. Identical whatever the window.

    Raises:
        ValueError: ``spec.abundance_length`` is not positive.
    """
    L = spec.abundance_length
    if not L > 0:
        raise ValueError(f"abundances: needs abundance_length > 0, got {L}")
    g = np.stack([smooth_normal((spec.seed, _ABUNDANCE, c), L, y0, y1, x0, x1)
                  for c in range(1, n_classes + 1)])
    return scipy.special.softmax(spec.abundance_sharpness * g, axis=0)


def dominant(abund: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ground truth of (C, h, w) abundances (C >= 2): (h, w) int16 most abundant class
    (1..C), int16 second most abundant class, float32 abundance of the first."""
    top2 = np.argsort(-abund, axis=0, kind="stable")[:2]
    frac = np.take_along_axis(abund, top2[:1], axis=0)[0]
    return (top2[0] + 1).astype(np.int16), (top2[1] + 1).astype(np.int16), frac.astype(np.float32)


def _add_noise(values: np.ndarray, spec: SynthSpec, library: ClassLibrary,
               rng: np.random.Generator) -> None:
    """Add the spec's Gaussian noise (module docstring) to (..., B) float32 ``values`` in place."""
    if not math.isinf(spec.snr):
        sigma = float(np.sqrt((library.means ** 2).mean())) / spec.snr
        values += sigma * rng.standard_normal(values.shape, dtype=np.float32)


def _block_texture(spec: SynthSpec, by: int, bx: int) -> np.ndarray:
    """(BLOCK, BLOCK) :func:`texture_field` of block (by, bx), kept below 1 to index a pool."""
    y0, x0 = by * BLOCK, bx * BLOCK
    return np.minimum(texture_field(spec, y0, y0 + BLOCK, x0, x0 + BLOCK), 1 - 1e-12)


def _draw_pool(library: ClassLibrary, classes: np.ndarray | int, u: np.ndarray,
               textured: bool) -> np.ndarray:
    """(..., B) real pixels of the 0-based ``classes`` at quantiles ``u`` in [0, 1) of their
    pools (the pools sorted by their first principal component when ``textured``)."""
    pool_index = library.order if textured else np.arange(len(library.pixels))
    off, counts = library.offsets[:-1], np.diff(library.offsets)
    return library.pixels[pool_index[off[classes] + (u * counts[classes]).astype(np.int64)]]


def _pixel_block(
    spec: SynthSpec, library: ClassLibrary, by: int, bx: int
) -> tuple[np.ndarray, ...]:
    """The full ``BLOCK`` x ``BLOCK`` block (by, bx) of the global grid, from its own generator.

    Returns:
        ``(values, nan, near, far, frac)``: (BLOCK, BLOCK, B) float32 spectra (before rounding
        and nodata), (BLOCK, BLOCK) bool NaN pixels and the block's :func:`field_layout`.
    """
    if spec.abundance_length > 0:
        return _mixture_block(spec, library, by, bx)
    y0, x0 = by * BLOCK, bx * BLOCK
    near, far, frac = field_layout(spec, library.n_classes, y0, y0 + BLOCK, x0, x0 + BLOCK)
    rng = _rng(spec.seed, _PIXELS, by, bx)
    u_near, u_far, u_nan = rng.random((3, BLOCK, BLOCK))
    textured = spec.texture_length > 0
    if textured:  # both classes of a mixed pixel at the same quantile
        u_near = u_far = _block_texture(spec, by, bx)
    # An unlabelled layout pixel draws from class 1 here ...
    values = _draw_pool(library, np.maximum(near, 1) - 1, u_near, textured)
    if spec.layout_unlabelled == "background" and (near == 0).any():  # ... or from the background
        back = near == 0
        values[back] = library.background[(u_near[back] * len(library.background)).astype(np.int64)]
    mixed = far > 0
    if mixed.any():
        fm = frac[mixed][:, None]
        values[mixed] = (fm * values[mixed]
                         + (1 - fm) * _draw_pool(library, far[mixed] - 1, u_far[mixed], textured))
    _add_noise(values, spec, library, rng)
    return values, u_nan < spec.nan_fraction, near, far, frac


def _mixture_block(
    spec: SynthSpec, library: ClassLibrary, by: int, bx: int
) -> tuple[np.ndarray, ...]:
    """:func:`_pixel_block` of a scene of smooth abundances (``abundance_length`` > 0): each
    pixel ``sum_c a_c * p_c`` with one real pixel ``p_c`` of every class (module docstring)."""
    y0, x0 = by * BLOCK, bx * BLOCK
    n = library.n_classes
    abund = abundances(spec, n, y0, y0 + BLOCK, x0, x0 + BLOCK)
    rng = _rng(spec.seed, _PIXELS, by, bx)
    u = rng.random((n + 1, BLOCK, BLOCK))
    textured = spec.texture_length > 0
    if textured:  # every class at the same quantile, as a mixed edge pixel
        u[:n] = _block_texture(spec, by, bx)
    values = np.zeros((BLOCK, BLOCK, library.n_bands), dtype=np.float32)
    for c in range(n):
        values += abund[c].astype(np.float32)[..., None] * _draw_pool(library, c, u[c], textured)
    _add_noise(values, spec, library, rng)
    return (values, u[n] < spec.nan_fraction, *dominant(abund))


def synthetic_window(
    spec: SynthSpec, library: ClassLibrary, y0: int, y1: int, x0: int, x1: int
) -> xr.Dataset:
    """Rows ``y0:y1`` and columns ``x0:x1`` of the mosaic; identical whatever the windowing.

    The window is cut from the whole ``BLOCK`` x ``BLOCK`` blocks it touches, so peak memory is
    a few times the window's float32 spectra whatever the mosaic size.

    Returns:
        Dataset with ``reflectance`` (B, h, w) in ``spec.dtype``, ``valid`` (h, w) bool,
        ``labels`` (h, w) int16, ``abundance`` (h, w) float32 and ``mix_class`` (h, w) int16,
        with ``y``/``x`` pixel-index coordinates.

    Raises:
        ValueError: The window is empty or leaves the ``spec.height`` x ``spec.width`` grid, or
            ``library`` is not the scene ``spec.source``.
    """
    if library.name != spec.source:
        raise ValueError(
            f"synthetic source: spec wants {spec.source!r}, library is {library.name!r}")
    check_background(spec, library)
    if not (0 <= y0 < y1 <= spec.height and 0 <= x0 < x1 <= spec.width):
        raise ValueError(f"window rows {y0}:{y1}, cols {x0}:{x1} is empty or outside the "
                         f"{spec.height} x {spec.width} mosaic")
    h, w = y1 - y0, x1 - x0
    values = np.empty((h, w, library.n_bands), dtype=np.float32)
    nan = np.empty((h, w), dtype=bool)
    near = np.empty((h, w), dtype=np.int16)
    far = np.empty((h, w), dtype=np.int16)
    frac = np.empty((h, w), dtype=np.float32)
    for by in range(y0 // BLOCK, (y1 - 1) // BLOCK + 1):
        for bx in range(x0 // BLOCK, (x1 - 1) // BLOCK + 1):
            parts = _pixel_block(spec, library, by, bx)
            ya, yb = max(y0, by * BLOCK), min(y1, (by + 1) * BLOCK)
            xa, xb = max(x0, bx * BLOCK), min(x1, (bx + 1) * BLOCK)
            src = (slice(ya - by * BLOCK, yb - by * BLOCK), slice(xa - bx * BLOCK, xb - bx * BLOCK))
            dst = (slice(ya - y0, yb - y0), slice(xa - x0, xb - x0))
            for out, part in zip((values, nan, near, far, frac), parts):
                out[dst] = part[src]
    nodata = nodata_mask(spec, y0, y1, x0, x1)
    if spec.layout_unlabelled == "nodata":
        nodata |= near == 0  # near is 0 only off a layout's labels
    if spec.dtype == "int16":
        np.clip(np.rint(values, out=values), NODATA + 1, np.iinfo(np.int16).max, out=values)
    values[nodata] = NODATA
    values[nan & ~nodata] = np.nan
    valid = ~(nodata | nan)
    refl = np.ascontiguousarray(values.astype(_DTYPES[spec.dtype]).transpose(2, 0, 1))
    variables = {
        "reflectance": (("band", "y", "x"), refl),
        "valid": (("y", "x"), valid),
        "labels": (("y", "x"), np.where(valid, near, 0).astype(np.int16)),
        "abundance": (("y", "x"), np.where(valid & (near > 0), frac, 0).astype(np.float32)),
        "mix_class": (("y", "x"), np.where(valid, far, 0).astype(np.int16)),
    }
    return xr.Dataset(variables, coords={"y": np.arange(y0, y1), "x": np.arange(x0, x1)})


def synthetic_template(spec: SynthSpec, library: ClassLibrary) -> xr.Dataset:
    """Lazy (dask, never computed) canonical cube of the mosaic, for :func:`store.create_store`.

    Besides the canonical variables it has ``abundance`` and ``mix_class`` (module docstring);
    attrs ``synthetic`` holds :meth:`SynthSpec.params` and, with a ``layout``, ``layout_classes``
    the library class of each of its class ids (:func:`layout_fields`).

    Raises:
        ValueError: See :func:`check_dtype`, :func:`check_background` and :func:`layout_fields`.
    """
    check_dtype(spec, library)
    check_background(spec, library)
    b, h, w = library.n_bands, spec.height, spec.width
    coords: dict = {"band": np.arange(b), "y": np.arange(h), "x": np.arange(w)}
    if library.wavelength is not None:
        coords["wavelength"] = ("band", library.wavelength, {"units": "nm"})
    grid = (min(h, 1024), min(w, 1024))
    refl_attrs = {"reflectance_scale": library.scale, "nodata": NODATA}
    variables = {
        "reflectance": (("band", "y", "x"),
                        da.zeros((b, h, w), dtype=_DTYPES[spec.dtype], chunks=(b, *grid)),
                        refl_attrs),
        "valid": (("y", "x"), da.zeros((h, w), dtype=bool, chunks=grid)),
        "labels": (("y", "x"), da.zeros((h, w), dtype=np.int16, chunks=grid),
                   {"source_class_ids": list(library.source_class_ids)}),
        "abundance": (("y", "x"), da.zeros((h, w), dtype=np.float32, chunks=grid),
                      {"long_name": "abundance of the labelled class"}),
        "mix_class": (("y", "x"), da.zeros((h, w), dtype=np.int16, chunks=grid),
                      {"long_name": "other class of a mixed pixel (0: pure)"}),
    }
    attrs: dict = {}
    name = f"synthetic-{spec.source}-seed{spec.seed}"
    if spec.abundance_length > 0:
        name = (f"synthetic-{spec.source}-abundance{spec.abundance_length:g}"
                f"x{spec.abundance_sharpness:g}-seed{spec.seed}")
    if spec.layout is not None:
        classes = layout_fields(spec, library.n_classes)[3]
        attrs["layout_classes"] = {str(k): v for k, v in classes.items()}
        r0, c0 = spec.layout_origin
        fill = "-bg" if spec.layout_unlabelled == "background" else ""
        name = f"synthetic-{spec.source}-{Path(spec.layout).stem}-r{r0}c{c0}{fill}-seed{spec.seed}"
    return xr.Dataset(variables, coords=coords, attrs={
        "name": name,
        "source": list(library.source),
        "sscc_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "synthetic": spec.params(),
        **attrs,
    })


def windows(spec: SynthSpec, step: int) -> list[tuple[int, int, int, int]]:
    """``(y0, y1, x0, x1)`` windows of side ``step`` tiling the mosaic (edges clipped)."""
    return [(y0, min(y0 + step, spec.height), x0, min(x0 + step, spec.width))
            for y0 in range(0, spec.height, step) for x0 in range(0, spec.width, step)]


def fill_windows(
    spec: SynthSpec, library: ClassLibrary, path: str | Path,
    todo: list[tuple[int, int, int, int]],
) -> int:
    """Generate and write windows into an existing store (created from the template).

    Each window must be chunk- (shard-) aligned or reach the mosaic edge. Returns the number of
    reflectance bytes written.
    """
    written = 0
    for y0, y1, x0, x1 in todo:
        window = synthetic_window(spec, library, y0, y1, x0, x1)
        store.write_region(window, Path(path), y0, x0)
        written += window["reflectance"].nbytes
    return written


def write_synthetic(
    spec: SynthSpec,
    path: str | Path,
    library: ClassLibrary | None = None,
    chunk: int = 256,
    shard: int | None = None,
    overwrite: bool = False,
    order: list[int] | None = None,
) -> Path:
    """Write the mosaic window by window in this process, atomically.

    Args:
        spec: The mosaic.
        path: Target store.
        library: Class library (default: loaded from ``spec.source``).
        chunk: Chunk side, pixels.
        shard: Optional shard side (a multiple of ``chunk``); windows are shards then.
        overwrite: Replace an existing store.
        order: Permutation of the window indices to write them in (default: row-major).

    Returns:
        The store path.
    """
    library = library or class_library(spec.source)
    todo = windows(spec, shard or chunk)
    if order is not None:
        if sorted(order) != list(range(len(todo))):
            raise ValueError(f"order: expected a permutation of 0..{len(todo) - 1}")
        todo = [todo[i] for i in order]
    with store.atomic_store(path, overwrite) as tmp:
        store.create_store(synthetic_template(spec, library), tmp, chunk, shard)
        fill_windows(spec, library, tmp, todo)
    return Path(path)
