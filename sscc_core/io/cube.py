"""The canonical hyperspectral cube: an xarray Dataset laid out as docs/ARCHITECTURE.md fixes.

Every reader returns the output of :func:`make_cube`, so every store has the same variables,
coordinates and attributes whatever the source format:

- ``reflectance`` (band, y, x): raw source values in the source dtype; attrs
  ``reflectance_scale`` (physical = raw * scale) and ``nodata`` (absent when unknown).
- ``valid`` (y, x) bool: every band finite and not equal to ``nodata``.
- ``labels`` (y, x) int16, optional: 0 = unlabelled, classes 1..C.
- coords ``band`` (0..B-1), ``wavelength`` / ``fwhm`` (band, nm) where known, ``y`` / ``x``
  pixel centres in CRS units for a north-up grid (pixel indices otherwise) and the rioxarray
  ``spatial_ref`` (CRS + GeoTransform) when georeferenced.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from affine import Affine
from rasterio.crs import CRS

from sscc_core import __version__

Transform = Affine | Sequence[float]
ArrayLike = np.ndarray | da.Array


def as_affine(transform: Transform) -> Affine:
    """An :class:`affine.Affine` from an Affine or a GDAL 6-tuple ``(c, a, b, f, d, e)``."""
    if isinstance(transform, Affine):
        return transform
    values = [float(v) for v in transform]
    if len(values) != 6:
        raise ValueError(f"transform: expected an Affine or a GDAL 6-tuple, got {transform!r}")
    return Affine.from_gdal(*values)


def pixel_centres(transform: Affine, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates of a north-up grid.

    Args:
        transform: North-up affine (no rotation terms) mapping (col, row) to (x, y).
        height: Rows.
        width: Columns.

    Returns:
        ``(y, x)``: float64 arrays of shape (height,) and (width,), in CRS units.
    """
    y = transform.f + transform.e * (np.arange(height) + 0.5)
    x = transform.c + transform.a * (np.arange(width) + 0.5)
    return y, x


def to_nm(values: Sequence[float] | np.ndarray, units: str = "") -> np.ndarray:
    """Wavelength-like values in nm.

    Args:
        values: Band centres or widths.
        units: Declared units (``"Micrometers"``, ``"um"``, ``"Nanometers"``, ``"nm"``, ...);
            when absent or unknown, values all below 100 are taken as micrometres.

    Returns:
        float64 array in nm.
    """
    arr = np.asarray(values, dtype=np.float64)
    u = units.strip().lower()
    if u.startswith(("micro", "um", "µm")):
        return arr * 1000.0
    if u.startswith(("nano", "nm")):
        return arr
    return arr * 1000.0 if arr.size and arr.max() < 100 else arr


