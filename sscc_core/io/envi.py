"""ENVI ``.hdr`` + raw binary (AVIRIS / AVIRIS-NG / AVIRIS-3 style) -> canonical cube, via GDAL.

GDAL's ENVI driver (through rasterio/rioxarray) parses the header and reads the pixels: any
``data type`` of :data:`DATA_TYPES`, ``interleave`` bsq/bil/bip, ``byte order`` and ``header
offset``, lazily in blocks of whole rows (windowed reads, nothing is read until the cube is
written; what GDAL keeps meanwhile is bounded by its block cache, ``GDAL_CACHEMAX``, 5% of RAM by
default); ``data ignore value`` is its nodata. The header fields come from its ``ENVI``
metadata domain. Kept here is what GDAL does not do:

- the data file's size is checked against the header (GDAL opens a file of the wrong size, or
  refuses it with "Image file is too small"), and the message names both sizes and the terms;
- ``bbl`` (bands with bbl = 0 are dropped), ``reflectance scale factor`` (physical = raw /
  factor), and ``wavelength`` / ``fwhm`` in nm at full precision (GDAL's ``IMAGERY`` metadata
  rounds them to 1 nm and has no ``fwhm`` of its own for ENVI);
- the grid of ``map info`` (UTM and geographic WGS-84/NAD, with rotation), which GDAL does not
  expose: for a rotated grid its geotransform shears non-square pixels and does not rotate the
  reference pixel's offset (:func:`parse_map_info` is also the NEON reader's). The CRS is the
  ``coordinate system string`` (WKT) when present, else the EPSG code of map info's datum/zone.
"""

from __future__ import annotations

import contextlib
import math
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import rasterio
import rioxarray
import xarray as xr
from affine import Affine
from rasterio.crs import CRS

from sscc_core.io.cube import make_cube, to_nm

# ENVI data type codes read: uint8, int16, int32, float32, float64, uint16, uint32, int64, uint64
# (GDAL also reads the complex types 6 and 9, which a reflectance cube cannot hold).
DATA_TYPES = (1, 2, 3, 4, 5, 12, 13, 14, 15)
DATA_SUFFIXES = ("", ".img", ".dat", ".bsq", ".bil", ".bip", ".raw", ".bin")
_UTM_DATUM_EPSG = {"wgs-84": (32600, 32700), "nad-83": (26900, None), "nad-27": (26700, None)}
_GEOGRAPHIC_DATUM_EPSG = {"wgs-84": 4326, "nad-83": 4269, "nad-27": 4267}
_MAP_INFO = re.compile(r"^[ \t]*map[ \t]+info[ \t]*=[ \t]*\{([^}]*)\}", re.I | re.M)
_BLOCK_BYTES = 64 << 20  # source bytes per lazy block of whole rows


def split_list(value: str) -> list[str]:
    """Items of a comma-separated header list, stripped."""
    return [v.strip() for v in value.split(",") if v.strip()]


def _floats(fields: dict[str, str], key: str, hdr: Path) -> np.ndarray | None:
    """The header list ``key`` (GDAL's name: lower case, ``_`` for spaces) as float64, or None."""
    if key not in fields:
        return None
    try:
        return np.array([float(v) for v in split_list(fields[key].strip("{}"))], dtype=np.float64)
    except ValueError as exc:
        name = key.replace("_", " ")
        raise ValueError(f"{hdr}: field {name!r} is not a list of numbers ({exc})") from exc


