"""A scene's ground truth (a class map on the cube's pixel grid) read, checked and attached.

A class map is a single-band raster in any format the cube readers take (GeoTIFF, ENVI,
NetCDF, read by :func:`sscc_core.io.readers.read_any`) or a 2-D variable of a MATLAB ``.mat``
file. Its pixel (r, c) must be the cube's pixel (r, c): the shapes must be equal, and where both
files carry a CRS or a geotransform those must be equal too. A class map is never resampled or
reprojected; a map on another grid is refused.

Values: 0, the raster's nodata value and NaN mean *unlabelled*; every other value must be a
non-negative integer class id. Class ids are compacted to 1..C in increasing order and the source
ids are kept in the ``labels`` variable's ``source_class_ids`` attribute, as for the benchmark
scenes (:func:`sscc_core.io.matlab.compact_labels`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
from affine import Affine
from rasterio.crs import CRS

from sscc_core.io import matlab
from sscc_core.io.readers import detect_format, read_any

GRID_TOLERANCE = 1e-6  # geotransforms equal to this fraction of a pixel are the same grid


@dataclass(frozen=True)
class ClassMap:
    """A class map as read from its file.

    Attributes:
        labels: (H, W) int64 source class ids, 0 = unlabelled.
        crs: The file's CRS, or ``None``.
        transform: The file's pixel-to-CRS affine, or ``None`` when it has no geotransform.
        source: The file's path.
    """

    labels: np.ndarray
    crs: CRS | None
    transform: Affine | None
    source: str


def grid_of(ds: xr.Dataset) -> tuple[CRS | None, Affine | None]:
    """The CRS and geotransform a canonical cube carries (``None`` where it has none)."""
    if "spatial_ref" not in ds.coords:
        return None, None
    return ds.rio.crs, ds.rio.transform()


def _raster_class_map(path: Path) -> ClassMap:
    ds = read_any(path)
    if ds.sizes["band"] != 1:
        raise ValueError(f"{path}: a class map has one band, this raster has {ds.sizes['band']}")
    values = np.asarray(ds["reflectance"].values[0], dtype=np.float64)
    valid = np.asarray(ds["valid"].values, dtype=bool)
    labelled = np.where(valid, values, 0.0)
    if np.any(labelled != np.round(labelled)):
        bad = labelled[labelled != np.round(labelled)][0]
        raise ValueError(f"{path}: class ids must be integers, found {bad:g}")
    crs, transform = grid_of(ds)
    return ClassMap(labelled.astype(np.int64), crs, transform, str(path))


def _mat_class_map(path: Path, var: str | None) -> ClassMap:
    variables = matlab.load_mat(path)
    key = matlab.pick_variable(variables, var, path, {2}, "the class map")
    raw = np.asarray(variables[key])
    if raw.ndim != 2 or not np.issubdtype(raw.dtype, np.number):
        raise ValueError(f"{path}: {key!r} is not a 2-D numeric class map (shape {raw.shape}, "
                         f"dtype {raw.dtype})")
    values = np.where(np.isfinite(raw), raw, 0).astype(np.float64)
    if np.any(values != np.round(values)):
        bad = values[values != np.round(values)][0]
        raise ValueError(f"{path}: class ids must be integers, found {bad:g} in {key!r}")
    return ClassMap(values.astype(np.int64), None, None, str(path))


def read_class_map(path: str | Path, var: str | None = None) -> ClassMap:
    """Read a class map (see the module docstring for the formats and values).

    Args:
        path: The class-map file.
        var: The ``.mat`` variable holding it; ``None`` picks the only 2-D numeric one. Only for
            ``.mat`` files.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: An unknown format, more than one band, ``var`` given for a raster, a
            variable that cannot be told or is not 2-D, a non-integer or negative class id, or no
            labelled pixel.
    """
    p = Path(path)
    if detect_format(p) == "mat":
        cmap = _mat_class_map(p, var)
    elif var is not None:
        raise ValueError(f"{p}: a variable name ({var!r}) applies to .mat class maps only")
    else:
        cmap = _raster_class_map(p)
    if cmap.labels.size and cmap.labels.min() < 0:
        raise ValueError(f"{p}: class ids must be >= 0 (0 = unlabelled), found "
                         f"{int(cmap.labels.min())}; mark unlabelled pixels 0 or set the "
                         f"raster's nodata value")
    if not np.any(cmap.labels > 0):
        raise ValueError(f"{p}: the class map labels no pixel (every value is 0, nodata or NaN)")
    return cmap


def check_grid(cube: xr.Dataset, cmap: ClassMap) -> None:
    """Refuse a class map that is not on the cube's pixel grid.

    Raises:
        ValueError: The shapes differ, or both carry a CRS (geotransform) and they differ.
    """
    shape = (cube.sizes["y"], cube.sizes["x"])
    if cmap.labels.shape != shape:
        raise ValueError(f"{cmap.source}: class map is {cmap.labels.shape[0]} x "
                         f"{cmap.labels.shape[1]} pixels, the cube {shape[0]} x {shape[1]}; "
                         f"it must be on the cube's grid (it is never resampled)")
    crs, transform = grid_of(cube)
    if crs is not None and cmap.crs is not None and CRS.from_user_input(crs) != cmap.crs:
        raise ValueError(f"{cmap.source}: class map CRS {cmap.crs.to_string()} is not the cube's "
                         f"{CRS.from_user_input(crs).to_string()} (it is never reprojected)")
    if transform is not None and cmap.transform is not None:
        pixel = max(abs(transform.a), abs(transform.e), 1e-300)
        if not transform.almost_equals(cmap.transform, precision=GRID_TOLERANCE * pixel):
            raise ValueError(f"{cmap.source}: class map geotransform {tuple(cmap.transform)[:6]} "
                             f"is not the cube's {tuple(transform)[:6]}; it must be on the "
                             f"cube's grid (it is never resampled)")


def attach_ground_truth(cube: xr.Dataset, cmap: ClassMap) -> xr.Dataset:
    """The cube with ``labels`` (compacted class ids 1..C, 0 = unlabelled) from ``cmap``, its
    source ids in ``labels.attrs["source_class_ids"]`` and its file appended to ``source``.

    Raises:
        ValueError: :func:`check_grid` refuses the class map, or the cube already has labels.
    """
    if "labels" in cube:
        raise ValueError(f"{cube.attrs.get('name', 'cube')}: the cube already has ground-truth "
                         f"labels from its reader")
    check_grid(cube, cmap)
    labels, ids = matlab.compact_labels(cmap.labels)
    out = cube.assign(labels=(("y", "x"), labels.astype(np.int16), {"source_class_ids": ids}))
    sources = list(cube.attrs.get("source", []))
    return out.assign_attrs(source=[*sources, cmap.source])


def require_ground_truth(cube: xr.Dataset, where: str) -> xr.DataArray:
    """The cube's ground truth, ``labels`` (y, x), 0 = unlabelled, classes 1..C.

    Args:
        cube: A canonical cube (a store opened by :func:`sscc_core.io.store.open_cube`).
        where: The store's path or URL, for the message.

    Raises:
        ValueError: The cube has no ground truth.
    """
    if "labels" not in cube:
        raise ValueError(f"{where}: cube store has no ground-truth `labels` to score against; "
                         f"ingest the scene with `sscc ingest INPUT --labels GT`")
    return cube["labels"]
