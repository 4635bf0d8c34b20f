"""Streamed statistics of a label map for the run report: cluster sizes and areas, the change
between two versions of a labelling, and the sample of windows the cluster spectra are read from.

Every pass reads the map window by window (windows aligned to the label store's chunks), so the
memory of a pass is one window plus ``K x K`` counters, whatever the size of the mosaic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr
from scipy.optimize import linear_sum_assignment

from sscc_core.io.tiling import tile_grid

WINDOW = 2048
"""Side of the windows the label passes read (a multiple of every usual chunk side)."""


def _window_side(labels: xr.DataArray) -> int:
    """A window side that is a whole number of the map's chunks and about :data:`WINDOW`."""
    chunk = labels.encoding.get("chunks") or labels.encoding.get("preferred_chunks") or ()
    side = int(chunk[0]) if len(chunk) else WINDOW
    return max(side, WINDOW // side * side)


def _windows(labels: xr.DataArray) -> list[tuple[slice, slice]]:
    """Row-major chunk-aligned ``(rows, cols)`` windows covering the map."""
    return [t.slices for t in tile_grid(*labels.shape, _window_side(labels))]


def _block(labels: xr.DataArray, rows: slice, cols: slice) -> np.ndarray:
    """One window of a map as int64."""
    return np.asarray(labels[rows, cols].values).astype(np.int64)


def cluster_counts(labels: xr.DataArray, k: int, nodata: int) -> np.ndarray:
    """Pixels per cluster ``0..k-1`` (nodata skipped), streamed window by window.

    Raises:
        ValueError: A label outside ``0..k-1`` other than ``nodata``.
    """
    count = np.zeros(k, np.int64)
    for rows, cols in _windows(labels):
        lab = _block(labels, rows, cols)
        lab = lab[lab != nodata]
        if lab.size and lab.max() >= k:
            raise ValueError(f"labels: value {lab.max()} outside 0..{k - 1} (nodata={nodata}) in "
                             f"rows {rows.start}:{rows.stop}, cols {cols.start}:{cols.stop}")
        count += np.bincount(lab, minlength=k)
    return count


@dataclass(frozen=True)
class PixelArea:
    """The ground area of one pixel, when the map is georeferenced in a projected CRS.

    Attributes:
        value: Area of one pixel in ``unit`` squared.
        unit: The CRS's linear unit (e.g. ``"metre"``).
    """

    value: float
    unit: str


def pixel_area(labels: xr.DataArray) -> PixelArea | None:
    """The area of one pixel of a map, or ``None`` when it has no CRS or a geographic one
    (degrees are no unit of area)."""
    crs = labels.rio.crs
    if crs is None or not crs.is_projected:
        return None
    t = labels.rio.transform()
    return PixelArea(value=abs(t.a * t.e - t.b * t.d), unit=str(crs.linear_units or "unit"))


@dataclass(frozen=True)
class Change:
    """How the pixels of one labelling moved to another version's clusters.

    Attributes:
        joint: ``(K, K)`` int64 pixels labelled ``i`` before and ``j`` now (both labelled).
        match: ``(K,)`` the current cluster matched to each previous cluster (Hungarian
            assignment maximising the pixels that keep their matched cluster).
        only_previous: Pixels labelled before and nodata now.
        only_current: Pixels labelled now and nodata before.
    """

    joint: np.ndarray
    match: np.ndarray
    only_previous: int
    only_current: int

    @property
    def kept(self) -> int:
        """Pixels whose current cluster is the one matched to their previous cluster."""
        return int(self.joint[np.arange(len(self.match)), self.match].sum())

    @property
    def moved(self) -> int:
        """Pixels labelled in both versions whose cluster changed beyond the matching."""
        return int(self.joint.sum()) - self.kept

    def flows(self, limit: int) -> list[tuple[int, int, int]]:
        """The largest moves ``(previous cluster, current cluster, pixels)``, off the matching,
        largest first (at most ``limit``)."""
        moved = self.joint.copy()
        moved[np.arange(len(self.match)), self.match] = 0
        order = np.argsort(moved, axis=None, kind="stable")[::-1][:limit]
        cells = [np.unravel_index(i, moved.shape) for i in order]
        return [(int(i), int(j), int(moved[i, j])) for i, j in cells if moved[i, j] > 0]


def change_between(
    previous: xr.DataArray, current: xr.DataArray, k: int, nodata_previous: int, nodata: int
) -> Change:
    """The joint table of two labellings of one grid and their Hungarian matching, streamed.

    Raises:
        ValueError: The maps have different shapes.
    """
    if previous.shape != current.shape:
        raise ValueError(f"previous labels {previous.shape} and labels {current.shape} are on "
                         "different grids")
    joint = np.zeros((k, k), np.int64)
    only_previous = only_current = 0
    for rows, cols in _windows(current):
        before, now = _block(previous, rows, cols), _block(current, rows, cols)
        has_before, has_now = before != nodata_previous, now != nodata
        both = has_before & has_now
        only_previous += int((has_before & ~has_now).sum())
        only_current += int((has_now & ~has_before).sum())
        joint += np.bincount(before[both] * k + now[both], minlength=k * k).reshape(k, k)
    rows_, cols_ = linear_sum_assignment(joint, maximize=True)
    match = np.empty(k, np.int64)
    match[rows_] = cols_
    return Change(joint=joint, match=match, only_previous=only_previous,
                  only_current=only_current)


@dataclass(frozen=True)
class SpectraSample:
    """Which windows of the cube the cluster spectra are computed from.

    Attributes:
        windows: ``(rows, cols)`` slices, row-major.
        n_windows: Windows covering the whole map.
        pixels: Pixels in the chosen windows.
    """

    windows: tuple[tuple[slice, slice], ...]
    n_windows: int
    pixels: int

    @property
    def whole(self) -> bool:
        """Whether every window is read (exact statistics)."""
        return len(self.windows) == self.n_windows


def spectra_sample(reflectance: Any, max_pixels: int, seed: int = 0) -> SpectraSample:
    """All chunk-aligned windows of a cube when it has at most ``max_pixels`` pixels, else a
    seeded random sample of them holding about ``max_pixels`` pixels.

    Args:
        reflectance: ``(B, H, W)`` cube variable (its chunks set the window side).
        max_pixels: Pixel budget of the spectra pass.
        seed: Seed of the sample.
    """
    _, height, width = (int(s) for s in reflectance.shape)
    chunks = getattr(reflectance, "encoding", {}).get("chunks") or (0, 256, 256)
    tiles = tile_grid(height, width, int(chunks[1]))
    windows = [t.slices for t in tiles]
    if height * width > max_pixels:
        per = (tiles[0].y1 - tiles[0].y0) * (tiles[0].x1 - tiles[0].x0)
        n = min(len(windows), max(1, max_pixels // per))
        keep = np.sort(np.random.default_rng(seed).choice(len(windows), n, replace=False))
        windows = [windows[i] for i in keep]
    pixels = sum((r.stop - r.start) * (c.stop - c.start) for r, c in windows)
    return SpectraSample(windows=tuple(windows), n_windows=len(tiles), pixels=pixels)
