"""``sscc ingest``: input files (or a benchmark scene) -> canonical Zarr cube store(s).

Usage::

    sscc ingest --benchmark indian_pines --out runs/ip.zarr
    sscc ingest scene.hdr --out runs/scene.zarr [--chunk 256] [--shard 1024] [--overwrite]
    sscc ingest scene.tif --labels classes.tif --out runs/scene.zarr   # with its ground truth
    sscc ingest line1.hdr line2.hdr --out runs/lines/            # one store per line
    sscc ingest line1.hdr line2.hdr --out runs/mosaic.zarr --mosaic

One input is ingested in this process; ``--labels`` attaches its ground truth, a class map on the
cube's pixel grid (:mod:`sscc_core.io.ground_truth`), so that ``sscc evaluate`` and ``sscc
reproduce --store`` can score clusterings of it. Several inputs are ingested in parallel as Ray tasks, each
into ``OUT/<stem>.zarr``; with ``--mosaic`` the lines go to ``<OUT>.lines/<stem>.zarr`` and are
then mosaicked onto their union grid (first valid line wins where they overlap) into ``OUT``,
window by window in Ray tasks that each write whole chunk- (shard-) aligned regions.

A rerun of a killed multi-line ingest resumes: a line store already in place (stores are renamed
into place only when whole) whose source files have the size and modification time recorded in it
(``source_stamp``), with the same ``--chunk``/``--shard``, is kept; the other lines are ingested,
and the temporaries the killed run left are removed. A line store whose source changed is refused
unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import ray

from pipelines.common import ensure_ray, failing_output, gather_tasks, run_stage
from sscc_core import storage
from sscc_core.io import ground_truth, matlab, mosaic, store
from sscc_core.io.readers import read_any

WINDOWS_PER_TASK = 16


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of the ingest stage."""
    p = argparse.ArgumentParser(
        prog="sscc ingest",
        description="Ingest hyperspectral files (.mat, ENVI, GeoTIFF, NEON HDF5, NetCDF) or a "
        "benchmark scene into Zarr v3 cube stores.",
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="input files (flight lines)")
    p.add_argument("--out", required=True, help="output store (a directory of stores for "
                   "several inputs without --mosaic)")
    p.add_argument("--benchmark", choices=sorted(matlab.BENCHMARKS),
                   help="ingest a benchmark scene from data/")
    p.add_argument("--chunk", type=int, default=256, help="chunk side in pixels (default 256)")
    p.add_argument("--shard", type=int, default=None, help="shard side in pixels (multiple of "
                   "--chunk; default: no sharding)")
    p.add_argument("--overwrite", action="store_true", help="replace existing stores")
    p.add_argument("--mosaic", action="store_true", help="mosaic several lines onto one grid")
    p.add_argument("--labels", default=None, metavar="GT",
                   help="ground truth of the single INPUT: a class map on its pixel grid "
                        "(single-band GeoTIFF/ENVI/NetCDF or a .mat variable; 0, nodata and NaN "
                        "= unlabelled)")
    p.add_argument("--labels-var", default=None, metavar="VAR",
                   help="the .mat variable holding the --labels class map (default: the only "
                        "2-D one)")
    return p


def summarize(ds: Any) -> dict[str, Any]:
    """Shape, band count, valid-pixel and nonfinite-pixel counts of a (lazy) cube, and its
    labelled-pixel and class counts when it has ground truth."""
    refl = ds["reflectance"]
    summary = {
        "shape": tuple(int(s) for s in refl.shape),
        "bands": int(refl.sizes["band"]),
        "valid": int(ds["valid"].sum().compute()),
        "nonfinite": int(ds.attrs.get("n_nonfinite", 0)),
        "dtype": str(refl.dtype),
    }
    if "labels" in ds:
        summary["labelled"] = int((ds["labels"] > 0).sum().compute())
        summary["classes"] = len(ds["labels"].attrs.get("source_class_ids", []))
    return summary


