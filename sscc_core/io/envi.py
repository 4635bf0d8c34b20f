"""ENVI ``.hdr`` + raw binary (AVIRIS / AVIRIS-NG / AVIRIS-3 style) -> canonical cube.

The header is parsed here (no GDAL): ``samples``, ``lines``, ``bands``, ``header offset``,
``data type``, ``interleave`` (bsq/bil/bip), ``byte order``, ``data ignore value``,
``wavelength`` (+ ``wavelength units``), ``fwhm``, ``bbl`` (bands with bbl = 0 are dropped),
``reflectance scale factor`` (physical = raw / factor), ``map info`` (UTM and geographic
WGS-84/NAD, with rotation) and ``coordinate system string`` (WKT, preferred when present). The
binary is memory-mapped and wrapped in dask, so nothing is read until the cube is written.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr
from affine import Affine
from rasterio.crs import CRS

from sscc_core.io.cube import make_cube, to_nm

DATA_TYPES: dict[int, str] = {
    1: "u1", 2: "i2", 3: "i4", 4: "f4", 5: "f8", 12: "u2", 13: "u4", 14: "i8", 15: "u8",
}
DATA_SUFFIXES = ("", ".img", ".dat", ".bsq", ".bil", ".bip", ".raw", ".bin")
_UTM_DATUM_EPSG = {"wgs-84": (32600, 32700), "nad-83": (26900, None), "nad-27": (26700, None)}
_GEOGRAPHIC_DATUM_EPSG = {"wgs-84": 4326, "nad-83": 4269, "nad-27": 4267}


def parse_header(text: str, path: Path | str = "header") -> dict[str, str]:
    """Fields of an ENVI header as raw strings (``{...}`` values without braces).

    Args:
        text: Header file contents.
        path: Used in error messages.

    Returns:
        Lower-case field name -> value string.

    Raises:
        ValueError: The text does not start with ``ENVI`` or a brace is never closed.
    """
    if not text.lstrip().startswith("ENVI"):
        raise ValueError(f"{path}: not an ENVI header (first line is not 'ENVI')")
    fields: dict[str, str] = {}
    lines = text.splitlines()[1:]
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if "=" not in line:
            continue
        key, value = (s.strip() for s in line.split("=", 1))
        if value.startswith("{"):
            while "}" not in value:
                if i >= len(lines):
                    raise ValueError(f"{path}: field {key!r} has an unclosed '{{'")
                value += " " + lines[i].strip()
                i += 1
            value = value[1 : value.rindex("}")].strip()
        fields[re.sub(r"\s+", " ", key.lower())] = value
    return fields


def split_list(value: str) -> list[str]:
    """Items of a comma-separated header list, stripped."""
    return [v.strip() for v in value.split(",") if v.strip()]


def _floats(fields: dict[str, str], key: str, path: Path) -> np.ndarray | None:
    if key not in fields:
        return None
    try:
        return np.array([float(v) for v in split_list(fields[key])], dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"{path}: field {key!r} is not a list of numbers ({exc})") from exc


def _int(fields: dict[str, str], key: str, path: Path, default: int | None = None) -> int:
    if key not in fields:
        if default is None:
            raise ValueError(f"{path}: required field {key!r} missing")
        return default
    try:
        return int(fields[key])
    except ValueError as exc:
        raise ValueError(f"{path}: field {key!r} = {fields[key]!r} is not an integer") from exc


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


def _wavelength_nm(fields: dict[str, str], key: str, path: Path) -> np.ndarray | None:
    """Wavelength-like list ``key`` in nm, per the header's ``wavelength units``."""
    values = _floats(fields, key, path)
    return None if values is None else to_nm(values, fields.get("wavelength units", ""))


def read_envi(
    path: str | Path, *, drop_bad_bands: bool = True, name: str | None = None
) -> xr.Dataset:
    """Read an ENVI image (header or data file path) into the canonical cube, lazily.

    Args:
        path: ``.hdr`` or the binary data file.
        drop_bad_bands: Drop bands whose ``bbl`` entry is 0.
        name: Scene name (default: data file stem).

    Returns:
        Canonical cube backed by a dask view of the memory-mapped file, native byte order.

    Raises:
        FileNotFoundError: Header or data file missing.
        ValueError: Malformed header, unsupported data type/interleave, or a data file whose size
            differs from the one the header implies.
    """
    hdr, data_file = find_pair(path)
    fields = parse_header(hdr.read_text(errors="replace"), hdr)
    width, height = _int(fields, "samples", hdr), _int(fields, "lines", hdr)
    n_bands = _int(fields, "bands", hdr)
    offset = _int(fields, "header offset", hdr, default=0)
    code = _int(fields, "data type", hdr)
    if code not in DATA_TYPES:
        raise ValueError(f"{hdr}: unsupported data type {code} (supported {sorted(DATA_TYPES)})")
    order = _int(fields, "byte order", hdr, default=0)
    dtype = np.dtype((">" if order == 1 else "<") + DATA_TYPES[code])
    interleave = fields.get("interleave", "bsq").lower()
    shapes = {
        "bsq": ((n_bands, height, width), (0, 1, 2)),
        "bil": ((height, n_bands, width), (1, 0, 2)),
        "bip": ((height, width, n_bands), (2, 0, 1)),
    }
    if interleave not in shapes:
        raise ValueError(f"{hdr}: unknown interleave {interleave!r} (bsq, bil or bip)")
    shape, axes = shapes[interleave]
    needed = offset + int(np.prod(shape)) * dtype.itemsize
    size = data_file.stat().st_size
    if size != needed:
        raise ValueError(
            f"{data_file}: {'truncated' if size < needed else 'longer than its header says'}: "
            f"the file holds {size} bytes, the header implies {needed} (header offset {offset} + "
            f"{n_bands} bands x {height} lines x {width} samples x {dtype.itemsize} bytes of "
            f"data type {code}); fix bands/lines/samples/data type/header offset in {hdr.name}"
        )
    raw = np.memmap(data_file, dtype=dtype, mode="r", offset=offset, shape=shape)
    rows = max(1, (64 << 20) // max(1, n_bands * width * dtype.itemsize))
    data = da.from_array(raw.transpose(axes), chunks=(n_bands, rows, width))
    if not dtype.isnative:
        data = data.astype(dtype.newbyteorder("="))
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
    nodata = None
    if "data ignore value" in fields:
        nodata = float(fields["data ignore value"])
        if np.issubdtype(dtype, np.integer) and nodata.is_integer():
            nodata = int(nodata)
    factor = float(fields.get("reflectance scale factor", 1.0))
    if factor == 0:
        raise ValueError(f"{hdr}: reflectance scale factor is 0")
    crs = transform = None
    if "map info" in fields:
        crs, transform = parse_map_info(fields["map info"], f"{hdr}: map info")
    if "coordinate system string" in fields:
        crs = CRS.from_wkt(fields["coordinate system string"])
    if crs is not None and transform is None:
        raise ValueError(f"{hdr}: coordinate system string without map info")
    return make_cube(
        data, wavelength=wavelength, fwhm=fwhm, nodata=nodata, scale=1.0 / factor, crs=crs,
        transform=transform, name=name or data_file.stem, source=[str(hdr), str(data_file)],
    )
