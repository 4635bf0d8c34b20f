"""The output label store of a labelling run: a Zarr v3 store on the input's grid, plus a
per-tile completion record so that a rerun after a crash labels only the tiles still missing.

Layout of ``LABELS.zarr``:

- ``labels`` (y, x) uint8/uint16 (:func:`label_dtype`): cluster ids
  ``0..K-1``, fill value and attr ``nodata`` = the dtype's max where no label was produced.
  Chunked exactly by the tile size, so every tile is one whole chunk and concurrent tile writers
  never share a chunk.
- ``confidence`` (y, x) float32, optional: max softmax probability, 0 at nodata; same chunks.
- coords ``y``, ``x`` and (when the input is georeferenced) ``spatial_ref``, copied from the
  input cube, so the labels lie on the input's grid.
- group attrs: ``format``, ``model_version``, ``config``, ``input_store``, ``input_identity``
  (:func:`sscc_core.io.store.cube_identity` of the input the labels were last completed from),
  ``created``, ``sscc_version``, ``n_clusters``, ``nodata``, ``tile_size``, ``confidence`` and
  ``complete``.
- ``_sscc_tiles/records`` (tile_row, tile_col, 32) uint8: one fixed-size record per tile of the
  grid (:data:`RECORD`: ``status`` 1 when done, ``n_valid``, ``seconds``, ``written`` (Unix
  seconds) and the 16-byte ``fingerprint`` of the input window the labels were computed from, see
  :func:`tile_fingerprint`), in one chunk that covers the whole tile grid (rounded up to powers of
  two, so a grown grid usually stays in it): planning a resume reads one object, however many
  tiles the store has. ``_sscc_tiles`` is a Zarr group, so xarray skips it.

Commit protocol (no rename needed, so it holds on object storage): a tile's chunk is written
first, then its record (one process, the labelling driver, writes records, in batches, so no
two writers share the records chunk), and ``complete`` last, only when every non-empty tile has a
record. A crash between a chunk and its record leaves the tile not done: the rerun labels it again
(deterministically, the same bytes). Stores of the earlier format ``sscc-labels/1`` (one
``_sscc_done/r{row}_c{col}.json`` marker file per tile) are migrated when opened: the markers
become records, then the marker folder is removed.

The store is created once (on the driver) before any tile is written; ``complete`` becomes true
only when every non-empty tile has a record. A store is bound to one model version: reopening it
for a different version raises, so a new model's labels always go to a new path. A store can grow
with its input (:meth:`LabelStore.grow`) when the input grid gained rows at the bottom or columns
on the right; the tiles whose input window changed are then found by their fingerprints.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr
from zarr.core.sync import sync

from sscc_core import __version__, storage
from sscc_core.io.store import atomic_store, consolidate
from sscc_core.io.tiling import Tile, nonempty_tiles, read_with_halo, tile_grid

FORMAT = "sscc-labels/2"
FORMAT_MARKERS = "sscc-labels/1"  # one marker file per tile; migrated on open
DONE_GROUP = "_sscc_done"  # the marker folder of FORMAT_MARKERS stores
RECORDS_GROUP = "_sscc_tiles"
RECORDS = f"{RECORDS_GROUP}/records"
_MARKER = re.compile(r"^r(\d+)_c(\d+)\.json$")
RECORD = np.dtype([("status", "u1"), ("_pad", "V3"), ("n_valid", "<u4"), ("seconds", "<f4"),
                   ("written", "<u4"), ("fingerprint", "V16")])
"""One tile's completion record, stored as ``RECORD.itemsize`` (32) bytes."""
DONE = 1


@dataclass(frozen=True)
class TileRecord:
    """What the store records when a tile's chunk has been written.

    Attributes:
        row: Tile row.
        col: Tile column.
        seconds: Time spent labelling it.
        n_valid: Labelled (non-nodata) pixels in its chunk.
        fingerprint: :func:`tile_fingerprint` of its input window (32 hex digits; "" when
            unknown: a fingerprint-checking rerun then relabels the tile).
        written: When the chunk was written (Unix seconds; default: now).
    """

    row: int
    col: int
    seconds: float
    n_valid: int
    fingerprint: str = ""
    written: float | None = None


class LabelStoreError(ValueError):
    """A label store is missing, foreign, incomplete, or incompatible with the requested run."""