def _line(label: str, s: dict[str, Any]) -> str:
    b, h, w = s["shape"]
    return (f"{label}: {b} bands x {h} x {w} {s['dtype']}, {s['valid']} valid pixels, "
            f"{s['nonfinite']} with NaN/inf")


def ingest_file(path: str, out: str, chunk: int, shard: int | None, overwrite: bool,
                labels: str | None = None, labels_var: str | None = None) -> dict:
    """Read one input (and its ``labels`` class map, if given), write its store, and return its
    :func:`summarize` (plus ``store``)."""
    ds = read_any(path)
    if labels is not None:
        ds = ground_truth.attach_ground_truth(ds, ground_truth.read_class_map(labels, labels_var))
    ds = ds.assign_attrs({store.SOURCE_STAMP: store.source_stamp(ds.attrs["source"], chunk, shard)})
    written = store.write_cube(ds, out, chunk=chunk, shard=shard, overwrite=overwrite)
    return {"store": str(written), **summarize(store.open_cube(written))}


def fill_windows(lines: list[str], plan: mosaic.MosaicPlan, target: str,
                 windows: list[tuple[int, int, int, int]]) -> int:
    """Assemble and write mosaic windows into the store at ``target``; returns the count."""
    cubes = [store.open_cube(p) for p in lines]
    for y0, y1, x0, x1 in windows:
        store.write_region(mosaic.mosaic_window(cubes, plan, y0, y1, x0, x1), Path(target), y0, x0)
    return len(windows)


def _stores_for(inputs: list[str], out: Path, use_mosaic: bool) -> list[Path]:
    """One store path per input: ``OUT/<stem>.zarr`` (or ``<OUT>.lines/`` with --mosaic)."""
    root = out.with_name(out.name + ".lines") if use_mosaic else out
    names = [Path(p).name.split(".")[0] or Path(p).name for p in inputs]
    if len(set(names)) != len(names):
        raise ValueError(f"inputs share a file stem, their stores would collide: {names}")
    return [root / f"{n}.zarr" for n in names]


def _lines_to_ingest(inputs: list[str], targets: list[Path],
                     args: argparse.Namespace) -> list[tuple[str, Path]]:
    """The (input, store) pairs still to ingest: a store already ingested from its input as the
    input is now (:func:`sscc_core.io.store.ingested_unchanged`) is kept, unless --overwrite.

    Raises:
        FileExistsError: A store exists that was not ingested from its input as it is now.
    """
    todo = []
    for path, target in zip(inputs, targets):
        if args.overwrite or not target.exists():
            todo.append((path, target))
        elif store.ingested_unchanged(target, args.chunk, args.shard):
            print(f"kept {target}: ingested from {path} as it is now", flush=True)
        else:
            raise FileExistsError(
                f"{target}: output already exists and was not ingested from {path} as it is now "
                "(the file changed, or --chunk/--shard differ); pass --overwrite to ingest it again")
    return todo


def _ingest_lines(inputs: list[str], targets: list[Path], args: argparse.Namespace) -> None:
    """Ingest several inputs in parallel Ray tasks, printing one line per finished input; the
    lines a killed earlier run finished are kept (:func:`_lines_to_ingest`)."""
    todo = _lines_to_ingest(inputs, targets, args)
    task = ray.remote(ingest_file)
    refs = [task.remote(i, str(t), args.chunk, args.shard, args.overwrite) for i, t in todo]
    gather_tasks(refs, lambda i, s: print(_line(f"ingested {todo[i][0]} -> {s['store']}", s),
                                          flush=True))


def _mosaic(lines: list[Path], args: argparse.Namespace) -> dict[str, Any]:
    """Mosaic line stores into ``args.out`` with Ray tasks over aligned windows."""
    cubes = [store.open_cube(p) for p in lines]
    plan = mosaic.plan_mosaic(cubes)
    template = mosaic.mosaic_template(cubes, plan, name=Path(args.out).stem)
    windows = list(plan.windows(args.shard or args.chunk))
    task = ray.remote(fill_windows)
    with store.atomic_store(args.out, args.overwrite) as tmp:
        store.create_store(template, tmp, args.chunk, args.shard)
        groups = [windows[i : i + WINDOWS_PER_TASK]
                  for i in range(0, len(windows), WINDOWS_PER_TASK)]
        refs = [task.remote([str(p) for p in lines], plan, str(tmp), g) for g in groups]
        gather_tasks(refs, lambda i, n: None)
    print(f"mosaicked {len(lines)} lines onto a {plan.height} x {plan.width} grid "
          f"({len(windows)} windows)", flush=True)
    return {"store": args.out, **summarize(store.open_cube(args.out))}


