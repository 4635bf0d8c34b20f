"""Label-map export for users: Cloud-Optimized GeoTIFF, PNG quicklook, cluster spectra, metrics.

A label map is an :class:`xarray.DataArray` ``(y, x)`` of ``uint8``/``uint16`` on the grid of the
input cube (same ``y``/``x`` coords and, when georeferenced, the same rioxarray ``spatial_ref``),
with clusters ``0..K-1`` and an attr ``nodata`` (e.g. 255 for ``uint8``, 65535 for ``uint16``)
where no label was produced. Every writer here streams the map and the cube in tiles, so a mosaic
never has to be loaded whole (the COG writer holds one ``uint8``/``uint16`` copy of the map, which
is 1-2 bytes per pixel against hundreds per pixel for the cube).
"""

from __future__ import annotations

import csv
import json
import math
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rioxarray  # noqa: F401  (registers the ``.rio`` accessor used for CRS/transform)
import xarray as xr

import sscc_core
from sscc_core import storage
from sscc_core.config import config_hash
from sscc_core.model.preprocess import merge_moments
from sscc_core.io.tiling import tile_grid

Colormap = dict[int, tuple[int, int, int, int]]
"""Label value -> (red, green, blue, alpha), each 0..255."""

NODATA_RGBA = (0, 0, 0, 0)
_LABEL_DTYPES = (np.dtype("uint8"), np.dtype("uint16"))
_TAG_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_MAX_COLOURS = 4096


# --------------------------------------------------------------------------------------------
# colours and provenance
# --------------------------------------------------------------------------------------------


def _srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of sRGB colours ``(N, 3)`` in 0..1; returns ``(N, 3)`` (L in 0..100)."""
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], 1)


@lru_cache(maxsize=8)
def _palette(k: int) -> tuple[tuple[int, int, int], ...]:
    """``k`` distinct RGB colours: matplotlib ``tab10`` first, then greedy farthest-point picks
    (glasbey-style) in CIELAB from a 24-level sRGB grid, skipping near-black and near-white."""
    from matplotlib import colormaps

    seeds = np.round(np.array(colormaps["tab10"].colors) * 255).astype(np.int64)
    levels = np.round(np.linspace(0, 255, 24)).astype(np.int64)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    grid_lab = _srgb_to_lab(grid / 255.0)
    keep = (grid_lab[:, 0] > 20) & (grid_lab[:, 0] < 92)
    grid, grid_lab = grid[keep], grid_lab[keep]
    chosen = [tuple(int(v) for v in c) for c in seeds[:k]]
    dist = np.full(len(grid), np.inf)
    for lab in _srgb_to_lab(seeds[:k] / 255.0):
        dist = np.minimum(dist, ((grid_lab - lab) ** 2).sum(1))
    while len(chosen) < k:
        i = int(np.argmax(dist))
        chosen.append(tuple(int(v) for v in grid[i]))
        dist = np.minimum(dist, ((grid_lab - grid_lab[i]) ** 2).sum(1))
    return tuple(chosen)


def label_colormap(k: int, nodata: int | None = None) -> Colormap:
    """A distinct, deterministic colour table for clusters ``0..k-1``.

    The first ten colours are matplotlib's ``tab10``; further ones are picked greedily to be as
    far as possible (CIELAB distance) from every colour already chosen, so neighbouring cluster
    ids never get look-alike colours. The same ``k`` always gives the same table.

    Args:
        k: Number of clusters, 1..4096.
        nodata: Label value for "no label"; when given it maps to transparent black.

    Returns:
        ``{label: (r, g, b, a)}`` with opaque colours for ``0..k-1``.

    Raises:
        ValueError: ``k`` out of range, or ``nodata`` inside ``0..k-1``.
    """
    if not 1 <= k <= _MAX_COLOURS:
        raise ValueError(f"label_colormap: k must be in 1..{_MAX_COLOURS}, got {k}")
    if nodata is not None and 0 <= nodata < k:
        raise ValueError(f"label_colormap: nodata {nodata} collides with cluster ids 0..{k - 1}")
    cmap: Colormap = {i: (*rgb, 255) for i, rgb in enumerate(_palette(k))}
    if nodata is not None:
        cmap[int(nodata)] = NODATA_RGBA
    return cmap


def build_provenance(
    *, model_version: str, inputs: list[str] | str, cfg: Any | None = None, **extra: Any
) -> dict[str, str]:
    """Provenance record for every exported product.

    Args:
        model_version: Identifier of the model that produced the labels (e.g. checkpoint id).
        inputs: Input store(s) or file(s) the labels were computed from.
        cfg: The run's :class:`~sscc_core.config.SSCCConfig` (hashed with :func:`config_hash`).
        **extra: Further string-able fields (e.g. ``tiles_done``), stored as given.

    Returns:
        ``{"sscc_version", "model_version", "config_hash", "inputs", "created", ...}`` with string
        values (``inputs`` JSON-encoded; ``created`` UTC ISO-8601).
    """
    prov = {
        "sscc_version": sscc_core.__version__,
        "model_version": str(model_version),
        "config_hash": config_hash(cfg) if cfg is not None else "",
        "inputs": json.dumps([inputs] if isinstance(inputs, str) else list(inputs)),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    prov.update({k: _tag_value(v) for k, v in extra.items()})
    return prov


def _tag_value(value: Any) -> str:
    """A provenance value as a string (JSON for anything that is not already a string)."""
    return value if isinstance(value, str) else json.dumps(value, default=_json_default)


def _json_default(obj: Any) -> Any:
    """JSON encoder hook for numpy scalars/arrays and paths."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__} {obj!r}")


