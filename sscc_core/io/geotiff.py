"""GeoTIFF (EnMAP-style, or any multi-band raster GDAL reads) -> canonical cube.

Read lazily with rioxarray. Georeferencing and nodata come from the file. Wavelengths are taken,
first match wins, from the per-band GDAL ``IMAGERY`` metadata (``CENTRAL_WAVELENGTH_UM`` /
``FWHM_UM``, GDAL >= 3.10), per-band tags ``wavelength`` / ``fwhm`` (with an optional
``wavelength_units``), a dataset tag ``wavelength`` holding a comma-separated list, or band
descriptions containing a number followed by ``nm`` / ``um``. A uniform band scale is the
reflectance scale.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import rasterio
import rioxarray
import xarray as xr

from sscc_core.io.cube import make_cube, to_nm

_DESCRIPTION_WAVELENGTH = re.compile(
    r"([0-9]+(?:\.[0-9]+)?)\s*(nm|um|µm|micrometers?|nanometers?)", re.I
)


def _per_band(
    src: rasterio.DatasetReader, key: str, domain: str | None = None
) -> list[float] | None:
    """Float tag ``key`` of every band (case-insensitive), or ``None`` unless all bands have it."""
    values = []
    for bidx in src.indexes:
        tags = {k.lower(): v for k, v in src.tags(bidx, ns=domain).items()}
        if key.lower() not in tags:
            return None
        values.append(float(tags[key.lower()]))
    return values


def band_wavelengths(src: rasterio.DatasetReader) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(wavelength, fwhm)`` in nm from the file's metadata (see module docstring), or None."""
    centres = _per_band(src, "CENTRAL_WAVELENGTH_UM", "IMAGERY")
    if centres is not None:
        widths = _per_band(src, "FWHM_UM", "IMAGERY")
        return to_nm(centres, "um"), to_nm(widths, "um") if widths else None
    units = {k.lower(): v for k, v in src.tags(1).items()}.get("wavelength_units", "")
    centres = _per_band(src, "wavelength")
    if centres is not None:
        widths = _per_band(src, "fwhm")
        return to_nm(centres, units), to_nm(widths, units) if widths else None
    tags = {k.lower(): v for k, v in src.tags().items()}
    if "wavelength" in tags:
        items = [float(v) for v in tags["wavelength"].strip("{}").split(",") if v.strip()]
        if len(items) == src.count:
            return to_nm(items, tags.get("wavelength_units", "")), None
    matches = [_DESCRIPTION_WAVELENGTH.search(d or "") for d in src.descriptions]
    if all(matches):
        return np.array([to_nm([float(m.group(1))], m.group(2))[0] for m in matches]), None
    return None, None


def tiff_data_end(src: rasterio.DatasetReader) -> int | None:
    """Byte just past the last image block of a TIFF (GDAL ``TIFF`` metadata), or ``None``.

    ``None`` when the driver does not report block offsets (not a TIFF).
    """
    block_h, block_w = src.block_shapes[0]
    bands = src.indexes if src.interleaving == rasterio.enums.Interleaving.band else (1,)
    end = None
    for bidx in bands:
        for row in range(-(-src.height // block_h)):
            for col in range(-(-src.width // block_w)):
                offset = src.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=bidx)
                size = src.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=bidx)
                if offset is None or size is None:
                    return None
                end = max(end or 0, int(offset) + int(size))
    return end


def read_geotiff(path: str | Path, *, name: str | None = None) -> xr.Dataset:
    """Read a multi-band GeoTIFF into the canonical cube (dask-backed).

    Args:
        path: ``.tif`` / ``.tiff`` file.
        name: Scene name (default: file stem).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: Unreadable raster, a file shorter than its image blocks, or band
            scales/offsets that are not uniform.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    try:
        with rasterio.open(p) as src:
            wavelength, fwhm = band_wavelengths(src)
            scales, offsets = set(src.scales), set(src.offsets)
            nodata, crs, transform = src.nodata, src.crs, src.transform
            dtype = np.dtype(src.dtypes[0])
            end = tiff_data_end(src)
    except rasterio.errors.RasterioIOError as exc:
        raise ValueError(f"{p}: not a readable raster ({exc})") from exc
    if end is not None and end > p.stat().st_size:
        raise ValueError(
            f"{p}: truncated: the file holds {p.stat().st_size} bytes, its image blocks end at "
            f"byte {end}"
        )
    if len(scales) != 1 or offsets != {0.0}:
        raise ValueError(f"{p}: per-band scales {scales} / offsets {offsets} are not supported")
    if nodata is not None and np.issubdtype(dtype, np.integer):
        nodata = int(nodata)
    raster = rioxarray.open_rasterio(p, chunks={"band": -1, "y": 256, "x": 256}, masked=False,
                                     mask_and_scale=False, lock=False)
    return make_cube(
        raster.data, wavelength=wavelength, fwhm=fwhm, nodata=nodata, scale=scales.pop(),
        crs=crs, transform=transform if crs is not None or not transform.is_identity else None,
        name=name or p.stem, source=str(p),
    )
