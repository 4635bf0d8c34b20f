"""The Zarr v3 cube store: atomic writes, chunk layout, lazy opening.

Layout (docs/ARCHITECTURE.md): ``reflectance`` chunked (all bands, chunk, chunk), ``valid`` and
``labels`` chunked (chunk, chunk), optionally grouped into shards of (shard, shard) pixels. A store
is written into a temporary sibling directory and renamed into place only when complete, so a
failed write never leaves a half-written store at the target path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dask
import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor on opened cubes)
import xarray as xr

from sscc_core import storage

REQUIRED_VARS = ("reflectance", "valid")


def _check_layout(chunk: int, shard: int | None) -> None:
    """Reject chunk/shard sizes Zarr cannot honour."""
    if chunk < 1:
        raise ValueError(f"chunk: must be >= 1 pixel, got {chunk}")
    if shard is not None and (shard < chunk or shard % chunk):
        raise ValueError(f"shard: must be a multiple of chunk ({chunk}), got {shard}")


def encoding_for(ds: xr.Dataset, chunk: int, shard: int | None) -> dict[str, dict]:
    """Zarr encoding of the gridded variables of ``ds``.

    Args:
        ds: Canonical cube.
        chunk: Chunk side in pixels (y and x); all bands share one chunk.
        shard: Shard side in pixels (a multiple of ``chunk``), or ``None`` for no sharding.

    Returns:
        ``{var: {"chunks": ..., ["shards": ...], ["grid_mapping": ...]}}`` for every variable
        with dims ending (y, x).
    """
    _check_layout(chunk, shard)
    encoding: dict[str, dict] = {}
    for name, var in ds.data_vars.items():
        if var.dims[-2:] != ("y", "x"):
            continue
        lead = tuple(var.sizes[d] for d in var.dims[:-2])
        enc: dict = {"chunks": lead + (chunk, chunk)}
        if "grid_mapping" in var.encoding:  # an explicit encoding would otherwise drop it
            enc["grid_mapping"] = var.encoding["grid_mapping"]
        if shard is not None:
            enc["shards"] = lead + (shard, shard)
        encoding[str(name)] = enc
    return encoding


def _is_store(path: str | Path) -> bool:
    """Whether a Zarr store (its root ``zarr.json``) is at a local path or URL."""
    return storage.exists(storage.join(path, "zarr.json"))


def _check_target(path: Path, overwrite: bool, replaceable: Callable[[Path], bool],
                  what: str) -> None:
    """Refuse an existing target unless ``overwrite``; never replace something that is not
    ``what`` (``replaceable(path)`` is false)."""
    if not path.exists():
        return
    if not overwrite:
        raise FileExistsError(f"{path}: output already exists (pass overwrite=True / --overwrite)")
    if not replaceable(path):
        raise FileExistsError(f"{path}: exists and is not {what}; refusing to replace it")


def require_local(path: str | Path, why: str) -> None:
    """Refuse an object-storage URL where only a local (or shared-filesystem) path works.

    Raises:
        ValueError: ``path`` is a URL; the message says ``why`` a URL cannot be used there.
    """
    if storage.is_url(path):
        raise ValueError(f"{path}: object-storage URLs are not supported here yet ({why}); "
                         "write to a local path or a filesystem every Ray node mounts")


@contextlib.contextmanager
def atomic_store(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path to write a store into; rename it to ``path`` on success.

    On an exception the temporary directory is removed and ``path`` is left as it was.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false, or it is not a Zarr store.
    """
    with atomic_output(path, overwrite, _is_store, "a Zarr store") as tmp:
        yield tmp


@contextlib.contextmanager
def atomic_output(path: str | Path, overwrite: bool, replaceable: Callable[[Path], bool],
                  what: str) -> Iterator[Path]:
    """Yield a temporary sibling directory path; rename it to ``path`` when the block succeeds.

    An existing ``path`` is replaced only with ``overwrite`` and when ``replaceable(path)``
    (it holds output of the same kind, ``what``). On an exception the temporary directory is
    removed and ``path`` is left as it was. Temporaries of ``path`` that a killed earlier run left
    are removed first (:func:`sscc_core.storage.remove_stale_temporaries`).

    An object-storage URL cannot be renamed into: the output is written into a local temporary
    folder (under ``TMPDIR``) and uploaded when the block succeeds, its root ``zarr.json`` last
    (:func:`sscc_core.storage.upload_dir`), after an existing output is removed (``overwrite``).

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false, or it is not ``what``.
        ValueError: ``path`` is a URL whose storage cannot be used
            (:func:`sscc_core.storage.check_url`).
    """
    if storage.is_url(path):
        with _staged_upload(str(path), overwrite, replaceable, what) as tmp:
            yield tmp
        return
    target = Path(path)
    _check_target(target, overwrite, replaceable, what)
    target.parent.mkdir(parents=True, exist_ok=True)
    storage.remove_stale_temporaries(target)
    tmp = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        yield tmp
        _check_target(target, overwrite, replaceable, what)
        if target.exists():
            trash = target.with_name(f"{target.name}.tmp-old-{uuid.uuid4().hex[:12]}")
            target.rename(trash)
            tmp.rename(target)
            shutil.rmtree(trash)
        else:
            tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