# --------------------------------------------------------------------------------------------
# label map checks and tiling
# --------------------------------------------------------------------------------------------


def _label_nodata(labels: xr.DataArray) -> int:
    """Validate a label map and return its nodata value."""
    if not isinstance(labels, xr.DataArray):
        raise TypeError(f"labels: expected an xarray.DataArray, got {type(labels).__name__}")
    if labels.dims != ("y", "x"):
        raise ValueError(f"labels: expected dims ('y', 'x'), got {labels.dims}")
    if labels.dtype not in _LABEL_DTYPES:
        raise ValueError(f"labels: dtype must be uint8 or uint16, got {labels.dtype}")
    if "nodata" not in labels.attrs:
        raise ValueError("labels: missing attr 'nodata' (e.g. 255 for uint8, 65535 for uint16)")
    nodata = int(labels.attrs["nodata"])
    if not 0 <= nodata <= np.iinfo(labels.dtype).max:
        raise ValueError(f"labels: nodata {nodata} does not fit dtype {labels.dtype}")
    return nodata


def _read(arr: Any, *index: slice) -> np.ndarray:
    """Materialise ``arr[index]`` for numpy, dask, zarr or xarray arrays."""
    part = arr[index]
    return np.asarray(part.values if isinstance(part, xr.DataArray) else part)


# --------------------------------------------------------------------------------------------
# Cloud-Optimized GeoTIFF
# --------------------------------------------------------------------------------------------


