"""NEON AOP reflectance HDF5 and generic NetCDF reflectance -> canonical cube.

NEON layout (h5py)::

    <SITE>/Reflectance/Reflectance_Data            (y, x, band) int16
        attrs Scale_Factor (10000: physical = raw / 10000), Data_Ignore_Value (-9999)
    <SITE>/Reflectance/Metadata/Spectral_Data/Wavelength   (band,) nm
    <SITE>/Reflectance/Metadata/Spectral_Data/FWHM         (band,) nm, optional
    <SITE>/Reflectance/Metadata/Coordinate_System/EPSG Code   scalar string
    <SITE>/Reflectance/Metadata/Coordinate_System/Map_Info    ENVI-style map info string

Generic NetCDF (xarray, engine h5netcdf): a 3-D variable named ``reflectance`` (any case) with a
band dimension named ``band``/``bands``/``wavelength``; the other two dimensions are (y, x) in
that order. Wavelengths come from a coordinate or variable ``wavelength(s)`` along the band
dimension, or from the EMIT group ``sensor_band_parameters``; ``_FillValue`` is the nodata and
``scale_factor`` the reflectance scale; a grid with a CRS (CF grid mapping / rioxarray) keeps it.
"""

from __future__ import annotations

import re
from pathlib import Path

import dask.array as da
import h5py
import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from rasterio.crs import CRS

from sscc_core.io.cube import make_cube
from sscc_core.io.envi import parse_map_info

BAND_DIMS = ("band", "bands", "wavelength", "wavelengths")
_TRUNCATED = re.compile(r"truncated file: eof = (?P<eof>\d+).*stored_eof = (?P<stored>\d+)")


def _text(value: object) -> str:
    """A string from an HDF5 scalar/array of bytes or str."""
    arr = np.asarray(value).ravel()
    item = arr[0] if arr.size else ""
    return item.decode() if isinstance(item, bytes) else str(item)


def check_hdf5_size(path: Path) -> None:
    """Refuse an HDF5 file shorter than the end of file its superblock records.

    Raises:
        ValueError: The file is truncated (the message names both sizes in bytes).
    """
    try:
        h5py.File(path, "r").close()
    except OSError as exc:
        found = _TRUNCATED.search(str(exc))
        if found is None:
            raise
        raise ValueError(
            f"{path}: truncated: the file holds {found['eof']} bytes, its HDF5 superblock records "
            f"{found['stored']}"
        ) from exc


def neon_site(f: h5py.File) -> str | None:
    """The top-level group holding ``Reflectance/Reflectance_Data``, or ``None``."""
    for key, item in f.items():
        if isinstance(item, h5py.Group) and "Reflectance/Reflectance_Data" in item:
            return key
    return None


def is_neon(path: str | Path) -> bool:
    """Whether ``path`` is an HDF5 file in the NEON AOP reflectance layout."""
    try:
        with h5py.File(path, "r") as f:
            return neon_site(f) is not None
    except OSError:
        return False