def valid_mask(
    data: ArrayLike, nodata: float | None, block_bytes: int = 64 << 20
) -> tuple[np.ndarray, int]:
    """Valid-pixel mask and count of pixels holding NaN/inf, computed in blocks of rows.

    Args:
        data: (B, H, W) array; a numpy memmap (any interleave) is read block by block.
        nodata: Raw nodata value, or ``None``.
        block_bytes: Approximate bytes of source data examined at once.

    Returns:
        ``(valid, n_nonfinite)``: (H, W) bool mask, True where every band is finite and differs
        from ``nodata``; number of pixels with at least one non-finite band.
    """
    n_bands, height, width = data.shape
    rows = max(1, block_bytes // max(1, n_bands * width * data.dtype.itemsize))
    valid = np.empty((height, width), dtype=bool)
    n_nonfinite = 0
    floating = np.issubdtype(data.dtype, np.floating)
    for y0 in range(0, height, rows):
        block = np.asarray(data[:, y0 : y0 + rows])
        ok = np.ones(block.shape[1:], dtype=bool)
        if floating:
            finite = np.isfinite(block).all(axis=0)
            n_nonfinite += int((~finite).sum())
            ok &= finite
        if nodata is not None:
            ok &= (block != nodata).all(axis=0)
        valid[y0 : y0 + rows] = ok
    return valid, n_nonfinite


def cube_attrs(name: str, sources: list[str], n_nonfinite: int, **extra: object) -> dict[str, object]:
    """The provenance attributes of a cube: name, input paths, version, creation time (UTC),
    count of pixels with NaN/inf values, plus ``extra``."""
    return {
        "name": name,
        "source": sources,
        "sscc_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "n_nonfinite": n_nonfinite,
        **extra,
    }


def make_cube(
    data: ArrayLike,
    *,
    wavelength: Sequence[float] | np.ndarray | None = None,
    fwhm: Sequence[float] | np.ndarray | None = None,
    nodata: float | None = None,
    scale: float = 1.0,
    labels: np.ndarray | None = None,
    crs: CRS | str | int | None = None,
    transform: Transform | None = None,
    name: str = "",
    source: str | Sequence[str] = "",
    attrs: dict[str, Any] | None = None,
) -> xr.Dataset:
    """Build the canonical cube from a (band, y, x) array.

    Args:
        data: (B, H, W) raw values in the source dtype: numpy, memmap or dask array (dask and
            memmap stay lazy until written; the valid mask is computed in row blocks).
        wavelength: (B,) band centres in nm.
        fwhm: (B,) band widths in nm.
        nodata: Raw value marking missing pixels.
        scale: Physical reflectance = raw * scale.
        labels: (H, W) integer ground truth, 0 = unlabelled.
        crs: Coordinate reference system (rasterio CRS, WKT/``"EPSG:n"`` string or EPSG code).
        transform: Affine (or GDAL 6-tuple) of the pixel grid; required when ``crs`` is given.
        name: Scene name.
        source: Input path(s).
        attrs: Extra dataset attributes (JSON-serialisable).

    Returns:
        The canonical Dataset; attrs ``n_nonfinite`` counts pixels with NaN/inf in any band.

    Raises:
        ValueError: Wrong ranks or lengths, or no valid pixel at all (all-nodata input).
    """
    if data.ndim != 3:
        raise ValueError(f"{name or 'cube'}: expected a (band, y, x) array, got shape {data.shape}")
    n_bands, height, width = data.shape
    if crs is not None and transform is None:
        raise ValueError(f"{name or 'cube'}: a CRS was given without a transform")
    valid, n_nonfinite = valid_mask(data, nodata)
    if not valid.any():
        raise ValueError(
            f"{name or 'cube'}: all-nodata input: no pixel is finite and != nodata ({nodata}) "
            f"in every band (source: {source})"
        )
    coords: dict[str, Any] = {"band": np.arange(n_bands)}
    for key, values in (("wavelength", wavelength), ("fwhm", fwhm)):
        if values is None:
            continue
        arr = np.asarray(values, dtype=np.float64)
        if arr.shape != (n_bands,):
            raise ValueError(f"{name or 'cube'}: {key} has {arr.size} values for {n_bands} bands")
        coords[key] = ("band", arr, {"units": "nm"})
    affine = as_affine(transform) if transform is not None else None
    if affine is not None and affine.b == 0 and affine.d == 0:
        coords["y"], coords["x"] = pixel_centres(affine, height, width)
    else:
        coords["y"], coords["x"] = np.arange(height), np.arange(width)
    refl_attrs: dict[str, Any] = {"reflectance_scale": float(scale)}
    if nodata is not None:
        refl_attrs["nodata"] = nodata.item() if isinstance(nodata, np.generic) else nodata
    variables: dict[str, Any] = {
        "reflectance": (("band", "y", "x"), data, refl_attrs),
        "valid": (("y", "x"), valid),
    }
    if labels is not None:
        if labels.shape != (height, width):
            raise ValueError(
                f"{name or 'cube'}: labels have shape {labels.shape}, cube is {(height, width)}"
            )
        variables["labels"] = (("y", "x"), np.asarray(labels).astype(np.int16))
    sources = [source] if isinstance(source, str) else [str(s) for s in source]
    ds = xr.Dataset(
        variables,
        coords=coords,
        attrs=cube_attrs(name, sources, n_nonfinite, **(attrs or {})),
    )
    if affine is not None:
        ds = ds.rio.write_transform(affine)
        if crs is not None:
            ds = ds.rio.write_crs(CRS.from_user_input(crs))
    return ds