def write_cog(
    labels: xr.DataArray,
    path: str | Path,
    colormap: Mapping[int, tuple[int, int, int, int]],
    provenance: Mapping[str, Any],
    *,
    blocksize: int = 256,
) -> Path:
    """Write a label map as a Cloud-Optimized GeoTIFF with an embedded colour table.

    Written with GDAL's ``COG`` driver through rasterio in a single pass (the map is written
    block-row by block-row, so a dask-backed map is computed once), so the colour table, nodata
    and tags go into the same file the driver lays out: tiled ``blocksize`` blocks, DEFLATE,
    internal overviews (nearest resampling, so overview pixels are real labels) when the map is
    larger than one block. (``rioxarray.to_raster`` cannot set a colour table, and reopening a
    COG in update mode to add one would break its layout.)

    Args:
        labels: ``(y, x)`` uint8/uint16 label map with attr ``nodata``; CRS and transform are
            taken from its rioxarray ``spatial_ref`` when present.
        path: Output ``.tif`` path (parent directories are created).
        colormap: ``{label: (r, g, b, a)}``, e.g. from :func:`label_colormap`.
        provenance: Tags (e.g. from :func:`build_provenance`); non-string values are JSON-encoded.
        blocksize: Tile side in pixels (multiple of 16).

    Returns:
        The written path.

    Raises:
        ValueError: Malformed label map, colour table or provenance keys.
        RuntimeError: This GDAL build lacks the COG driver (GDAL < 3.1).
    """
    nodata = _label_nodata(labels)
    vmax = np.iinfo(labels.dtype).max
    bad = [k for k in colormap if not 0 <= int(k) <= vmax]
    if bad:
        raise ValueError(f"colormap: keys {bad[:5]} outside the range of dtype {labels.dtype}")
    bad_tags = [k for k in provenance if not _TAG_KEY.match(str(k))]
    if bad_tags:
        raise ValueError(f"provenance: invalid tag names {bad_tags} (use letters, digits, _ . -)")
    with rasterio.Env() as env:
        if "COG" not in env.drivers():
            raise RuntimeError(f"GDAL {rasterio.__gdal_version__} has no COG driver (needs >= 3.1)")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = labels.shape
    crs = labels.rio.crs
    profile: dict[str, Any] = dict(
        driver="COG", width=width, height=height, count=1, dtype=labels.dtype.name,
        nodata=nodata, blocksize=blocksize, compress="deflate", overview_resampling="nearest",
    )
    if crs is not None:
        profile.update(crs=crs, transform=labels.rio.transform())
    with warnings.catch_warnings():
        # a map on pixel indices has no geotransform by design; rasterio warns about that
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        dst = rasterio.open(path, "w", **profile)
    with dst:
        for y0 in range(0, height, blocksize):
            rows = slice(y0, min(y0 + blocksize, height))
            window = rasterio.windows.Window(0, y0, width, rows.stop - y0)
            dst.write(_read(labels, rows, slice(None)), 1, window=window)
        dst.write_colormap(1, {int(k): tuple(int(c) for c in v) for k, v in colormap.items()})
        dst.update_tags(**{str(k): _tag_value(v) for k, v in provenance.items()})
        dst.set_band_description(1, "cluster label")
    return path


# --------------------------------------------------------------------------------------------
# PNG quicklook
# --------------------------------------------------------------------------------------------


def _rgba_lut(colormap: Mapping[int, tuple[int, int, int, int]], size: int) -> np.ndarray:
    """``(size, 4)`` uint8 lookup table; labels missing from the colour table are transparent."""
    lut = np.zeros((size, 4), np.uint8)
    for k, rgba in colormap.items():
        if 0 <= int(k) < size:
            lut[int(k)] = rgba
    return lut