@dataclass(frozen=True)
class LabelStoreSpec:
    """What a labelling run writes; fixed when the store is created.

    Attributes:
        model_version: :attr:`sscc_core.model.checkpoint.Checkpoint.model_version` of the model.
        n_clusters: K; the label dtype and nodata value follow from it.
        tile_size: Tile side in pixels; also the chunk side of every array.
        confidence: Whether a ``confidence`` array is written beside ``labels``.
        config: The run's configuration as a plain dict (:func:`sscc_core.config.to_dict`).
        input_store: Path of the input cube store.
        input_identity: :func:`sscc_core.io.store.cube_identity` of that store.
    """

    model_version: str
    n_clusters: int
    tile_size: int
    confidence: bool = False
    config: dict[str, Any] | None = None
    input_store: str = ""
    input_identity: str = ""


def label_dtype(n_clusters: int) -> tuple[np.dtype, int]:
    """Smallest unsigned label dtype for K clusters and its nodata value (the dtype's max).

    Raises:
        ValueError: K does not fit a uint16 label map.
    """
    if n_clusters < 255:
        return np.dtype(np.uint8), 255
    if n_clusters < 65535:
        return np.dtype(np.uint16), 65535
    raise ValueError(f"n_clusters={n_clusters} does not fit a uint16 label map")


def encode_labels(labels: np.ndarray, n_clusters: int) -> np.ndarray:
    """Cluster ids with ``-1`` at nodata -> the store's unsigned dtype with its nodata value.

    Args:
        labels: (h, w) int cluster ids in ``0..K-1``, ``-1`` where no label was produced.
        n_clusters: K.

    Returns:
        (h, w) uint8/uint16 array.

    Raises:
        ValueError: A label outside ``-1..K-1``.
    """
    dtype, nodata = label_dtype(n_clusters)
    labels = np.asarray(labels)
    if labels.size and (labels.min() < -1 or labels.max() >= n_clusters):
        raise ValueError(f"labels outside -1..{n_clusters - 1}: [{labels.min()}, {labels.max()}]")
    return np.where(labels < 0, nodata, labels).astype(dtype)


def tile_fingerprint(cube: Any, valid: Any, tile: Tile, halo: int) -> str:
    """Content fingerprint of everything a tile's labels depend on: its bounds, the halo, and
    the input reflectance and valid mask read with that halo (reflect-padded at the scene edge).

    Two tiles with the same fingerprint get the same labels from the same model, so a rerun can
    skip them; a change anywhere in the window, including a neighbour's pixels inside the halo or
    a grid that grew past the tile's old edge, changes the fingerprint.

    Args:
        cube: (B, H, W) array-like (numpy or zarr).
        valid: (H, W) bool array-like.
        tile: The tile.
        halo: Pixels of context on each side (the model's ``patch_size // 2``).

    Returns:
        32 hex digits (BLAKE2b-128).
    """
    block = np.ascontiguousarray(read_with_halo(cube, tile, halo))
    mask = np.ascontiguousarray(read_with_halo(valid, tile, halo).astype(bool))
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([tile.y0, tile.y1, tile.x0, tile.x1, halo, str(block.dtype),
                         list(block.shape)]).encode())
    h.update(block)  # the array's bytes, C order (contiguous), without a copy
    h.update(mask)
    return h.hexdigest()


def _grid_coords(cube: xr.Dataset) -> dict[str, xr.Variable]:
    """The ``y``/``x`` (and ``spatial_ref``) coordinate variables of a cube, encodings dropped."""
    names = ["y", "x"] + (["spatial_ref"] if "spatial_ref" in cube.coords else [])
    coords = {}
    for name in names:
        var = cube[name].variable.copy(deep=True)
        var.encoding = {}
        coords[name] = var
    return coords