def read_neon(path: str | Path, *, name: str | None = None) -> xr.Dataset:
    """Read a NEON AOP reflectance HDF5 file into the canonical cube (lazy dask over h5py).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: Not the NEON layout, or metadata inconsistent with the data.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    f = h5py.File(p, "r")  # stays open: the returned cube reads it lazily
    try:
        return _neon_cube(f, p, name)
    except Exception:
        f.close()
        raise


def _neon_cube(f: h5py.File, p: Path, name: str | None) -> xr.Dataset:
    """The canonical cube of an open NEON file (see :func:`read_neon`)."""
    site = neon_site(f)
    if site is None:
        raise ValueError(f"{p}: no <SITE>/Reflectance/Reflectance_Data group (not NEON AOP layout)")
    refl = f[f"{site}/Reflectance"]
    dset = refl["Reflectance_Data"]
    if dset.ndim != 3:
        raise ValueError(f"{p}: Reflectance_Data has shape {dset.shape}, expected (y, x, band)")
    meta = refl["Metadata"]
    wavelength = np.asarray(meta["Spectral_Data/Wavelength"], dtype=np.float64)
    fwhm = meta.get("Spectral_Data/FWHM")
    fwhm = np.asarray(fwhm, dtype=np.float64) if fwhm is not None else None
    factor = float(np.asarray(dset.attrs.get("Scale_Factor", 1.0)).ravel()[0])
    nodata = dset.attrs.get("Data_Ignore_Value")
    if nodata is not None:
        nodata = float(np.asarray(nodata).ravel()[0])
        nodata = int(nodata) if np.issubdtype(dset.dtype, np.integer) else nodata
    crs = transform = None
    coord = meta.get("Coordinate_System")
    if coord is not None and "Map_Info" in coord:
        crs, transform = parse_map_info(_text(coord["Map_Info"][()]), f"{p}: Map_Info")
        if "EPSG Code" in coord:
            crs = CRS.from_epsg(int(_text(coord["EPSG Code"][()])))
    height, width, _ = dset.shape
    rows = max(1, min(height, 256))
    data = da.from_array(dset, chunks=(rows, width, dset.shape[2])).transpose(2, 0, 1)
    return make_cube(
        data, wavelength=wavelength, fwhm=fwhm, nodata=nodata, scale=1.0 / factor, crs=crs,
        transform=transform, name=name or site, source=str(p),
    )


def _band_dim(var: xr.DataArray, path: Path) -> str:
    dims = [d for d in var.dims if str(d).lower() in BAND_DIMS]
    if len(dims) != 1:
        raise ValueError(
            f"{path}: reflectance dims {var.dims}: need exactly one band dimension named one of "
            f"{BAND_DIMS}"
        )
    return str(dims[0])


def read_netcdf(
    path: str | Path, *, variable: str | None = None, name: str | None = None
) -> xr.Dataset:
    """Read a NetCDF reflectance variable into the canonical cube (lazy).

    Args:
        path: ``.nc`` file.
        variable: Variable name (default: the one named ``reflectance`` in any case).
        name: Scene name (default: file stem).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: No 3-D reflectance variable with one band dimension.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    src = xr.open_dataset(p, engine="h5netcdf", mask_and_scale=False, decode_coords="all",
                          chunks={})
    names = [variable] if variable else [
        v for v in src.data_vars if str(v).lower() == "reflectance"
    ]
    if len(names) != 1 or names[0] not in src or src[names[0]].ndim != 3:
        raise ValueError(f"{p}: no 3-D reflectance variable (variables: {list(src.data_vars)})")
    var = src[names[0]]
    band = _band_dim(var, p)
    ydim, xdim = [d for d in var.dims if d != band]
    var = var.transpose(band, ydim, xdim)
    wavelength = None
    for key in ("wavelength", "wavelengths"):
        if key in src.variables and src[key].dims == (band,):
            wavelength = np.asarray(src[key].values, dtype=np.float64)
    if wavelength is None:
        try:
            params = xr.open_dataset(p, engine="h5netcdf", group="sensor_band_parameters")
            wavelength = np.asarray(params["wavelengths"].values, dtype=np.float64)
        except (OSError, KeyError):
            wavelength = None
    nodata = var.attrs.get("_FillValue", var.encoding.get("_FillValue"))
    nodata = nodata.item() if isinstance(nodata, np.generic) else nodata
    scale = float(var.attrs.get("scale_factor", 1.0))
    crs = transform = None
    if var.rio.crs is not None and ydim in var.coords and xdim in var.coords:
        crs = var.rio.crs
        transform = var.rio.set_spatial_dims(x_dim=xdim, y_dim=ydim).rio.transform(recalc=True)
    return make_cube(
        var.data, wavelength=wavelength, nodata=nodata, scale=scale, crs=crs,
        transform=transform, name=name or p.stem, source=str(p),
    )