@contextlib.contextmanager
def _staged_upload(url: str, overwrite: bool, replaceable: Callable[[str], bool],
                   what: str) -> Iterator[Path]:
    """:func:`atomic_output` for a URL: a local staging folder, uploaded on success."""
    storage.check_url(url)

    def check() -> None:
        if not storage.is_dir(url):
            return
        if not overwrite:
            raise FileExistsError(f"{url}: output already exists (pass overwrite=True / "
                                  "--overwrite)")
        if not replaceable(url):
            raise FileExistsError(f"{url}: exists and is not {what}; refusing to replace it")

    check()
    staging = Path(tempfile.mkdtemp(prefix="sscc-upload-"))
    try:
        tmp = staging / url.rstrip("/").rsplit("/", 1)[-1]
        yield tmp
        check()
        if storage.is_dir(url):
            storage.remove_tree(url)
        storage.upload_dir(tmp, url)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def _drained_threads() -> Iterator[None]:
    """Run dask computations on a private thread pool that is drained on exit.

    When one task of a write fails, dask raises at once while sibling tasks keep writing; without
    draining they would recreate chunk files after the temporary store has been removed.
    """
    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
    try:
        with dask.config.set(scheduler="threads", pool=pool):
            yield
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _clean_encoding(ds: xr.Dataset) -> xr.Dataset:
    """Copy of ``ds`` without encodings inherited from a previous store (keeps grid_mapping)."""
    ds = ds.copy()
    for var in ds.variables.values():
        var.encoding = {k: v for k, v in var.encoding.items() if k == "grid_mapping"}
    return ds


SOURCE_STAMP = "source_stamp"  # dataset attribute: what an ingested store was made from


def source_stamp(sources: str | list[str], chunk: int, shard: int | None) -> str:
    """What a store ingested from ``sources`` depends on, as the files are now: each source
    file's absolute path, size and modification time (ns), and the chunk layout (JSON).

    Raises:
        OSError: A source file is missing or unreadable.
    """
    files = []
    for source in [sources] if isinstance(sources, str) else sources:
        stat = Path(source).stat()
        files.append([str(Path(source).resolve()), stat.st_size, stat.st_mtime_ns])
    return json.dumps({"files": files, "chunk": chunk, "shard": shard})


def ingested_unchanged(path: str | Path, chunk: int, shard: int | None) -> bool:
    """Whether ``path`` holds a whole cube store (stores are renamed into place only when
    written) whose recorded :func:`source_stamp` equals its sources' stamp now."""
    import zarr

    if not _is_store(path):
        return False
    attrs = zarr.open_group(path, mode="r").attrs
    try:
        return attrs.get(SOURCE_STAMP) == source_stamp(attrs.get("source", []), chunk, shard)
    except OSError:
        return False


def write_cube(
    ds: xr.Dataset,
    path: str | Path,
    chunk: int = 256,
    shard: int | None = None,
    overwrite: bool = False,
) -> Path | str:
    """Write a canonical cube as a Zarr v3 store, atomically (to a URL: staged, then uploaded).

    Args:
        ds: Canonical cube (numpy-, memmap- or dask-backed).
        path: Target store directory.
        chunk: Chunk side in pixels (y and x); all bands in one chunk.
        shard: Optional shard side in pixels, a multiple of ``chunk``.
        overwrite: Replace an existing store at ``path``.

    Returns:
        The store path (the URL for object storage).

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
        ValueError: Invalid chunk/shard sizes, or object storage that cannot be used.
    """
    encoding = encoding_for(ds, chunk, shard)
    step = shard or chunk
    ds = _clean_encoding(ds).chunk({"band": -1, "y": step, "x": step})
    with atomic_store(path, overwrite) as tmp:
        with _drained_threads():
            ds.to_zarr(tmp, mode="w-", zarr_format=3, consolidated=False, encoding=encoding)
        consolidate(tmp)
    return str(path) if storage.is_url(path) else Path(path)