def parse_map_info(value: str | list[str], where: str = "map info") -> tuple[CRS | None, Affine]:
    """CRS and pixel-grid affine of an ENVI ``map info`` (same syntax as NEON ``Map_Info``).

    ``{proj, ref_col, ref_row, easting, northing, px, py, [zone, North|South,] datum,
    units=..., rotation=deg}``; the reference pixel is 1-based with (1, 1) the outer corner of
    the first pixel. A rotation (degrees, counter-clockwise, as AVIRIS-NG writes it) turns the
    column axis to (cos, sin) * px and the row axis to (sin, -cos) * py about the reference
    pixel. GDAL's ENVI driver agrees for square pixels referenced at (1, 1), the AVIRIS-NG case
    (GDAL swaps px/py in the rotation terms and does not rotate the reference offset).

    Returns:
        ``(crs, transform)``; ``crs`` is ``None`` for projections other than UTM and
        geographic lat/lon (pass the header's WKT instead).

    Raises:
        ValueError: Too few items or non-numeric coordinates.
    """
    items = split_list(value) if isinstance(value, str) else [str(v).strip() for v in value]
    if len(items) < 7:
        raise ValueError(f"{where}: expected at least 7 items, got {items}")
    try:
        ref_col, ref_row, east, north, px, py = (float(v) for v in items[1:7])
    except ValueError as exc:
        raise ValueError(f"{where}: reference/pixel-size items are not numbers: {items}") from exc
    keyed = {k.strip().lower(): v.strip() for k, v in (i.split("=", 1) for i in items if "=" in i)}
    rotation = math.radians(float(keyed.get("rotation", 0.0)))
    cos, sin = math.cos(rotation), math.sin(rotation)
    a, b, d, e = cos * px, sin * py, sin * px, -cos * py
    c = east - (ref_col - 1) * a - (ref_row - 1) * b
    f = north - (ref_col - 1) * d - (ref_row - 1) * e
    transform = Affine(a, b, c, d, e, f)
    proj = items[0].lower()
    crs = None
    if proj == "utm" and len(items) >= 10:
        zone, hemisphere, datum = int(items[7]), items[8].lower(), items[9].lower()
        north_base, south_base = _UTM_DATUM_EPSG.get(datum, (None, None))
        base = south_base if hemisphere.startswith("s") else north_base
        if base is not None:
            crs = CRS.from_epsg(base + zone)
    elif proj.startswith("geographic") and len(items) >= 8:
        code = _GEOGRAPHIC_DATUM_EPSG.get(items[7].lower())
        crs = CRS.from_epsg(code) if code else None
    return crs, transform


def find_pair(path: str | Path) -> tuple[Path, Path]:
    """``(header, data file)`` of an ENVI image given either one.

    Raises:
        FileNotFoundError: The file, its header or its data file is missing.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    if p.suffix.lower() == ".hdr":
        base = p.with_suffix("")
        for suffix in DATA_SUFFIXES:
            candidate = base.with_name(base.name + suffix)
            if candidate.is_file():
                return p, candidate
        raise FileNotFoundError(f"{p}: no data file beside the header ({base}[.img|.dat|...])")
    for hdr in (p.with_suffix(".hdr"), p.with_name(p.name + ".hdr")):
        if hdr.is_file():
            return hdr, p
    raise FileNotFoundError(f"{p}: no ENVI header ({p.with_suffix('.hdr').name}) beside it")


@contextlib.contextmanager
def _quiet_gdal() -> Iterator[None]:
    """Silence rasterio's warning for a file without a geotransform: the grid is map info's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        yield


def _header_fields(hdr: Path, data_file: Path) -> tuple[dict[str, str], rasterio.profiles.Profile]:
    """GDAL's view of an ENVI image: its ``ENVI`` metadata domain (field names in lower case,
    ``_`` for blanks: ``map_info``) and its profile.

    GDAL's own size check is off here (``RAW_CHECK_FILE_SIZE``) so that a file of the wrong size
    opens and :func:`check_size` can say what is wrong.

    Raises:
        ValueError: The header does not start with ``ENVI`` or GDAL cannot open the pair.
    """
    with hdr.open("rb") as fh:
        if not fh.read(256).lstrip().startswith(b"ENVI"):
            raise ValueError(f"{hdr}: not an ENVI header (first line is not 'ENVI')")
    try:
        with _quiet_gdal(), rasterio.Env(RAW_CHECK_FILE_SIZE="NO"), \
                rasterio.open(data_file, driver="ENVI") as src:
            tags, profile = src.tags(ns="ENVI"), src.profile
    except rasterio.errors.RasterioIOError as exc:
        raise ValueError(f"{hdr}: GDAL's ENVI driver cannot read it: {exc}") from exc
    # GDAL keeps the header's spelling ("Wavelength Units" -> "Wavelength_Units"); ENVI field
    # names are not case-sensitive, and runs of blanks count as one.
    return {re.sub(r"_+", "_", key.lower()): value for key, value in tags.items()}, profile


def check_size(data_file: Path, hdr: Path, fields: dict[str, str], itemsize: int) -> None:
    """Refuse a data file whose size is not the one its header implies.

    Args:
        data_file: The raw binary.
        hdr: Its header (named in the message).
        fields: GDAL's ``ENVI`` metadata of the pair.
        itemsize: Bytes per value of the header's data type.

    Raises:
        ValueError: ``truncated`` or ``longer than its header says``, with both sizes and the
            header's bands/lines/samples/data type/header offset.
    """
    n_bands, height, width = (int(fields[k]) for k in ("bands", "lines", "samples"))
    offset = int(fields.get("header_offset", 0))
    needed = offset + n_bands * height * width * itemsize
    size = data_file.stat().st_size
    if size != needed:
        raise ValueError(
            f"{data_file}: {'truncated' if size < needed else 'longer than its header says'}: "
            f"the file holds {size} bytes, the header implies {needed} (header offset {offset} + "
            f"{n_bands} bands x {height} lines x {width} samples x {itemsize} bytes of "
            f"data type {fields['data_type']}); fix bands/lines/samples/data type/header offset "
            f"in {hdr.name}"
        )