def write_quicklook(
    labels: xr.DataArray,
    path: str | Path,
    colormap: Mapping[int, tuple[int, int, int, int]],
    class_names: Mapping[int, str] | None = None,
    title: str | None = None,
    *,
    max_size: int = 2048,
    min_size: int = 256,
    max_legend: int = 40,
) -> Path:
    """PNG quicklook of a label map with a legend; nodata shows as white.

    Rendered on matplotlib's Agg canvas through :class:`~matplotlib.figure.Figure` (no pyplot, no
    global backend switch).

    The map is drawn pixel-exact (no interpolation) at the top-left of the figure, below the
    title if any: each map pixel becomes an ``s x s`` block with ``s = max(1, min_size //
    min(H, W))``, or, for maps larger than ``max_size``, every ``s``-th pixel is kept with
    ``s = ceil(max(H, W) / max_size)``. The legend lists the clusters present in the map (at most
    ``max_legend``; the rest are summarised as "+N more").

    Args:
        labels: ``(y, x)`` uint8/uint16 label map with attr ``nodata``.
        path: Output ``.png`` path (parent directories are created).
        colormap: ``{label: (r, g, b, a)}``, e.g. from :func:`label_colormap`.
        class_names: Optional legend text per label (default ``"cluster <k>"``).
        title: Optional title above the map.
        max_size: Largest side of the drawn map, in pixels.
        min_size: Smallest side a small map is enlarged to (integer factor), in pixels.
        max_legend: Most legend entries drawn.

    Returns:
        The written path.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    nodata = _label_nodata(labels)
    height, width = labels.shape
    if max(height, width) > max_size:
        step = math.ceil(max(height, width) / max_size)
        grid = _read(labels, slice(None, None, step), slice(None, None, step))
    else:
        grid = np.asarray(labels.values)
        rep = max(1, min_size // min(height, width))
        grid = np.repeat(np.repeat(grid, rep, 0), rep, 1)
    lut = _rgba_lut(colormap, int(np.iinfo(labels.dtype).max) + 1)
    lut[nodata] = NODATA_RGBA
    image = lut[grid]

    present = np.flatnonzero(np.bincount(grid.ravel(), minlength=nodata + 1))
    present = [int(k) for k in present if k != nodata]
    names = dict(class_names or {})
    shown, hidden = present[:max_legend], len(present) - min(len(present), max_legend)
    row_h, col_w, pad, title_h = 20, 210, 10, (34 if title else 0)
    map_h, map_w = image.shape[:2]
    rows = max(1, (max(map_h, 200) - 2 * pad) // row_h)
    n_entries = len(shown) + (1 if hidden else 0)
    ncol = max(1, math.ceil(n_entries / rows))
    fig_w = map_w + 2 * pad + ncol * col_w
    fig_h = max(map_h, 200) + title_h

    dpi = 100
    fig = Figure(figsize=(fig_w / dpi, fig_h / dpi), dpi=dpi, facecolor="white")
    fig.figimage(image, xo=0, yo=fig_h - title_h - map_h, origin="upper")
    if title:
        fig.text(pad / fig_w, 1 - (title_h / 2) / fig_h, title, va="center", fontsize=13)

    def at(x: float, y: float) -> tuple[float, float]:
        """Figure fraction of pixel (x from left, y from top)."""
        return x / fig_w, 1 - y / fig_h

    entries = [(names.get(k, f"cluster {k}"), colormap.get(k, NODATA_RGBA)) for k in shown]
    if hidden:
        entries.append((f"+{hidden} more", (255, 255, 255, 0)))
    for i, (name, rgba) in enumerate(entries):
        x = map_w + 2 * pad + (i // rows) * col_w
        y = title_h + pad + (i % rows) * row_h
        fig.add_artist(Rectangle(at(x, y + 14), 14 / fig_w, 14 / fig_h, transform=fig.transFigure,
                                 facecolor=np.array(rgba) / 255.0, edgecolor="0.3", lw=0.5))
        fig.text(*at(x + 20, y + 7), name[:26], va="center", fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor="white")
    return path


# --------------------------------------------------------------------------------------------
# per-cluster spectra
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterSpectra:
    """Per-cluster spectral statistics over valid, labelled pixels.

    Attributes:
        count: ``(K,)`` int64 pixel count per cluster.
        mean: ``(K, B)`` float64 mean per band, in physical units (raw * scale); NaN where
            ``count == 0``.
        std: ``(K, B)`` float64 population standard deviation (ddof 0), same units; NaN where
            ``count == 0``.
    """

    count: np.ndarray
    mean: np.ndarray
    std: np.ndarray


def cluster_mean_spectra(
    reflectance: Any,
    labels: Any,
    valid: Any | None,
    k: int,
    scale: float = 1.0,
    *,
    nodata: int | None = None,
    tile_size: int = 256,
    windows: Iterable[tuple[slice, slice]] | None = None,
) -> ClusterSpectra:
    """Per-cluster count, mean and std spectrum, streamed tile by tile.

    Each ``tile_size x tile_size`` window is read on its own (so numpy, dask, zarr and lazy
    xarray inputs never load whole); per tile one ``np.bincount`` over ``(band, cluster)`` gives
    sums, and tiles are merged with Chan et al.'s pairwise update of mean and squared deviations,
    which keeps the std exact in float64 even for large raw values.

    Args:
        reflectance: ``(B, H, W)`` array-like (numpy, dask, zarr, xarray) of raw values.
        labels: ``(H, W)`` integer labels ``0..k-1``; a DataArray's ``nodata`` attr is used when
            ``nodata`` is not given.
        valid: ``(H, W)`` bool mask of usable pixels, or ``None`` for all.
        k: Number of clusters.
        scale: Physical value = raw * scale (the cube's ``reflectance_scale``).
        nodata: Label value to ignore.
        tile_size: Window side in pixels (align with the store's chunks for best I/O).
        windows: ``(rows, cols)`` slices to read instead of every ``tile_size`` window (e.g. a
            sample of windows of a mosaic too large to read whole); the statistics are then
            those of the pixels in these windows.

    Returns:
        :class:`ClusterSpectra`.

    Raises:
        ValueError: Shape mismatch, or a label outside ``0..k-1`` other than ``nodata``.
    """
    if k < 1:
        raise ValueError(f"cluster_mean_spectra: k must be >= 1, got {k}")
    if nodata is None and isinstance(labels, xr.DataArray) and "nodata" in labels.attrs:
        nodata = int(labels.attrs["nodata"])
    if len(reflectance.shape) != 3 or tuple(reflectance.shape[1:]) != tuple(labels.shape):
        raise ValueError(
            f"cluster_mean_spectra: reflectance shape {tuple(reflectance.shape)} is not "
            f"(B, H, W) with (H, W) = labels shape {tuple(labels.shape)}"
        )
    if valid is not None and tuple(valid.shape) != tuple(labels.shape):
        raise ValueError(f"cluster_mean_spectra: valid shape {tuple(valid.shape)} != labels shape "
                         f"{tuple(labels.shape)}")
    n_bands, height, width = (int(s) for s in reflectance.shape)
    count = np.zeros(k, np.int64)
    mean = np.zeros((n_bands, k))
    m2 = np.zeros((n_bands, k))
    offsets = (np.arange(n_bands) * k)[:, None]
    if windows is None:
        windows = [t.slices for t in tile_grid(height, width, tile_size)]
    for rows, cols in windows:
        lab = _read(labels, rows, cols).astype(np.int64).ravel()
        keep = lab != nodata if nodata is not None else np.ones(lab.shape, bool)
        if valid is not None:
            keep &= _read(valid, rows, cols).astype(bool).ravel()
        lab = lab[keep]
        if lab.size == 0:
            continue
        if lab.min() < 0 or lab.max() >= k:
            wrong = lab[(lab < 0) | (lab >= k)][0]
            raise ValueError(f"cluster_mean_spectra: label {wrong} outside 0..{k - 1} "
                             f"(nodata={nodata}) in rows {rows.start}:{rows.stop}, "
                             f"cols {cols.start}:{cols.stop}")
        x = _read(reflectance, slice(None), rows, cols).reshape(n_bands, -1)[:, keep]
        x = x.astype(np.float64)
        idx = (offsets + lab[None, :]).ravel()
        n_t = np.bincount(lab, minlength=k)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_t = np.bincount(idx, x.ravel(), n_bands * k).reshape(n_bands, k) / n_t
        dev = x - mean_t[:, lab]
        m2_t = np.bincount(idx, (dev * dev).ravel(), n_bands * k).reshape(n_bands, k)
        has = n_t > 0
        count[has], mean[:, has], m2[:, has] = merge_moments(
            count[has], mean[:, has], m2[:, has], n_t[has], mean_t[:, has], m2_t[:, has])
    with np.errstate(invalid="ignore", divide="ignore"):
        std = np.sqrt(m2 / count)
    empty = count == 0
    mean[:, empty] = np.nan
    std[:, empty] = np.nan
    return ClusterSpectra(count=count, mean=mean.T * scale, std=std.T * abs(scale))


def _band_names(wavelength: Any | None, n_bands: int) -> list[str]:
    """CSV column names: ``"<nm>nm"`` per band when wavelengths are known, else ``"band_<i>"``."""
    if wavelength is None:
        return [f"band_{i}" for i in range(n_bands)]
    wl = np.asarray(wavelength, np.float64)
    if wl.shape != (n_bands,):
        raise ValueError(f"wavelength: expected {n_bands} values, got shape {wl.shape}")
    return [f"{w:g}nm" for w in wl]


def write_spectra_csv(
    stats: ClusterSpectra, wavelength: Any | None, path: str | Path, statistic: str = "mean"
) -> Path:
    """Write one row per cluster: ``cluster, count, <band columns>``.

    Args:
        stats: Output of :func:`cluster_mean_spectra`.
        wavelength: ``(B,)`` band centres in nm, or ``None`` to name columns by band index.
        path: Output ``.csv`` path.
        statistic: ``"mean"`` or ``"std"``: which statistic fills the band columns.

    Returns:
        The written path. Empty clusters have count 0 and empty band cells.
    """
    if statistic not in ("mean", "std"):
        raise ValueError(f"write_spectra_csv: statistic must be 'mean' or 'std', got {statistic!r}")
    values = getattr(stats, statistic)
    header = ["cluster", "count", *_band_names(wavelength, values.shape[1])]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for c, (n, row) in enumerate(zip(stats.count, values)):
            writer.writerow([c, int(n), *("" if np.isnan(v) else repr(float(v)) for v in row)])
    return path


def plot_spectra(
    stats: ClusterSpectra,
    wavelength: Any | None,
    path: str | Path,
    colormap: Mapping[int, tuple[int, int, int, int]],
    title: str | None = None,
) -> Path:
    """PNG of each non-empty cluster's mean spectrum with a +-1 std band, in its map colour.

    Bands are drawn in wavelength order (band tables with spectrometer overlaps, like AVIRIS
    Indian Pines, are not monotonic in band order).
    """
    from matplotlib.figure import Figure

    n_bands = stats.mean.shape[1]
    x = np.arange(n_bands) if wavelength is None else np.asarray(wavelength, np.float64)
    order = np.argsort(x, kind="stable")
    x = x[order]
    fig = Figure(figsize=(9, 5), dpi=100)
    ax = fig.add_subplot()
    for c in np.flatnonzero(stats.count > 0):
        colour = np.array(colormap.get(int(c), (80, 80, 80, 255))[:3]) / 255.0
        mean, std = stats.mean[c][order], stats.std[c][order]
        ax.plot(x, mean, color=colour, lw=1.2, label=f"{c} (n={stats.count[c]})")
        ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.15, lw=0)
    ax.set_xlabel("band index" if wavelength is None else "wavelength (nm)")
    ax.set_ylabel("reflectance")
    ax.set_title(title or "cluster mean spectra (+-1 std)")
    if stats.count.any():
        ax.legend(fontsize=7, ncol=max(1, math.ceil(int((stats.count > 0).sum()) / 16)))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def cluster_class_counts(
    labels: xr.DataArray, ground_truth: Any, k: int, *, tile_size: int = 1024
) -> np.ndarray:
    """Contingency table of clusters against ground-truth classes, streamed in tiles.

    Args:
        labels: ``(y, x)`` label map (attr ``nodata``).
        ground_truth: ``(y, x)`` int classes ``1..C``, 0 = unlabelled (ignored).
        k: Number of clusters.

    Returns:
        ``(k, C + 1)`` int64 counts; column 0 is always zero (unlabelled pixels are skipped).
    """
    nodata = _label_nodata(labels)
    if tuple(ground_truth.shape) != tuple(labels.shape):
        raise ValueError(f"ground_truth shape {tuple(ground_truth.shape)} != labels shape "
                         f"{tuple(labels.shape)}")
    tables: list[np.ndarray] = []
    for rows, cols in (t.slices for t in tile_grid(*labels.shape, tile_size)):
        lab = _read(labels, rows, cols).astype(np.int64).ravel()
        gt = _read(ground_truth, rows, cols).astype(np.int64).ravel()
        keep = (lab != nodata) & (gt > 0)
        lab, gt = lab[keep], gt[keep]
        if lab.size and lab.max() >= k:
            raise ValueError(f"labels: value {lab.max()} outside 0..{k - 1} (nodata={nodata})")
        n_cls = int(gt.max(initial=0)) + 1
        tables.append(np.bincount(lab * n_cls + gt, minlength=k * n_cls).reshape(k, n_cls))
    width = max((t.shape[1] for t in tables), default=1)
    total = np.zeros((k, width), np.int64)
    for t in tables:
        total[:, : t.shape[1]] += t
    return total


def _write_counts_csv(table: np.ndarray, path: Path) -> Path:
    """CSV of a cluster x class contingency table (classes 1..C as columns)."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["cluster", *(f"class_{c}" for c in range(1, table.shape[1]))])
        for c, row in enumerate(table):
            writer.writerow([c, *(int(v) for v in row[1:])])
    return path


# --------------------------------------------------------------------------------------------
# metrics and the whole bundle
# --------------------------------------------------------------------------------------------


def write_metrics_json(
    metrics: Mapping[str, Any], path: str | Path, provenance: Mapping[str, Any]
) -> Path | str:
    """Write ``{"metrics": ..., "provenance": ...}`` as indented JSON (numpy values converted),
    whole or not at all, at a local path or URL (:func:`sscc_core.storage.write_bytes`);
    returns where (a ``Path`` for a local path)."""
    doc = {"metrics": dict(metrics), "provenance": dict(provenance)}
    text = json.dumps(doc, indent=2, default=_json_default) + "\n"
    written = storage.write_bytes(path, text.encode())
    return written if storage.is_url(written) else Path(written)


def export_all(
    labels: xr.DataArray,
    out_dir: str | Path,
    *,
    provenance: Mapping[str, Any],
    cube: xr.Dataset | None = None,
    ground_truth: Any | None = None,
    metrics: Mapping[str, Any] | None = None,
    k: int | None = None,
    class_names: Mapping[int, str] | None = None,
    title: str | None = None,
) -> dict[str, Path]:
    """Write every user-facing product of a labelling run into ``out_dir``.

    Products: ``labels.tif`` (COG with colour table and provenance tags), ``quicklook.png``;
    with ``cube``: ``spectra.csv`` (per-cluster means), ``spectra_std.csv`` and ``spectra.png``;
    with ``ground_truth``: ``cluster_class_counts.csv``; with ``metrics``: ``metrics.json``.

    Args:
        labels: ``(y, x)`` uint8/uint16 label map with attr ``nodata``.
        out_dir: Output directory (created).
        provenance: Provenance tags (see :func:`build_provenance`).
        cube: Canonical cube Dataset (``reflectance`` (band, y, x), ``valid``, optional
            ``wavelength`` coord, ``reflectance_scale`` attr) on the same grid as ``labels``.
        ground_truth: ``(y, x)`` classes, 0 = unlabelled.
        metrics: Metrics dict (e.g. ACC, NMI, ARI, kappa, purity).
        k: Number of clusters; default ``labels.attrs["n_clusters"]`` or max label + 1.
        class_names: Legend names per cluster for the quicklook.
        title: Quicklook title.

    Returns:
        ``{product name: path}`` with keys ``cog``, ``quicklook`` and, when written,
        ``spectra_csv``, ``spectra_std_csv``, ``spectra_png``, ``class_counts``, ``metrics``.
    """
    nodata = _label_nodata(labels)
    if k is None:
        k = int(labels.attrs.get("n_clusters", 0)) or _max_label(labels, nodata) + 1
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cmap = label_colormap(k, nodata=nodata)
    paths = {
        "cog": write_cog(labels, out / "labels.tif", cmap, provenance),
        "quicklook": write_quicklook(labels, out / "quicklook.png", cmap, class_names, title),
    }
    if cube is not None:
        refl = cube["reflectance"]
        if refl.shape[1:] != labels.shape:
            raise ValueError(f"cube: reflectance grid {refl.shape[1:]} != labels {labels.shape}")
        wavelength = cube["wavelength"].values if "wavelength" in cube.coords else None
        stats = cluster_mean_spectra(
            refl, labels, cube["valid"] if "valid" in cube else None, k,
            float(refl.attrs.get("reflectance_scale", 1.0)), nodata=nodata,
        )
        paths["spectra_csv"] = write_spectra_csv(stats, wavelength, out / "spectra.csv")
        paths["spectra_std_csv"] = write_spectra_csv(stats, wavelength, out / "spectra_std.csv",
                                                     "std")
        paths["spectra_png"] = plot_spectra(stats, wavelength, out / "spectra.png", cmap, title)
    if ground_truth is not None:
        table = cluster_class_counts(labels, ground_truth, k)
        paths["class_counts"] = _write_counts_csv(table, out / "cluster_class_counts.csv")
    if metrics is not None:
        paths["metrics"] = write_metrics_json(metrics, out / "metrics.json", provenance)
    return paths


def _max_label(labels: xr.DataArray, nodata: int) -> int:
    """Largest non-nodata label in the map, streamed in tiles (-1 when all nodata)."""
    best = -1
    for rows, cols in (t.slices for t in tile_grid(*labels.shape, 1024)):
        tile = _read(labels, rows, cols)
        tile = tile[tile != nodata]
        if tile.size:
            best = max(best, int(tile.max()))
    return best
