"""MATLAB ``.mat`` benchmark scenes -> canonical cube.

Two layouts occur in the public benchmark files:

- ``"hwb"``: a (H, W, B) array (Indian Pines, Salinas-A).
- ``"columns"``: a (B, H*W) matrix whose columns are pixels in MATLAB column-major order
  (pixel ``r + c * H`` is row r, column c), with ``nRow``/``nCol`` scalars (Samson, Jasper
  Ridge). ``V.reshape(B, W, H).transpose(0, 2, 1)`` gives (B, H, W).

Ground truth is either a label map (0 = unlabelled) or an abundance matrix (K, H*W) in the same
column order, turned into labels ``argmax + 1``. Label ids are remapped to 1..C in increasing
order of the source ids (Salinas-A {1, 10..14} -> 1..6); the source ids are kept in the
``labels`` attribute ``source_class_ids``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.io
import xarray as xr

from sscc_core.io.cube import make_cube

DATA_DIR = Path(__file__).resolve().parents[2] / "data"

# 1-based AVIRIS bands removed from the 220-band Indian Pines cube (water absorption) -> 200 bands.
INDIAN_PINES_REMOVED_BANDS = (*range(104, 109), *range(150, 164), 220)


@dataclass(frozen=True)
class Benchmark:
    """One benchmark scene shipped in ``data/``.

    Attributes:
        cube_file: Path of the cube ``.mat`` relative to the data directory.
        cube_var: Variable holding the cube.
        layout: ``"hwb"`` or ``"columns"`` (see module docstring).
        gt_file: Ground-truth ``.mat`` relative to the data directory.
        gt_var: Variable holding the ground truth.
        gt_kind: ``"labels"`` (H, W) map or ``"abundance"`` (K, H*W) matrix.
        spc_file: Optional AVIRIS ``.spc`` band table for the wavelengths.
        removed_bands: 1-based rows of the band table absent from the cube.
    """

    cube_file: str
    cube_var: str
    layout: Literal["hwb", "columns"]
    gt_file: str
    gt_var: str
    gt_kind: Literal["labels", "abundance"]
    spc_file: str | None = None
    removed_bands: tuple[int, ...] = ()


BENCHMARKS: dict[str, Benchmark] = {
    "indian_pines": Benchmark(
        "indian_pines/IP_200_M.mat", "data_M", "hwb",
        "indian_pines/Indian_pines_gt.mat", "indian_pines_gt", "labels",
        spc_file="indian_pines/92AV3C.spc", removed_bands=INDIAN_PINES_REMOVED_BANDS,
    ),
    "salinasA": Benchmark(
        "salinasA/SalinasA_corrected.mat", "salinasA_corrected", "hwb",
        "salinasA/SalinasA_gt.mat", "salinasA_gt", "labels",
    ),
    "samson": Benchmark(
        "samson/samson_1.mat", "V", "columns", "samson/end3.mat", "A", "abundance",
    ),
    "jasper_ridge": Benchmark(
        "jasper_ridge/jasperRidge2_R198.mat", "Y", "columns", "jasper_ridge/end4.mat", "A",
        "abundance",
    ),
}


def load_mat(path: str | Path) -> dict[str, np.ndarray]:
    """Variables of a MATLAB v4-v7.2 file (names starting with ``__`` dropped).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: Not a readable MATLAB file (v7.3 files are HDF5: convert them first).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    try:
        raw = scipy.io.loadmat(p)
    except NotImplementedError as exc:
        raise ValueError(f"{p}: MATLAB v7.3 (HDF5) files are not supported ({exc})") from exc
    except ValueError as exc:
        raise ValueError(f"{p}: not a readable MATLAB file ({exc})") from exc
    return {k: v for k, v in raw.items() if not k.startswith("__")}


def pick_variable(variables: dict[str, np.ndarray], var: str | None, path: Path, ndim: set[int],
                  what: str = "the cube") -> str:
    """Name of the requested variable, or of the only numeric one of rank in ``ndim``.

    Args:
        variables: The file's variables (:func:`load_mat`).
        var: The requested name, or ``None`` to pick the only candidate.
        path: The file, for messages.
        ndim: The ranks a candidate may have.
        what: What the variable holds, for messages ("the cube", "the class map").

    Raises:
        ValueError: ``var`` is not in the file, or not exactly one variable is a candidate.
    """
    if var is not None:
        if var not in variables:
            raise ValueError(f"{path}: no variable {var!r} (has {sorted(variables)})")
        return var
    candidates = [
        k for k, v in variables.items()
        if isinstance(v, np.ndarray) and v.ndim in ndim and np.issubdtype(v.dtype, np.number)
        and min(v.shape) > 1
    ]
    if len(candidates) != 1:
        raise ValueError(
            f"{path}: cannot tell which variable is {what} (candidates {candidates}); name it"
        )
    return candidates[0]


def _scalar(variables: dict[str, np.ndarray], key: str, path: Path) -> int:
    if key not in variables:
        raise ValueError(f"{path}: column layout needs scalar {key!r}")
    return int(np.asarray(variables[key]).ravel()[0])


def columns_to_cube(matrix: np.ndarray, height: int, width: int) -> np.ndarray:
    """(B, H*W) column-major pixel matrix -> (B, H, W)."""
    n_bands, n_pixels = matrix.shape
    if n_pixels != height * width:
        raise ValueError(f"{n_pixels} pixel columns do not make a {height}x{width} image")
    return np.ascontiguousarray(matrix.reshape(n_bands, width, height).transpose(0, 2, 1))