def _wavelength_nm(fields: dict[str, str], key: str, hdr: Path) -> np.ndarray | None:
    """Wavelength-like list ``key`` in nm, per the header's ``wavelength units``."""
    values = _floats(fields, key, hdr)
    return None if values is None else to_nm(values, fields.get("wavelength_units", ""))


def read_envi(
    path: str | Path, *, drop_bad_bands: bool = True, name: str | None = None
) -> xr.Dataset:
    """Read an ENVI image (header or data file path) into the canonical cube, lazily.

    Args:
        path: ``.hdr`` or the binary data file.
        drop_bad_bands: Drop bands whose ``bbl`` entry is 0.
        name: Scene name (default: data file stem).

    Returns:
        Canonical cube backed by a dask array of GDAL windowed reads (blocks of whole rows of
        about 64 MiB), native byte order.

    Raises:
        FileNotFoundError: Header or data file missing.
        ValueError: Malformed header, unsupported data type/interleave, or a data file whose size
            differs from the one the header implies.
    """
    hdr, data_file = find_pair(path)
    fields, profile = _header_fields(hdr, data_file)
    if "data_type" not in fields:
        raise ValueError(f"{hdr}: required field 'data type' missing")
    code = int(fields["data_type"])
    if code not in DATA_TYPES:
        raise ValueError(f"{hdr}: unsupported data type {code} (supported {sorted(DATA_TYPES)})")
    interleave = fields.get("interleave", "bsq").lower()
    if interleave not in ("bsq", "bil", "bip"):
        raise ValueError(f"{hdr}: unknown interleave {interleave!r} (bsq, bil or bip)")
    dtype = np.dtype(profile["dtype"])
    check_size(data_file, hdr, fields, dtype.itemsize)
    n_bands, width = profile["count"], profile["width"]
    rows = max(1, _BLOCK_BYTES // max(1, n_bands * width * dtype.itemsize))
    with _quiet_gdal():
        data = rioxarray.open_rasterio(
            data_file, chunks={"band": -1, "y": rows, "x": -1}, parse_coordinates=False,
            mask_and_scale=False, driver="ENVI",
        ).data
    wavelength = _wavelength_nm(fields, "wavelength", hdr)
    fwhm = _wavelength_nm(fields, "fwhm", hdr)
    for key, values in (("wavelength", wavelength), ("fwhm", fwhm)):
        if values is not None and values.size != n_bands:
            raise ValueError(f"{hdr}: {key} lists {values.size} values for {n_bands} bands")
    bbl = _floats(fields, "bbl", hdr)
    if drop_bad_bands and bbl is not None:
        if bbl.size != n_bands:
            raise ValueError(f"{hdr}: bbl lists {bbl.size} values for {n_bands} bands")
        keep = np.flatnonzero(bbl != 0)
        data = data[keep]
        wavelength = wavelength[keep] if wavelength is not None else None
        fwhm = fwhm[keep] if fwhm is not None else None
    nodata = profile["nodata"]
    if nodata is not None and np.issubdtype(dtype, np.integer) and float(nodata).is_integer():
        nodata = int(nodata)
    factor = float(fields.get("reflectance_scale_factor", 1.0))
    if factor == 0:
        raise ValueError(f"{hdr}: reflectance scale factor is 0")
    crs = transform = None
    map_info = _MAP_INFO.search(hdr.read_text(errors="replace"))
    if map_info:
        crs, transform = parse_map_info(map_info.group(1), f"{hdr}: map info")
    if "coordinate_system_string" in fields:
        crs = CRS.from_wkt(fields["coordinate_system_string"].strip("{}"))
    if crs is not None and transform is None:
        raise ValueError(f"{hdr}: coordinate system string without map info")
    return make_cube(
        data, wavelength=wavelength, fwhm=fwhm, nodata=nodata, scale=1.0 / factor, crs=crs,
        transform=transform, name=name or data_file.stem, source=[str(hdr), str(data_file)],
    )
