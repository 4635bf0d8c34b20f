"""Read rate of the labelling's tile reads from an S3 API server against local disk, in one run.

Usage::

    python -m benchmarks.object_store [--size-gb 0.4] [--tiles 16] [--tile-size 256]
        [--repeats 3] [--work runs/bench] [--out docs/bench]

A moto S3 server (``moto_server``, from ``moto[server]`` in the test extra;
:func:`tests.helpers.s3_server`) is started as a separate process on 127.0.0.1, and the synthetic bench mosaic
(:func:`benchmarks.measure.ensure_mosaic`) is uploaded to it (``s3://bench/mosaic.zarr``, with
:func:`sscc_core.storage.upload_dir`). The same seeded sample of ``--tiles`` non-empty tiles is
then read the way a labelling read task reads a tile, reflectance and validity mask with the
model's halo (:func:`sscc_core.io.tiling.read_with_halo`, decoded), from the local store and from
the URL, alternately, ``--repeats`` times each (local disk from the page cache). The figure is
the ratio of the two rates in the same run; the server shares this machine's cores, so it is
**not a cloud performance figure**, only the cost of going through the S3 API and its HTTP
round trips instead of the file system. One tile is first read from both and compared, so the
rates are of equal reads. Results go to ``OUT/object_store.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import fsspec
import numpy as np
import zarr

from benchmarks.measure import add_mosaic_args, bench_mosaic, sample_tiles, save
from pipelines.common import run_stage
from sscc_core import storage
from sscc_core.config import PreprocessConfig
from sscc_core.io.tiling import Tile, read_with_halo
from tests.helpers import s3_server

HALO = PreprocessConfig().patch_size // 2  # the labelling halo of the default patch, pixels


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of the object-store read benchmark."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.object_store",
                                description=__doc__.split("\n\n")[0])
    add_mosaic_args(p, size_gb=0.4)
    p.add_argument("--tiles", type=int, default=16, help="tiles read per repeat (default 16)")
    p.add_argument("--tile-size", type=int, default=256, help="tile side, pixels (default 256)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per store (default 3)")
    return p


def read_pass(store: str, tiles: list[Tile]) -> float:
    """Seconds to open ``store`` and read every tile's reflectance and mask with the halo."""
    start = time.perf_counter()
    group = zarr.open_group(store, mode="r")
    cube, valid = group["reflectance"], group["valid"]
    for tile in tiles:
        read_with_halo(cube, tile, HALO)
        read_with_halo(valid, tile, HALO)
    return time.perf_counter() - start


def check_same_reads(local: str, url: str, tile: Tile) -> None:
    """Refuse to time reads that differ: one tile read from both stores must be equal.

    Raises:
        RuntimeError: The URL's reflectance or mask differs from the local store's.
    """
    a, b = zarr.open_group(local, mode="r"), zarr.open_group(url, mode="r")
    for name in ("reflectance", "valid"):
        if not np.array_equal(read_with_halo(a[name], tile, HALO), read_with_halo(b[name], tile, HALO)):
            raise RuntimeError(f"{url}: tile {tile} of {name} differs from {local}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Upload the mosaic, time the reads from both stores alternately, save the result."""
    _, out, store = bench_mosaic(args)
    tiles = sample_tiles(store, args.tile_size, args.tiles, args.seed)
    pixels = sum(t.height * t.width for t in tiles)
    url = "s3://bench/mosaic.zarr"
    with s3_server() as env:
        endpoint = env["AWS_ENDPOINT_URL"]
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir("bench")
        start = time.perf_counter()
        storage.upload_dir(store, url)
        upload = time.perf_counter() - start
        check_same_reads(str(store), url, tiles[0])
        seconds: dict[str, list[float]] = {"local": [], "s3": []}
        for _ in range(args.repeats):
            seconds["local"].append(read_pass(str(store), tiles))
            seconds["s3"].append(read_pass(url, tiles))
    rates = {k: pixels / min(v) for k, v in seconds.items()}
    result = {
        "store": str(store), "url": url, "endpoint": endpoint, "tiles": len(tiles),
        "tile_size": args.tile_size, "halo": HALO, "pixels_per_pass": pixels,
        "upload_seconds": upload, "seconds": seconds,
        "median_seconds": {k: statistics.median(v) for k, v in seconds.items()},
        "pixels_per_s": rates, "ratio_s3_to_local": rates["s3"] / rates["local"],
        "note": "moto S3 server on 127.0.0.1 sharing this machine's cores: not a cloud figure",
    }
    print(f"object store: {len(tiles)} tiles of {args.tile_size} px (+{HALO} px halo), best of "
          f"{args.repeats}: local {rates['local']:,.0f} pixels/s, S3 API on 127.0.0.1 "
          f"{rates['s3']:,.0f} pixels/s (ratio {result['ratio_s3_to_local']:.2f}); upload "
          f"{upload:.1f} s", flush=True)
    save(out, "object_store", result)
    return result


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m benchmarks.object_store``."""
    return run_stage("object_store", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