def compact_labels(labels: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Map the nonzero label ids to 1..C in increasing order; 0 stays unlabelled.

    Returns:
        ``(labels, source_ids)``: (H, W) int16 labels and the source id of each class 1..C.
    """
    ids = [int(v) for v in np.unique(labels) if v != 0]
    lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, dtype=np.int16)
    lut[ids] = np.arange(1, len(ids) + 1)
    return lut[labels.astype(np.int64)], ids


def read_spc(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """AVIRIS ``.spc`` band table: rows ``centre fwhm ... index`` after a 2-line header.

    Returns:
        ``(centres, fwhm)``: float64 arrays of shape (n_bands,), nm.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    rows = [ln.split() for ln in p.read_text().splitlines()[2:] if ln.strip()]
    table = np.array([[float(r[0]), float(r[1])] for r in rows])
    return table[:, 0], table[:, 1]


def _labels_from(gt: np.ndarray, kind: str, height: int, width: int, path: Path) -> np.ndarray:
    if kind == "abundance":
        return columns_to_cube(gt, height, width).argmax(axis=0) + 1
    if gt.shape != (height, width):
        raise ValueError(
            f"{path}: ground truth {gt.shape} does not match the cube {height}x{width}"
        )
    return gt


def read_mat(
    path: str | Path,
    var: str | None = None,
    *,
    layout: Literal["hwb", "columns"] = "hwb",
    gt_path: str | Path | None = None,
    gt_var: str | None = None,
    gt_kind: Literal["labels", "abundance"] = "labels",
    wavelength: np.ndarray | None = None,
    fwhm: np.ndarray | None = None,
    name: str | None = None,
) -> xr.Dataset:
    """Read a ``.mat`` hyperspectral cube (and optional ground truth) into the canonical cube.

    Args:
        path: Cube file.
        var: Cube variable; ``None`` picks the only 3-D (``"hwb"``) or 2-D (``"columns"``) one.
        layout: ``"hwb"`` (H, W, B) or ``"columns"`` (B, H*W) column-major with nRow/nCol.
        gt_path: Optional ground-truth file.
        gt_var: Ground-truth variable; ``None`` picks the only 2-D numeric one.
        gt_kind: ``"labels"`` map or ``"abundance"`` matrix (labels = argmax + 1).
        wavelength: (B,) band centres in nm, if known.
        fwhm: (B,) band widths in nm, if known.
        name: Scene name (default: file stem).

    Returns:
        Canonical cube; raw values in the file's dtype, scale 1.0, no nodata.
    """
    p = Path(path)
    variables = load_mat(p)
    key = pick_variable(variables, var, p, {3} if layout == "hwb" else {2})
    raw = variables[key]
    if layout == "hwb":
        if raw.ndim != 3:
            raise ValueError(f"{p}: {key!r} has shape {raw.shape}, expected (H, W, B)")
        data = np.ascontiguousarray(raw.transpose(2, 0, 1))
    else:
        height, width = _scalar(variables, "nRow", p), _scalar(variables, "nCol", p)
        data = columns_to_cube(raw, height, width)
    labels = ids = None
    if gt_path is not None:
        gp = Path(gt_path)
        gt_vars = load_mat(gp)
        gt = gt_vars[pick_variable(gt_vars, gt_var, gp, {2}, "the ground truth")]
        labels, ids = compact_labels(_labels_from(gt, gt_kind, *data.shape[1:], gp))
    sources = [str(p)] + ([str(gt_path)] if gt_path is not None else [])
    ds = make_cube(
        data, wavelength=wavelength, fwhm=fwhm, labels=labels, name=name or p.stem,
        source=sources,
    )
    if ids is not None:
        ds["labels"].attrs["source_class_ids"] = ids
    return ds


def read_benchmark(name: str, data_dir: str | Path | None = None) -> xr.Dataset:
    """Read a scene of :data:`BENCHMARKS` from ``data_dir`` (default: the repository's ``data/``).

    Indian Pines gets the 200 AVIRIS band centres/FWHM of ``92AV3C.spc`` minus
    :data:`INDIAN_PINES_REMOVED_BANDS`; the other scenes ship no band table (no wavelengths:
    the providers only state ranges, 401-889 nm for Samson and 380-2500 nm for Jasper Ridge).

    Raises:
        ValueError: Unknown benchmark name.
        FileNotFoundError: A file of the scene is missing.
    """
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose from {sorted(BENCHMARKS)}")
    b = BENCHMARKS[name]
    root = Path(data_dir) if data_dir is not None else DATA_DIR
    wavelength = fwhm = None
    if b.spc_file is not None:
        centres, widths = read_spc(root / b.spc_file)
        keep = np.setdiff1d(np.arange(centres.size), np.array(b.removed_bands, dtype=int) - 1)
        wavelength, fwhm = centres[keep], widths[keep]
    return read_mat(
        root / b.cube_file, b.cube_var, layout=b.layout, gt_path=root / b.gt_file,
        gt_var=b.gt_var, gt_kind=b.gt_kind, wavelength=wavelength, fwhm=fwhm, name=name,
    )
