"""Mosaicking flight lines onto one grid: grid math and window assembly, no Ray.

All lines must share the CRS, the pixel size and the pixel lattice (origins differ by whole
pixels), the band count, the dtype and the reflectance scale. The mosaic grid is the union of the
line extents. Where lines overlap the **first valid** line in input order wins: a pixel takes the
values of the first line whose ``valid`` is True there. Pixels no line covers are invalid and hold
the nodata value (NaN for float data without one, 0 for integers without one).

The mosaic is built window by window (:func:`mosaic_window`), so a driver can create the store
from :func:`mosaic_template` and let workers fill disjoint chunk-aligned windows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import dask.array as da
import numpy as np
import xarray as xr
from affine import Affine
from rasterio.crs import CRS

from sscc_core.io.cube import cube_attrs, pixel_centres
from sscc_core.io.lines import check_compatible, source_label


@dataclass(frozen=True)
class MosaicPlan:
    """The union grid and where each line sits in it.

    Attributes:
        crs: Common CRS.
        transform: North-up affine of the mosaic grid.
        height: Mosaic rows.
        width: Mosaic columns.
        offsets: (row, col) of each line's first pixel in the mosaic, in input order.
        shapes: (rows, cols) of each line.
    """

    crs: CRS
    transform: Affine
    height: int
    width: int
    offsets: tuple[tuple[int, int], ...]
    shapes: tuple[tuple[int, int], ...]

    def windows(self, step: int) -> Iterator[tuple[int, int, int, int]]:
        """``(y0, y1, x0, x1)`` windows of side ``step`` tiling the grid (edges clipped)."""
        for y0 in range(0, self.height, step):
            for x0 in range(0, self.width, step):
                yield y0, min(y0 + step, self.height), x0, min(x0 + step, self.width)


def plan_mosaic(cubes: Sequence[xr.Dataset], tol: float = 1e-6) -> MosaicPlan:
    """The union grid of georeferenced lines.

    Args:
        cubes: Canonical cubes (lazy is fine), each with a CRS and a north-up transform.
        tol: Tolerance, in pixels, on pixel sizes and on the lattice alignment of origins.

    Raises:
        ValueError: No lines; a line without CRS or with a rotated grid; CRS, pixel size, lattice,
            band count, dtype, scale or wavelengths differ (the message names both files).
    """
    if not cubes:
        raise ValueError("mosaic: no input lines")
    first = cubes[0]
    transforms = []
    for ds in cubes:
        if ds.rio.crs is None:
            raise ValueError(f"mosaic: {source_label(ds)} has no CRS; only georeferenced lines mosaic")
        t = ds.rio.transform(recalc=False)
        if t.b != 0 or t.d != 0 or t.a <= 0 or t.e >= 0:
            raise ValueError(f"mosaic: {source_label(ds)} is not on a north-up grid ({tuple(t)[:6]})")
        transforms.append(t)
    t0 = transforms[0]
    for ds, t in zip(cubes[1:], transforms[1:]):
        check_compatible(first, ds)
        if ds.rio.crs != first.rio.crs:
            raise ValueError(f"mosaic: CRS differ: {source_label(first)} vs {source_label(ds)}")
        if abs(t.a - t0.a) > tol * t0.a or abs(t.e - t0.e) > tol * -t0.e:
            raise ValueError(
                f"mosaic: pixel sizes differ: {source_label(first)} ({t0.a}, {-t0.e}) vs "
                f"{source_label(ds)} ({t.a}, {-t.e})"
            )
    left = min(t.c for t in transforms)
    top = max(t.f for t in transforms)
    offsets, shapes = [], []
    for ds, t in zip(cubes, transforms):
        col, row = (t.c - left) / t0.a, (top - t.f) / -t0.e
        if abs(col - round(col)) > tol or abs(row - round(row)) > tol:
            raise ValueError(f"mosaic: {source_label(ds)} is not on the pixel lattice of {source_label(first)}")
        offsets.append((round(row), round(col)))
        shapes.append((ds.sizes["y"], ds.sizes["x"]))
    height = max(r + h for (r, _), (h, _) in zip(offsets, shapes))
    width = max(c + w for (_, c), (_, w) in zip(offsets, shapes))
    transform = Affine(t0.a, 0.0, left, 0.0, t0.e, top)
    return MosaicPlan(first.rio.crs, transform, height, width, tuple(offsets), tuple(shapes))


def fill_value(reflectance: xr.DataArray) -> float | int:
    """Value of pixels no line covers: nodata, else NaN (float) or 0 (integer)."""
    nodata = reflectance.attrs.get("nodata")
    if nodata is not None:
        return nodata
    return np.nan if np.issubdtype(reflectance.dtype, np.floating) else 0


def mosaic_template(
    cubes: Sequence[xr.Dataset], plan: MosaicPlan, name: str = "mosaic"
) -> xr.Dataset:
    """Lazy (dask, never computed) canonical cube of the mosaic's shape, coords and attributes.

    Args:
        cubes: The lines, in input order.
        plan: From :func:`plan_mosaic`.
        name: Mosaic name.

    Returns:
        Dataset with ``reflectance`` (B, H, W), ``valid`` (H, W) and, if any line has them,
        ``labels`` (H, W), plus ``wavelength``/``fwhm`` of the first line and ``spatial_ref``.
    """
    first = cubes[0]
    refl = first["reflectance"]
    shape = (refl.sizes["band"], plan.height, plan.width)
    y, x = pixel_centres(plan.transform, plan.height, plan.width)
    coords = {"band": np.arange(shape[0]), "y": y, "x": x}
    for key in ("wavelength", "fwhm"):
        if key in first.coords:
            coords[key] = ("band", np.asarray(first[key].values), dict(first[key].attrs))
    variables = {
        "reflectance": (("band", "y", "x"), da.zeros(shape, dtype=refl.dtype), dict(refl.attrs)),
        "valid": (("y", "x"), da.zeros(shape[1:], dtype=bool)),
    }
    if any("labels" in ds for ds in cubes):
        variables["labels"] = (("y", "x"), da.zeros(shape[1:], dtype=np.int16))
    sources = [s for ds in cubes for s in (ds.attrs.get("source") or [])]
    ds = xr.Dataset(
        variables,
        coords=coords,
        attrs=cube_attrs(name, sources, int(sum(int(c.attrs.get("n_nonfinite", 0)) for c in cubes)),
                         mosaic_rule="first-valid-wins"),
    )
    return ds.rio.write_transform(plan.transform).rio.write_crs(plan.crs)


def mosaic_window(
    cubes: Sequence[xr.Dataset], plan: MosaicPlan, y0: int, y1: int, x0: int, x1: int
) -> xr.Dataset:
    """Assemble mosaic rows ``y0:y1`` and columns ``x0:x1``, first valid line winning.

    Only the parts of each line that intersect the window are read.

    Returns:
        Dataset with ``reflectance`` (B, y1-y0, x1-x0), ``valid`` and (if any line has them)
        ``labels`` over the window, with the window's ``y``/``x`` coordinates.
    """
    refl0 = cubes[0]["reflectance"]
    n_bands = refl0.sizes["band"]
    h, w = y1 - y0, x1 - x0
    out = np.full((n_bands, h, w), fill_value(refl0), dtype=refl0.dtype)
    valid = np.zeros((h, w), dtype=bool)
    has_labels = any("labels" in ds for ds in cubes)
    labels = np.zeros((h, w), dtype=np.int16)
    for ds, (r, c), (lh, lw) in zip(cubes, plan.offsets, plan.shapes):
        ty0, ty1 = max(y0, r), min(y1, r + lh)
        tx0, tx1 = max(x0, c), min(x1, c + lw)
        if ty0 >= ty1 or tx0 >= tx1:
            continue
        src = {"y": slice(ty0 - r, ty1 - r), "x": slice(tx0 - c, tx1 - c)}
        dst = (slice(ty0 - y0, ty1 - y0), slice(tx0 - x0, tx1 - x0))
        take = np.asarray(ds["valid"].isel(src).values) & ~valid[dst]
        block = np.asarray(ds["reflectance"].isel(src).values)
        out[(slice(None), *dst)] = np.where(take, block, out[(slice(None), *dst)])
        if "labels" in ds:
            labels[dst] = np.where(take, np.asarray(ds["labels"].isel(src).values), labels[dst])
        valid[dst] |= take
    y, x = pixel_centres(plan.transform, plan.height, plan.width)
    variables = {"reflectance": (("band", "y", "x"), out), "valid": (("y", "x"), valid)}
    if has_labels:
        variables["labels"] = (("y", "x"), labels)
    return xr.Dataset(variables, coords={"y": y[y0:y1], "x": x[x0:x1]})


def mosaic_cubes(cubes: Sequence[xr.Dataset], name: str = "mosaic") -> xr.Dataset:
    """The whole mosaic in memory (small inputs; large ones go window by window)."""
    plan = plan_mosaic(cubes)
    template = mosaic_template(cubes, plan, name)
    window = mosaic_window(cubes, plan, 0, plan.height, 0, plan.width)
    for key in window.data_vars:
        template[key] = template[key].copy(data=window[key].values)
    return template