def consolidate(path: str | Path) -> None:
    """Write a store's consolidated metadata (every array's metadata in the root ``zarr.json``),
    so a plain ``xarray.open_zarr(path)`` opens it without its fallback warning. Called again
    whenever an array's metadata changes (a label store that grows).

    zarr-python warns on every call that consolidated metadata is not yet part of the Zarr
    format 3 specification; that notice is silenced here. Readers that ignore consolidated
    metadata (other Zarr implementations, ``consolidated=False``) read the same store.
    """
    import zarr

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        zarr.consolidate_metadata(str(path), zarr_format=3)


def create_store(template: xr.Dataset, path: Path, chunk: int, shard: int | None) -> None:
    """Write the metadata and coordinates of a cube whose data will arrive region by region.

    Args:
        template: Dask-backed canonical cube of the final shape (its data is not computed).
        path: Store directory (normally the temporary path from :func:`atomic_store`).
        chunk: Chunk side in pixels.
        shard: Optional shard side in pixels.
    """
    encoding = encoding_for(template, chunk, shard)
    step = shard or chunk
    template = _clean_encoding(template).chunk({"band": -1, "y": step, "x": step})
    template.to_zarr(
        path, mode="w-", zarr_format=3, consolidated=False, encoding=encoding, compute=False
    )
    consolidate(path)  # region writes change no metadata


def write_region(window: xr.Dataset, path: Path, y0: int, x0: int) -> None:
    """Write a (y, x) window of gridded variables into an existing store.

    The window must be chunk-aligned (shard-aligned when sharded) unless it reaches the array
    edge; concurrent writers of disjoint aligned windows are then safe.

    Args:
        window: Dataset with the store's gridded variables over the window.
        path: Existing store.
        y0: First row of the window in the store.
        x0: First column of the window in the store.
    """
    gridded = [n for n, v in window.data_vars.items() if v.dims[-2:] == ("y", "x")]
    window = window[gridded].drop_vars([c for c in window.coords if c not in ("y", "x")])
    region = {
        "y": slice(y0, y0 + window.sizes["y"]),
        "x": slice(x0, x0 + window.sizes["x"]),
    }
    _clean_encoding(window).to_zarr(path, region=region, zarr_format=3, consolidated=False)


def open_cube(path: str | Path) -> xr.Dataset:
    """Open a cube store lazily (dask-backed), with its CRS/transform decoded.

    Raises:
        FileNotFoundError: No store at ``path``.
        ValueError: ``path`` is a Zarr store without the cube variables.
    """
    p = path if storage.is_url(path) else Path(path)
    if not _is_store(p):
        raise FileNotFoundError(f"{p}: no Zarr cube store here")
    ds = xr.open_zarr(str(p), consolidated=False, decode_coords="all", zarr_format=3)
    missing = [v for v in REQUIRED_VARS if v not in ds]
    if missing:
        raise ValueError(f"{p}: not a cube store (missing variables {missing})")
    return ds


def cube_identity(cube: xr.Dataset) -> str:
    """Identity of a cube store: a hash of its provenance and layout, not of its pixels.

    Covers the ``name``, ``source`` paths, ``created`` time and non-finite pixel count written at
    ingest, the sizes and dtype of ``reflectance`` and the ``wavelength``/``y``/``x`` coordinate
    values. Every ingest records a new creation time, so another cube, or the same path ingested
    again, has another identity; reading it costs no pixel reads. Pixel changes inside one store
    are found tile by tile by :func:`sscc_core.labelling.labelstore.tile_fingerprint`.

    Args:
        cube: An opened cube store (:func:`open_cube`).

    Returns:
        16 hex digits (BLAKE2b-64).
    """
    h = hashlib.blake2b(digest_size=8)
    attrs = {k: cube.attrs.get(k) for k in ("name", "source", "created", "n_nonfinite")}
    h.update(json.dumps([attrs, dict(cube.sizes), str(cube["reflectance"].dtype)],
                        sort_keys=True, default=str).encode())
    for name in ("wavelength", "y", "x"):
        if name in cube.coords:
            h.update(name.encode())
            h.update(np.ascontiguousarray(cube[name].values, dtype=np.float64).tobytes())
    return h.hexdigest()
