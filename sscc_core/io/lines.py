"""Several flight lines in one run: the cube stores a command line names, expanded and checked.

``sscc train``, ``sscc predict`` and ``sscc reprocess`` take one or more ``--store`` values. Each
value is one of

- a cube store (a local folder or a URL such as ``s3://bucket/lines/fl01.zarr``);
- a glob over stores (``runs/lines/*.zarr``, ``s3://bucket/lines/fl*.zarr``), expanded in sorted
  order; a pattern that matches nothing is an error;
- a manifest: a file (local or URL, not a store) listing one store path or URL per line; blank
  lines and lines starting with ``#`` are skipped, relative local paths are relative to the
  manifest's folder.

:func:`resolve_lines` expands them in the order given, then checks, before any cluster work,
that every store opens as a cube store, that no store is named twice, that each line's name
(its store's file stem, ``fl01`` for ``.../fl01.zarr``) is unique, and that all lines share one
band set (:func:`check_compatible`). Every failure is one ``ValueError`` line naming the store
(and the manifest it came from).
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import fsspec
import numpy as np
import xarray as xr

from sscc_core import storage
from sscc_core.io.store import open_cube

GLOB_CHARS = "*?["


@dataclass(frozen=True)
class Line:
    """One flight line of a run.

    Attributes:
        name: The line's name, its store's file stem (unique within a run).
        store: The store's resolved path or URL (what other processes are given).
        cube: The store opened lazily (:func:`sscc_core.io.store.open_cube`) when it was checked,
            for the driver to reuse instead of opening it again; not part of equality.
    """

    name: str
    store: str
    cube: xr.Dataset | None = field(default=None, compare=False, repr=False)


def source_label(ds: xr.Dataset) -> str:
    """The first source path of a cube, for error messages."""
    source = ds.attrs.get("source") or [ds.attrs.get("name", "?")]
    return str(source[0] if isinstance(source, (list, tuple)) else source)


def check_compatible(first: xr.Dataset, other: xr.Dataset, a: str | None = None,
                     b: str | None = None) -> None:
    """Refuse two lines whose spectra cannot be processed together.

    Args:
        first: A cube (:func:`sscc_core.io.store.open_cube`).
        other: Another cube.
        a: Name of ``first`` in messages (default: its first source path).
        b: Name of ``other`` in messages.

    Raises:
        ValueError: Band counts, dtypes, reflectance scales or wavelengths (where both lines
            list them) differ; the message names both lines.
    """
    a, b = a or source_label(first), b or source_label(other)
    ra, rb = first["reflectance"], other["reflectance"]
    if ra.sizes["band"] != rb.sizes["band"]:
        raise ValueError(f"band counts differ between lines: {a} has {ra.sizes['band']} bands, "
                         f"{b} has {rb.sizes['band']}")
    if ra.dtype != rb.dtype:
        raise ValueError(f"dtypes differ between lines: {a} is {ra.dtype}, {b} is {rb.dtype}")
    if ra.attrs.get("reflectance_scale") != rb.attrs.get("reflectance_scale"):
        raise ValueError(f"reflectance scales differ between lines {a} and {b}")
    if "wavelength" in first.coords and "wavelength" in other.coords and not np.allclose(
        first["wavelength"].values, other["wavelength"].values
    ):
        raise ValueError(f"wavelengths differ between lines {a} and {b}")


def _glob(pattern: str) -> list[str]:
    """Stores matching a local or URL glob pattern, sorted; URLs keep their scheme."""
    if not storage.is_url(pattern):
        return sorted(glob.glob(pattern))
    scheme = pattern.split("://", 1)[0]
    fs, inner = fsspec.core.url_to_fs(pattern)
    return sorted(f"{scheme}://{path}" for path in fs.glob(inner))


def _manifest(path: str) -> list[str]:
    """The stores a manifest file lists, relative local paths resolved against its folder."""
    text = storage.read_bytes(path).decode()
    entries = [s.strip() for s in text.splitlines() if s.strip() and not s.lstrip().startswith("#")]
    if not entries:
        raise ValueError(f"manifest {path}: lists no store")
    if storage.is_url(path):
        base = path.rsplit("/", 1)[0]
        return [e if storage.is_url(e) or e.startswith("/") else f"{base}/{e}" for e in entries]
    parent = PurePosixPath(path).parent
    return [e if storage.is_url(e) or e.startswith("/") else str(parent / e) for e in entries]


def expand_stores(specs: Sequence[str]) -> list[tuple[str, str]]:
    """Expand ``--store`` values into ``(store, where it came from)`` pairs, in order.

    Args:
        specs: Store paths or URLs, globs over them, or manifest files.

    Returns:
        One pair per store: its path or URL as written, and the spec that named it.

    Raises:
        ValueError: No spec, a glob that matches nothing, an empty manifest, or a manifest
            listing a glob or another manifest.
    """
    if not specs:
        raise ValueError("no cube store given")
    out: list[tuple[str, str]] = []
    for spec in specs:
        if any(c in spec for c in GLOB_CHARS):
            matches = _glob(spec)
            if not matches:
                raise ValueError(f"{spec}: the pattern matches no store")
            out += [(m, spec) for m in matches]
        elif storage.exists(spec):  # a file, not a store folder: a manifest
            for entry in _manifest(spec):
                if any(c in entry for c in GLOB_CHARS) or storage.exists(entry):
                    raise ValueError(f"manifest {spec}: {entry} is not a cube store (a manifest "
                                     "lists stores, not patterns or other manifests)")
                out.append((entry, f"manifest {spec}"))
        else:
            out.append((spec, spec))
    return out


def line_name(store: str) -> str:
    """A line's name: its store's file stem (``fl01`` for ``s3://b/lines/fl01.zarr/``)."""
    name = str(store).rstrip("/").rsplit("/", 1)[-1]
    return name[: -len(".zarr")] if name.endswith(".zarr") else name


def resolve_lines(specs: Sequence[str]) -> list[Line]:
    """The lines a run's ``--store`` values name, checked before any cluster work.

    Args:
        specs: ``--store`` values (see the module docstring).

    Returns:
        One :class:`Line` per store, in the order given, each with its opened ``cube``.

    Raises:
        ValueError: As :func:`expand_stores`; a store that does not open as a cube store (the
            message names it and the manifest or pattern that listed it), a store named twice,
            two lines with one name, or two lines with different band sets.
    """
    pairs = expand_stores(specs)
    lines: list[Line] = []
    for store, where in pairs:
        resolved = storage.resolve(store)
        suffix = "" if where == store else f" (from {where})"
        if any(line.store == resolved for line in lines):
            raise ValueError(f"{store}{suffix}: the store is named twice")
        storage.check_url(store)
        try:
            cube = open_cube(store)
        except (FileNotFoundError, ValueError) as exc:
            raise ValueError(f"{exc}{suffix}") from None
        lines.append(Line(line_name(store), resolved, cube))
    names = [line.name for line in lines]
    for i, name in enumerate(names):
        if names.index(name) != i:
            raise ValueError(f"lines {lines[names.index(name)].store} and {lines[i].store} share "
                             f"the name {name!r}; their outputs would collide (rename one store)")
    for line in lines[1:]:
        check_compatible(lines[0].cube, line.cube, lines[0].store, line.store)
    return lines
