"""Format detection and dispatch: any supported input file -> canonical cube.

Detection looks at the file's first bytes (MATLAB, TIFF, HDF5/NetCDF-4, classic NetCDF, ENVI
header) and falls back to the extension; a raw ENVI data file is recognised by the ``.hdr``
beside it. An HDF5 file in the NEON AOP layout goes to the NEON reader, any other HDF5/NetCDF file
to the generic NetCDF reader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import xarray as xr

from sscc_core.io import envi, geotiff, matlab, neon

FORMATS = ("mat", "envi", "geotiff", "neon", "netcdf")

_MAGIC = (
    (b"MATLAB", "mat"),
    (b"II*\x00", "geotiff"),
    (b"MM\x00*", "geotiff"),
    (b"II+\x00", "geotiff"),
    (b"MM\x00+", "geotiff"),
    (b"\x89HDF\r\n\x1a\n", "hdf5"),
    (b"CDF\x01", "netcdf"),
    (b"CDF\x02", "netcdf"),
    (b"ENVI", "envi"),
)
_EXTENSIONS = {
    ".mat": "mat", ".hdr": "envi", ".tif": "geotiff", ".tiff": "geotiff",
    ".h5": "hdf5", ".hdf5": "hdf5", ".he5": "hdf5", ".nc": "netcdf", ".nc4": "netcdf",
}


def detect_format(path: str | Path) -> str:
    """Name of the reader for ``path``, one of :data:`FORMATS`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: The format is not recognised (the message names the file), or an HDF5
            file is truncated.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    with p.open("rb") as fh:
        head = fh.read(8)
    kind = next((k for magic, k in _MAGIC if head.startswith(magic)), None)
    if kind is None and (p.with_suffix(".hdr").is_file() or p.with_name(p.name + ".hdr").is_file()):
        kind = "envi"
    if kind is None:
        kind = _EXTENSIONS.get(p.suffix.lower())
    if kind == "hdf5":
        neon.check_hdf5_size(p)
        kind = "neon" if neon.is_neon(p) else "netcdf"
    if kind is None:
        raise ValueError(
            f"{p}: unknown format (supported: .mat, ENVI .hdr/.img, GeoTIFF, NEON HDF5, NetCDF)"
        )
    return kind


def read_any(path: str | Path, **opts: Any) -> xr.Dataset:
    """Read any supported file into the canonical cube.

    Args:
        path: Input file (for ENVI, the header or the data file).
        **opts: Passed to the format's reader (e.g. ``var=``/``gt_path=`` for ``.mat``,
            ``drop_bad_bands=`` for ENVI, ``variable=`` for NetCDF, ``name=`` for all).

    Raises:
        FileNotFoundError: ``path`` (or a companion file) does not exist.
        ValueError: Unknown format or malformed content.
    """
    readers = {
        "mat": matlab.read_mat,
        "envi": envi.read_envi,
        "geotiff": geotiff.read_geotiff,
        "neon": neon.read_neon,
        "netcdf": neon.read_netcdf,
    }
    return readers[detect_format(path)](path, **opts)