def ingest(args: argparse.Namespace) -> dict[str, Any]:
    """Execute a parsed command line; returns the summary of the final store(s)."""
    if bool(args.inputs) == bool(args.benchmark):
        raise ValueError("give INPUT files or --benchmark NAME (exactly one of them)")
    if args.labels_var is not None and args.labels is None:
        raise ValueError("--labels-var names a variable of the --labels file; give --labels too")
    if args.labels is not None and (len(args.inputs) != 1 or args.mosaic):
        raise ValueError("--labels is the ground truth of one INPUT: give exactly one input file, "
                         "without --mosaic (a benchmark scene brings its own)")
    if args.inputs and (len(args.inputs) > 1 or args.mosaic):
        store.require_local(args.out, "several flight lines or --mosaic: Ray tasks write the "
                            "line stores in place")
    storage.check_url(args.out)
    if args.benchmark:
        ds = matlab.read_benchmark(args.benchmark)
        out = store.write_cube(ds, args.out, chunk=args.chunk, shard=args.shard,
                               overwrite=args.overwrite)
        return {"store": str(out), **summarize(store.open_cube(out))}
    for path in [*args.inputs, *([args.labels] if args.labels else [])]:
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: no such file")
    if len(args.inputs) == 1 and not args.mosaic:
        return ingest_file(args.inputs[0], args.out, args.chunk, args.shard, args.overwrite,
                           args.labels, args.labels_var)
    ensure_ray()
    targets = _stores_for(args.inputs, Path(args.out), args.mosaic)
    _ingest_lines(args.inputs, targets, args)
    if args.mosaic:
        return _mosaic(targets, args)
    summaries = [summarize(store.open_cube(t)) for t in targets]
    return {
        "store": args.out,
        "shape": f"{len(targets)} stores",
        "bands": sorted({s["bands"] for s in summaries}),
        "valid": sum(s["valid"] for s in summaries),
        "nonfinite": sum(s["nonfinite"] for s in summaries),
    }


def left_behind(args: argparse.Namespace) -> str:
    """What a failed ingest leaves at ``--out`` (every store is written whole or not at all)."""
    previous = storage.exists(storage.join(args.out, "zarr.json"))
    kept = "the previous store is kept" if previous else "nothing was written"
    if len(args.inputs) < 2 and not args.mosaic:
        return kept
    lines = [t for t in _stores_for(args.inputs, Path(args.out), args.mosaic) if t.is_dir()]
    whole = (f"{len(lines)} of {len(args.inputs)} line stores are whole and kept; rerun the same "
             "command to ingest the rest" if lines else "no line store was written")
    return f"mosaic: {kept}; {whole}" if args.mosaic else whole


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Ingest, then print the summary line; returns the summary.

    Raises:
        ValueError: An OS error of the environment (full disk, file-size limit, read-only
            volume), also from a Ray task, naming ``--out`` and what is left there.
    """
    with failing_output(args.out, "ingest", lambda: left_behind(args)):
        summary = ingest(args)
    print(f"summary: store {summary['store']}: shape {summary['shape']}, bands {summary['bands']}, "
          f"valid pixels {summary['valid']}, nonfinite pixels {summary['nonfinite']}"
          + (f", labelled pixels {summary['labelled']} in {summary['classes']} classes"
             if "labelled" in summary else ""), flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sscc ingest``; returns the process exit code (2 on user errors)."""
    return run_stage("ingest", build_parser(), run, argv)

if __name__ == "__main__":
    sys.exit(main())