def create_label_store(path: str | Path, cube: xr.Dataset, spec: LabelStoreSpec) -> "LabelStore":
    """Create an empty label store on the grid of ``cube`` (atomically: temp dir, then rename).

    Args:
        path: Target store directory; must not exist.
        cube: Input cube (from :func:`sscc_core.io.store.open_cube`); only its coords are read.
        spec: What the run writes.

    Returns:
        The opened store.

    Raises:
        FileExistsError: ``path`` exists.
        LabelStoreError: The store cannot be written there (the message names the OS error).
        ValueError: Non-positive tile size or K out of range.
    """
    if spec.tile_size < 1:
        raise ValueError(f"tile_size must be >= 1, got {spec.tile_size}")
    dtype, nodata = label_dtype(spec.n_clusters)
    height, width = int(cube.sizes["y"]), int(cube.sizes["x"])
    coords = _grid_coords(cube)
    attrs = {
        "format": FORMAT,
        "model_version": spec.model_version,
        "config": spec.config or {},
        "input_store": str(spec.input_store),
        "input_identity": spec.input_identity,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sscc_version": __version__,
        "n_clusters": spec.n_clusters,
        "nodata": nodata,
        "tile_size": spec.tile_size,
        "confidence": spec.confidence,
        "complete": False,
    }
    var_attrs = {"grid_mapping": "spatial_ref"} if "spatial_ref" in coords else {}
    chunks = (spec.tile_size, spec.tile_size)
    try:
        with atomic_store(path) as tmp:
            xr.Dataset(coords=coords, attrs=attrs).to_zarr(
                tmp, mode="w-", zarr_format=3, consolidated=False
            )
            group = zarr.open_group(tmp, mode="r+", zarr_format=3)
            group.create_array(
                "labels", shape=(height, width), chunks=chunks, dtype=dtype, fill_value=nodata,
                dimension_names=("y", "x"),
                attributes={"nodata": nodata, "n_clusters": spec.n_clusters,
                            "long_name": "cluster label", **var_attrs},
            )
            if spec.confidence:
                group.create_array(
                    "confidence", shape=(height, width), chunks=chunks, dtype=np.float32,
                    fill_value=0.0, dimension_names=("y", "x"),
                    attributes={"long_name": "max cluster probability", **var_attrs},
                )
            _create_records(group, height, width, spec.tile_size)
            consolidate(tmp)
    except OSError as exc:
        if exc.errno is None:  # atomic_store's own refusal of an existing target
            raise
        # an unwritable or missing parent, a file where a directory should be, a full disk
        raise LabelStoreError(f"{path}: cannot create the label store ({exc.strerror}: "
                              f"{exc.filename or path})") from exc
    return LabelStore(path)


def _records_chunks(tile_rows: int, tile_cols: int) -> tuple[int, int, int]:
    """Chunk shape of the records array: the tile grid rounded up to powers of two (one chunk)."""
    return (1 << max(tile_rows - 1, 0).bit_length(), 1 << max(tile_cols - 1, 0).bit_length(),
            RECORD.itemsize)


