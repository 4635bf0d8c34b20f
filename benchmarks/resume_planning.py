"""Time to plan a resume of a label store with many tile records: the store's one records object
(``sscc-labels/2``) against one marker file per tile (``sscc-labels/1``), measured in one run.

Usage::

    python benchmarks/resume_planning.py [--tiles 1000000] [--work DIR] [--url s3://bucket/prefix]
        [--url-marker-tiles 100000]

Both stores have ``--tiles`` tiles (a square grid of 1-pixel tiles, so the label arrays hold no
chunks), every tile recorded done. Planning is what ``sscc predict`` does before labelling: open
the store and find the done tiles (:meth:`sscc_core.labelling.labelstore.LabelStore.done_tiles`); for the
marker format that is listing the marker folder and parsing the names, as the marker-format code
did. Each is timed ``--repeats`` times (warm file cache); the report gives min and median.
With ``--url`` the records store is also written to and planned from that object-storage URL
(credentials and endpoint from the standard environment), and ``--url-marker-tiles`` marker
objects (uploaded concurrently) are listed there the way the marker format would have to.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

import fsspec
import numpy as np
import xarray as xr

from sscc_core.labelling.labelstore import (
    DONE_GROUP,
    LabelStore,
    LabelStoreSpec,
    TileRecord,
    create_label_store,
)

_MARKER = re.compile(r"^r(\d+)_c(\d+)\.json$")


def grid(side: int) -> xr.Dataset:
    """A cube-like dataset with only the ``y``/``x`` coordinates of a ``side x side`` grid."""
    return xr.Dataset(coords={"y": np.arange(side, dtype=np.float64),
                              "x": np.arange(side, dtype=np.float64)})


def records_store(path: str, side: int) -> float:
    """Create a label store of ``side**2`` one-pixel tiles, all recorded done; seconds taken."""
    start = time.perf_counter()
    store = create_label_store(path, grid(side), LabelStoreSpec("bench", 6, tile_size=1))
    rows, cols = np.divmod(np.arange(side * side), side)
    store.record_tiles([TileRecord(int(r), int(c), 0.1, 1, f"{i:032x}")
                        for i, (r, c) in enumerate(zip(rows, cols))])
    return time.perf_counter() - start


def marker_store(path: Path, side: int) -> float:
    """The same store in the marker-file format: one JSON marker per tile; seconds taken."""
    start = time.perf_counter()
    done = path / DONE_GROUP
    done.mkdir(parents=True)
    for i in range(side * side):
        r, c = divmod(i, side)
        with open(done / f"r{r}_c{c}.json", "w") as f:
            f.write(json.dumps({
                "row": r, "col": c, "seconds": 0.1, "n_valid": 1, "model_version": "bench",
                "fingerprint": f"{i:032x}", "written": "2026-11-30T00:00:00+00:00"}))
    return time.perf_counter() - start


def plan_markers(path: Path) -> set[tuple[int, int]]:
    """Done tiles of a marker-format store (the marker-format ``done_tiles``)."""
    found = set()
    for entry in os.listdir(path / DONE_GROUP):
        m = _MARKER.match(entry)
        if m:
            found.add((int(m.group(1)), int(m.group(2))))
    return found


def plan_records(path: str) -> set[tuple[int, int]]:
    """Done tiles of a records-format store: open it, read its records."""
    return LabelStore(path).done_tiles()


def url_markers(url: str, n: int) -> float:
    """Upload ``n`` marker objects under ``url/_sscc_done/`` (concurrently); seconds taken."""
    fs, inner = fsspec.core.url_to_fs(url)
    start = time.perf_counter()
    side = math.isqrt(n)
    fs.pipe({f"{inner}/{DONE_GROUP}/r{i // side}_c{i % side}.json": json.dumps({
        "row": i // side, "col": i % side, "seconds": 0.1, "n_valid": 1, "model_version": "bench",
        "fingerprint": f"{i:032x}", "written": "2026-11-30T00:00:00+00:00"}).encode()
        for i in range(n)})
    return time.perf_counter() - start


def plan_url_markers(url: str) -> set[tuple[int, int]]:
    """Done tiles of a marker-format store at a URL: list the marker prefix (uncached)."""
    fs, inner = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    found = set()
    for key in fs.ls(f"{inner}/{DONE_GROUP}", detail=False):
        m = _MARKER.match(key.rsplit("/", 1)[-1])
        if m:
            found.add((int(m.group(1)), int(m.group(2))))
    return found


def timed(fn, arg, repeats: int, expect: int) -> dict[str, float]:
    """Min and median seconds of ``fn(arg)`` over ``repeats`` calls (each must find ``expect``)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        n = len(fn(arg))
        times.append(time.perf_counter() - start)
        assert n == expect, (n, expect)
    return {"min_s": round(min(times), 4), "median_s": round(statistics.median(times), 4)}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one JSON object."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiles", type=int, default=1_000_000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--work", type=Path, default=Path("/tmp/sscc_resume_bench"))
    p.add_argument("--url", default=None, help="also time a records store at this URL")
    p.add_argument("--url-marker-tiles", type=int, default=100_000,
                   help="marker objects to list at --url (default 100000)")
    args = p.parse_args(argv)
    side = math.isqrt(args.tiles)
    n = side * side
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    result: dict = {"tiles": n, "repeats": args.repeats}
    result["records_local"] = {"build_s": round(records_store(str(args.work / "records.zarr"), side), 2),
                               **timed(plan_records, str(args.work / "records.zarr"), args.repeats, n)}
    result["markers_local"] = {"build_s": round(marker_store(args.work / "markers.zarr", side), 2),
                               **timed(plan_markers, args.work / "markers.zarr", args.repeats, n)}
    if args.url:
        records = f"{args.url.rstrip('/')}/records.zarr"
        result["records_url"] = {"url": records,
                                 "build_s": round(records_store(records, side), 2),
                                 **timed(plan_records, records, args.repeats, n)}
        markers = f"{args.url.rstrip('/')}/markers.zarr"
        m = math.isqrt(args.url_marker_tiles) ** 2
        result["markers_url"] = {"url": markers, "tiles": m,
                                 "build_s": round(url_markers(markers, m), 2),
                                 **timed(plan_url_markers, markers, args.repeats, m)}
    print(json.dumps(result))
    shutil.rmtree(args.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