def _create_records(group: zarr.Group, height: int, width: int, tile_size: int) -> zarr.Array:
    """Create the all-zero (nothing done) records array of a ``height x width`` grid."""
    rows, cols = -(-height // tile_size), -(-width // tile_size)
    sub = group.create_group(RECORDS_GROUP, attributes={
        "description": "one 32-byte completion record per tile (sscc_core.labelling.labelstore.RECORD)",
        "fields": [[name, RECORD[name].str] for name in RECORD.names]})
    return sub.create_array("records", shape=(rows, cols, RECORD.itemsize),
                            chunks=_records_chunks(rows, cols), dtype=np.uint8, fill_value=0,
                            dimension_names=("tile_row", "tile_col", "record_byte"))


def _record_dict(row: int, col: int, rec: np.void) -> dict[str, Any]:
    """A stored record as a plain dict (``row``, ``col``, ``seconds``, ``n_valid``,
    ``fingerprint``, ``written``)."""
    fingerprint = bytes(rec["fingerprint"])
    return {"row": row, "col": col, "seconds": float(rec["seconds"]),
            "n_valid": int(rec["n_valid"]),
            "fingerprint": fingerprint.hex() if any(fingerprint) else "",
            "written": datetime.fromtimestamp(int(rec["written"]), timezone.utc)
            .isoformat(timespec="seconds")}


def prepare_label_store(
    path: str | Path, cube: xr.Dataset, spec: LabelStoreSpec, relabel: bool = False
) -> "LabelStore":
    """Open the label store at ``path`` for ``spec``, creating it when it does not exist.

    Reopening (to resume or to label tiles added since) requires the same model version, the
    same grid, tile size and confidence setting, and, once it holds labelled tiles, the same
    input (``input_identity``; stores written before identities were recorded are not checked)
    unless ``relabel``: then the store is marked incomplete and the
    caller rechecks every tile's fingerprint; :meth:`LabelStore.mark_complete` records the new
    input once all are done.

    Raises:
        LabelStoreError: The existing store was made by another model version, differs in
            grid, tile size or confidence, or (without ``relabel``) was made from another input.
    """
    if not (storage.is_dir(path) if storage.is_url(path) else Path(path).exists()):
        return create_label_store(path, cube, spec)
    store = open_label_store(path, model_version=spec.model_version)
    problems = []
    if (store.height, store.width) != (int(cube.sizes["y"]), int(cube.sizes["x"])):
        problems.append(f"grid {store.height} x {store.width} != input "
                        f"{cube.sizes['y']} x {cube.sizes['x']}")
    else:
        ds = store.dataset()
        if not (np.array_equal(ds["y"].values, cube["y"].values)
                and np.array_equal(ds["x"].values, cube["x"].values)):
            problems.append("y/x coordinates differ from the input's")
    if store.tile_size != spec.tile_size:
        problems.append(f"tile_size {store.tile_size} != requested {spec.tile_size}")
    if store.has_confidence != spec.confidence:
        problems.append(f"confidence {store.has_confidence} != requested {spec.confidence}")
    if problems:
        raise LabelStoreError(f"{path}: existing label store does not match this run: "
                              + "; ".join(problems) + " (write to a new path)")
    recorded = store.attrs.get("input_identity")
    if recorded and recorded != spec.input_identity and store.done_tiles():
        if not relabel:
            raise LabelStoreError(
                f"{path}: holds labels of input {store.attrs.get('input_store')} (identity "
                f"{recorded}), not of {spec.input_store} "
                f"(identity {spec.input_identity}); relabel its changed tiles with --recheck, or "
                "write to a new path"
            )
        store.mark_incomplete()
    return store


def open_label_store(path: str | Path, model_version: str | None = None) -> "LabelStore":
    """Open an existing label store, optionally checking the model version that made it.

    Raises:
        FileNotFoundError: No store at ``path``.
        LabelStoreError: Not a label store, or made by a different model version.
    """
    store = LabelStore(path)
    if model_version is not None and store.model_version != model_version:
        raise LabelStoreError(
            f"{path}: holds labels of model version {store.model_version}, not {model_version}; "
            "refusing to overwrite another model's labels (write to a new path)"
        )
    return store


class LabelStore:
    """An opened label store (see the module docstring for the layout).

    Cheap to construct, so each Ray worker opens its own.

    Raises:
        FileNotFoundError: No Zarr store at ``path``.
        LabelStoreError: The store is not an SSCC label store.
    """

    def __init__(self, path: str | Path) -> None:
        self.path: str | Path = str(path) if storage.is_url(path) else Path(path)
        if not storage.exists(storage.join(self.path, "zarr.json")):
            raise FileNotFoundError(f"{self.path}: no label store here")
        self.group = zarr.open_group(str(self.path), mode="r+", zarr_format=3,
                                     use_consolidated=False)
        self._arrays: dict[str, zarr.Array] = {}
        if self.group.attrs.get("format") == FORMAT_MARKERS and not storage.is_url(self.path):
            self._migrate_markers()
        if self.group.attrs.get("format") != FORMAT:
            raise LabelStoreError(f"{self.path}: not an SSCC label store (format "
                                  f"{self.group.attrs.get('format')!r}, expected {FORMAT!r})")
        if isinstance(self.path, Path) and self.path.joinpath(DONE_GROUP).is_dir():
            # a migration interrupted after its records
            shutil.rmtree(self.path / DONE_GROUP)
            consolidate(self.path)

    def _migrate_markers(self) -> None:
        """Turn an ``sscc-labels/1`` store's marker files into records (records first, then the
        new format, then the markers go), so an interrupted migration is redone or finished."""
        if RECORDS_GROUP in self.group:
            del self.group[RECORDS_GROUP]
        _create_records(self.group, self.height, self.width, self.tile_size)
        done = self.path / DONE_GROUP
        records = []
        for entry in os.listdir(done) if done.is_dir() else []:
            if _MARKER.match(entry):
                m = json.loads((done / entry).read_text())
                written = datetime.fromisoformat(m["written"]).timestamp() if m.get("written") \
                    else None
                records.append(TileRecord(int(m["row"]), int(m["col"]), float(m["seconds"]),
                                          int(m["n_valid"]), m.get("fingerprint", ""), written))
        self.record_tiles(records)
        self.group.attrs["format"] = FORMAT  # the caller removes the markers, then consolidates

    def array(self, name: str) -> zarr.Array:
        """The store's array ``name`` (opened once: each open reads its metadata object)."""
        if name not in self._arrays:
            self._arrays[name] = self.group[name]
        return self._arrays[name]

    @property
    def attrs(self) -> dict[str, Any]:
        """The group attributes (a fresh copy read from disk)."""
        return dict(zarr.open_group(str(self.path), mode="r", zarr_format=3).attrs)

    @property
    def model_version(self) -> str:
        """Version of the model that produced the labels."""
        return str(self.group.attrs["model_version"])

    @property
    def tile_size(self) -> int:
        """Tile (= chunk) side in pixels."""
        return int(self.group.attrs["tile_size"])

    @property
    def nodata(self) -> int:
        """Label value where no label was produced."""
        return int(self.group.attrs["nodata"])

    @property
    def n_clusters(self) -> int:
        """K."""
        return int(self.group.attrs["n_clusters"])

    @property
    def has_confidence(self) -> bool:
        """Whether the store holds a ``confidence`` array."""
        return "confidence" in self.group

    @property
    def height(self) -> int:
        """Rows of the grid."""
        return int(self.array("labels").shape[0])

    @property
    def width(self) -> int:
        """Columns of the grid."""
        return int(self.array("labels").shape[1])

    @property
    def complete(self) -> bool:
        """Whether every non-empty tile was labelled (set by :meth:`mark_complete`)."""
        return bool(self.attrs.get("complete", False))

    def tiles(self) -> list[Tile]:
        """The store's tile grid (one tile per chunk), row-major."""
        return tile_grid(self.height, self.width, self.tile_size)

    # ---- writing -----------------------------------------------------------------------------

    def write_region(
        self, y0: int, x0: int, labels: np.ndarray, confidence: np.ndarray | None = None
    ) -> None:
        """Write a chunk-aligned (y, x) region.

        Args:
            y0: First row, a multiple of the tile size.
            x0: First column, a multiple of the tile size.
            labels: (h, w) encoded labels (:func:`encode_labels`); the region must end on a
                chunk boundary or at the grid edge.
            confidence: (h, w) float32; required exactly when the store has ``confidence``.

        Raises:
            ValueError: The region is not chunk-aligned, leaves the grid, has the wrong dtype,
                or the confidence array is missing/unexpected/misshaped.
        """
        arr = self.array("labels")
        labels = np.asarray(labels)
        h, w = labels.shape
        y1, x1 = y0 + h, x0 + w
        ts = self.tile_size
        aligned = (
            y0 % ts == 0 and x0 % ts == 0
            and (y1 % ts == 0 or y1 == self.height) and (x1 % ts == 0 or x1 == self.width)
        )
        if not (0 <= y0 < y1 <= self.height and 0 <= x0 < x1 <= self.width):
            raise ValueError(f"{self.path}: region rows {y0}:{y1}, cols {x0}:{x1} leaves the "
                             f"{self.height} x {self.width} grid")
        if not aligned:
            raise ValueError(f"{self.path}: region rows {y0}:{y1}, cols {x0}:{x1} is not aligned "
                             f"to the {ts} x {ts} chunks (concurrent misaligned writes lose data)")
        if labels.dtype != arr.dtype:
            raise ValueError(f"{self.path}: labels dtype {labels.dtype} != store dtype {arr.dtype}")
        if (confidence is not None) != self.has_confidence:
            given = "given" if confidence is not None else "missing"
            has = "has" if self.has_confidence else "has no"
            raise ValueError(f"{self.path}: confidence {given} but the store {has} confidence array")
        arr[y0:y1, x0:x1] = labels
        if confidence is not None:
            confidence = np.asarray(confidence, dtype=np.float32)
            if confidence.shape != labels.shape:
                raise ValueError(f"confidence shape {confidence.shape} != labels {labels.shape}")
            self.array("confidence")[y0:y1, x0:x1] = confidence

    def record_tiles(self, records: list[TileRecord]) -> None:
        """Record tiles as done (after their chunks were written), in one write of the records.

        Only one process may record tiles at a time (the records of all tiles share one chunk).

        Raises:
            ValueError: A record outside the tile grid or a malformed fingerprint.
        """
        if not records:
            return
        arr = self.array(RECORDS)
        rows = np.array([r.row for r in records])
        cols = np.array([r.col for r in records])
        if rows.min() < 0 or cols.min() < 0 or rows.max() >= arr.shape[0] \
                or cols.max() >= arr.shape[1]:
            raise ValueError(f"{self.path}: tile records outside the {arr.shape[0]} x "
                             f"{arr.shape[1]} tile grid")
        now = time.time()
        packed = np.zeros(len(records), RECORD)
        packed["status"] = DONE
        packed["n_valid"] = [r.n_valid for r in records]
        packed["seconds"] = [r.seconds for r in records]
        packed["written"] = [int(now if r.written is None else r.written) for r in records]
        packed["fingerprint"] = [bytes.fromhex(r.fingerprint) if r.fingerprint else bytes(16)
                                 for r in records]
        block = np.asarray(arr[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1])
        block.view(RECORD)[rows - rows.min(), cols - cols.min(), 0] = packed
        arr[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = block

    def _unrecord(self, keys: Any) -> None:
        """Reset the records of tiles ``(row, col)`` to not done."""
        keys = list(keys)
        if not keys:
            return
        arr = self.array(RECORDS)
        block = np.asarray(arr[:])
        for row, col in keys:
            if row < block.shape[0] and col < block.shape[1]:
                block[row, col] = 0
        arr[:] = block

    def write_chunk(self, tile: Tile, labels: np.ndarray, confidence: np.ndarray | None) -> int:
        """Write a tile's labels (and confidence) chunk without recording it (the caller records
        it afterwards with :meth:`record_tiles`).

        Args:
            tile: A tile of :meth:`tiles` (one whole chunk).
            labels: (h, w) int cluster ids, ``-1`` at nodata.
            confidence: (h, w) float32 or ``None`` (see :meth:`write_region`).

        Returns:
            Number of labelled (non-nodata) pixels.

        Raises:
            LabelStoreError: The write failed (disk full, unwritable path).
        """
        try:
            self.write_region(tile.y0, tile.x0, encode_labels(labels, self.n_clusters), confidence)
        except OSError as exc:
            raise LabelStoreError(f"{self.path}: writing tile r{tile.row}_c{tile.col} (rows "
                                  f"{tile.y0}:{tile.y1}, cols {tile.x0}:{tile.x1}) failed: "
                                  f"{exc.strerror or exc} ({exc.filename or self.path})") from exc
        return int((np.asarray(labels) >= 0).sum())

    def write_tile(
        self, tile: Tile, labels: np.ndarray, confidence: np.ndarray | None, seconds: float,
        fingerprint: str = "",
    ) -> int:
        """Write a tile's labels (and confidence), then its record.

        Args:
            tile: A tile of :meth:`tiles` (one whole chunk).
            labels: (h, w) int cluster ids, ``-1`` at nodata.
            confidence: (h, w) float32 or ``None`` (see :meth:`write_region`).
            seconds: Time spent labelling the tile, recorded.
            fingerprint: :func:`tile_fingerprint` of the input window, recorded.

        Returns:
            Number of labelled (non-nodata) pixels.

        Raises:
            LabelStoreError: The write failed (disk full, unwritable path); the tile gets no
                record, so the store cannot be marked complete.
        """
        n_valid = self.write_chunk(tile, labels, confidence)
        try:
            self.record_tiles([TileRecord(tile.row, tile.col, seconds, n_valid, fingerprint)])
        except OSError as exc:
            raise LabelStoreError(f"{self.path}: recording tile r{tile.row}_c{tile.col} failed: "
                                  f"{exc.strerror or exc} ({exc.filename or self.path})") from exc
        return n_valid

    def clear_tile(self, tile: Tile) -> None:
        """Reset a tile to nodata (and zero confidence) and drop its record (its input became
        empty); the record goes first, so an interrupted clear leaves the tile not done."""
        self._unrecord([(tile.row, tile.col)])
        shape = (tile.height, tile.width)
        self.write_region(tile.y0, tile.x0,
                          np.full(shape, self.nodata, self.array("labels").dtype),
                          np.zeros(shape, np.float32) if self.has_confidence else None)

    def grows_to(self, cube: xr.Dataset) -> bool:
        """Whether :meth:`grow` would extend the store to the grid of ``cube``; nothing changes.

        Args:
            cube: The input cube (only its ``y``/``x`` coords are read).

        Returns:
            ``True`` when the grid gained rows at the bottom and/or columns on the right (same
            origin and spacing), ``False`` when it is the store's grid.

        Raises:
            LabelStoreError: The new grid is smaller, or its origin or spacing differ, also at
                the same size (the old labels cannot be placed on it: write a new store).
        """
        height, width = int(cube.sizes["y"]), int(cube.sizes["x"])
        ds = self.dataset()
        old_y, old_x = ds["y"].values, ds["x"].values
        if height < self.height or width < self.width:
            raise LabelStoreError(f"{self.path}: input grid {height} x {width} is smaller than the "
                                  f"label grid {self.height} x {self.width}; write a new store")
        if not (np.array_equal(cube["y"].values[: self.height], old_y)
                and np.array_equal(cube["x"].values[: self.width], old_x)):
            raise LabelStoreError(f"{self.path}: input grid {height} x {width} does not extend the "
                                  f"label grid {self.height} x {self.width} at the bottom/right "
                                  "(origin or pixel spacing moved); write a new store")
        return (height, width) != (self.height, self.width)

    def grow(self, cube: xr.Dataset) -> bool:
        """Extend the store to the grid of ``cube`` when that grid gained rows at the bottom
        and/or columns on the right (same origin and spacing); labelled tiles are kept.

        New pixels read as nodata until labelled. The old edge tiles and their neighbours keep
        their records, but their input fingerprints no longer match (their windows changed), so
        a fingerprint-checking rerun relabels them. The store is marked incomplete.

        Args:
            cube: The input cube (only its ``y``/``x`` coords are read).

        Returns:
            Whether the grid changed.

        Raises:
            LabelStoreError: As :meth:`grows_to`.
        """
        if not self.grows_to(cube):
            return False
        height, width = int(cube.sizes["y"]), int(cube.sizes["x"])
        self.mark_incomplete()
        for name in ("labels", "confidence"):
            if name in self.group:
                self.group[name].resize((height, width))
        self.group[RECORDS].resize((-(-height // self.tile_size), -(-width // self.tile_size),
                                    RECORD.itemsize))
        for name in ("y", "x"):
            values = cube[name].values
            self.group[name].resize(values.shape)
            self.group[name][:] = values
        consolidate(self.path)
        self.group = zarr.open_group(str(self.path), mode="r+", zarr_format=3,
                                     use_consolidated=False)
        self._arrays = {}
        return True

    # ---- completion --------------------------------------------------------------------------

    def records(self) -> np.ndarray:
        """Every tile's record: a (tile rows, tile cols) array of :data:`RECORD` (one read)."""
        return np.ascontiguousarray(self.array(RECORDS)[:]).view(RECORD)[..., 0]

    def done_tiles(self) -> set[tuple[int, int]]:
        """``(row, col)`` of every tile with a completion record."""
        rows, cols = np.nonzero(self.records()["status"] == DONE)
        return set(zip(rows.tolist(), cols.tolist()))

    def tile_record(self, tile: Tile) -> dict[str, Any] | None:
        """The record of one tile (see :meth:`tile_records`), or ``None`` when it is not done."""
        records = self.records()
        if tile.row >= records.shape[0] or tile.col >= records.shape[1]:
            return None
        rec = records[tile.row, tile.col]
        return _record_dict(tile.row, tile.col, rec) if rec["status"] == DONE else None

    def tile_records(self) -> list[dict[str, Any]]:
        """The records (``row``, ``col``, ``seconds``, ``n_valid``, ``fingerprint``,
        ``written``) of done tiles, row-major."""
        records = self.records()
        rows, cols = np.nonzero(records["status"] == DONE)
        return [_record_dict(int(r), int(c), records[r, c]) for r, c in zip(rows, cols)]

    def missing_tiles(self, valid: Any) -> list[Tile]:
        """Non-empty tiles of the grid without a record.

        Args:
            valid: (H, W) bool array-like of the input cube (read tile by tile).
        """
        if tuple(valid.shape) != (self.height, self.width):
            raise ValueError(f"valid mask {tuple(valid.shape)} does not match the "
                             f"{self.height} x {self.width} label grid")
        done = self.done_tiles()
        return [t for t in nonempty_tiles(valid, self.tiles()) if (t.row, t.col) not in done]

    def mark_complete(self, valid: Any, spec: LabelStoreSpec | None = None) -> None:
        """Set ``complete: true``, after checking that every non-empty tile has a record.

        Args:
            valid: (H, W) bool array-like of the input cube.
            spec: The run that labelled (or rechecked) every tile: its ``input_store`` and
                ``input_identity`` are recorded with the completion.

        Raises:
            LabelStoreError: Some non-empty tile is not done (the message counts them).
        """
        missing = self.missing_tiles(valid)
        if missing:
            first = ", ".join(f"r{t.row}_c{t.col}" for t in missing[:5])
            raise LabelStoreError(f"{self.path}: {len(missing)} non-empty tiles are not labelled "
                                  f"yet ({first}{', ...' if len(missing) > 5 else ''})")
        inputs = {} if spec is None else {"input_store": str(spec.input_store),
                                          "input_identity": spec.input_identity}
        self.group.attrs.update({**inputs, "complete": True})
        consolidate(self.path)  # the root's rewrite dropped the consolidated metadata

    def mark_incomplete(self) -> None:
        """Set ``complete: false`` (before labelling tiles added to a completed store)."""
        self.group.attrs["complete"] = False
        consolidate(self.path)

    def require_complete(self) -> None:
        """Raise unless the store is marked complete.

        Raises:
            LabelStoreError: The labelling run has not finished.
        """
        if not self.complete:
            raise LabelStoreError(
                f"{self.path}: label store is incomplete ({len(self.done_tiles())} tiles done); "
                "rerun `sscc predict` with the same arguments to finish it"
            )

    # ---- verification ------------------------------------------------------------------------

    def damaged_tiles(self) -> dict[tuple[int, int], str]:
        """Done tiles whose chunks do not hold what their records say.

        A tile's chunk of every array must exist (a record with ``n_valid > 0`` means a chunk
        was written: labels of valid pixels never equal the fill value), decode, and hold
        exactly ``n_valid`` labelled pixels. Reads the whole store (a byte or two per pixel).

        Returns:
            ``{(row, col): problem}``, each problem one line naming the tile and the chunk.
        """
        tiles = {(t.row, t.col): t for t in self.tiles()}
        names = ["labels"] + (["confidence"] if self.has_confidence else [])
        damaged: dict[tuple[int, int], str] = {}
        for record in self.tile_records():
            key = (record["row"], record["col"])
            tile = tiles.get(key)
            if tile is None:
                damaged[key] = f"tile r{key[0]}_c{key[1]}: record outside the {self.height} x " \
                               f"{self.width} grid"
                continue
            for name in names if record["n_valid"] > 0 else []:
                problem = self._chunk_problem(name, tile, record["n_valid"])
                if problem:
                    damaged[key] = f"tile r{tile.row}_c{tile.col}: {problem}"
                    break
        return damaged

    def _chunk_problem(self, name: str, tile: Tile, n_valid: int) -> str | None:
        """What is wrong with array ``name``'s chunk of a done tile, or ``None``."""
        arr = self.array(name)
        chunk = f"{name}/{arr.metadata.encode_chunk_key((tile.row, tile.col))}"
        if not sync(self.group.store.exists(chunk)):
            return f"chunk {chunk} is missing"
        try:
            block = np.asarray(arr[tile.y0 : tile.y1, tile.x0 : tile.x1])
        except Exception as exc:  # codecs raise many types for corrupt bytes
            return f"chunk {chunk} is unreadable ({type(exc).__name__}: {exc})"
        if name == "labels" and int((block != self.nodata).sum()) != n_valid:
            return (f"chunk {chunk} holds {int((block != self.nodata).sum())} labelled pixels, "
                    f"its record says {n_valid}")
        return None

    def forget_tiles(self, keys: Any) -> None:
        """Drop the records of tiles ``(row, col)`` and mark the store incomplete, so that a
        rerun of ``sscc predict`` labels them again."""
        self.mark_incomplete()
        self._unrecord(keys)

    def require_intact(self) -> None:
        """Raise unless every done tile's chunks hold what its record says.

        A damaged store is marked incomplete and the damaged tiles lose their records, so
        ``sscc predict`` with the same arguments relabels exactly them.

        Raises:
            LabelStoreError: Names the count of damaged tiles and the first problem.
        """
        damaged = self.damaged_tiles()
        if damaged:
            n_done = len(self.done_tiles())
            self.forget_tiles(damaged)
            raise LabelStoreError(
                f"{self.path}: {len(damaged)} of {n_done} labelled tiles are damaged, first "
                f"{damaged[min(damaged)]}; the store is marked incomplete: rerun `sscc predict` "
                "with the same arguments to relabel them"
            )

    # ---- reading -----------------------------------------------------------------------------

    def dataset(self) -> xr.Dataset:
        """The store as a lazy xarray Dataset (raw label values, CRS decoded)."""
        return xr.open_zarr(str(self.path), consolidated=False, zarr_format=3,
                            decode_coords="all", mask_and_scale=False)

    def labels(self) -> xr.DataArray:
        """The ``labels`` map (lazy), with attrs ``nodata``/``n_clusters`` and the grid coords."""
        return self.dataset()["labels"]
