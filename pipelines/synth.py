"""``sscc synth``: a deterministic synthetic flight-line mosaic from real spectra -> cube store.

Usage::

    sscc synth --out runs/mosaic.zarr --size-gb 1 [--seed 0] [--source salinasA]
    sscc synth --out runs/strip.zarr --size-gb 48 --width 4096 --chunk 256 --shard 1024
    sscc synth --out runs/small.zarr --height 512 --width 512 --snr inf --overwrite
    sscc synth --out runs/fields.zarr --source indian_pines --layout salinas_gt.mat \
        --layout-origin 128 0 --height 128 --width 128 --texture-length 6
    sscc synth --out runs/mixtures.zarr --source samson --dtype float32 --height 128 \
        --width 128 --abundance-length 16

The store is created once on the driver (metadata and coordinates only), then Ray tasks each
generate and write groups of whole chunk- (shard-) aligned windows (see
:mod:`sscc_core.io.synthetic`: values depend only on the seed and pixel position, so the order and
grouping of the windows do not change a single byte). The store is written to a temporary sibling
and renamed into place at the end: a crash leaves no half store. Each task holds one window.
Progress is printed as windows complete, and the throughput (MB/s of reflectance) at the end.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import ray

from pipelines.common import ensure_ray, gather_tasks, run_stage
from sscc_core.io import synthetic
from sscc_core.io import matlab, store


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of the synth stage."""
    p = argparse.ArgumentParser(
        prog="sscc synth",
        description="Write a deterministic synthetic mosaic of real class spectra (fields, mixed "
        "edges, noise, nodata stripes) with its true label map into a Zarr v3 cube store.",
    )
    p.add_argument("--out", required=True, help="output store")
    p.add_argument("--size-gb", type=float, default=None,
                   help="reflectance size in decimal GB; sets the shape (square unless --height "
                   "or --width is given)")
    p.add_argument("--height", type=int, default=None, help="rows (with --width: exact shape)")
    p.add_argument("--width", type=int, default=None, help="columns")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    p.add_argument("--source", default="salinasA", choices=sorted(matlab.BENCHMARKS),
                   help="scene whose labelled pixels fill the fields (default salinasA)")
    p.add_argument("--dtype", default="int16", choices=["int16", "float32"],
                   help="stored dtype (default int16; float32 allows --nan-fraction)")
    p.add_argument("--snr", type=float, default=100.0,
                   help="RMS of the class means / noise std (default 100; inf: no noise)")
    p.add_argument("--field-size", type=int, default=128, help="mean field side, pixels")
    p.add_argument("--mix-width", type=float, default=2.0,
                   help="half-width of the mixed band along field edges, pixels (default 2)")
    p.add_argument("--line-width", type=int, default=512, help="flight-line width, pixels")
    p.add_argument("--max-gap", type=int, default=8,
                   help="most nodata columns at the seam of each flight line (default 8)")
    p.add_argument("--drop-line-p", type=float, default=0.002,
                   help="probability that a row of a flight line is dropped (default 0.002)")
    p.add_argument("--nan-fraction", type=float, default=0.0,
                   help="fraction of NaN pixels (float32 only; default 0)")
    p.add_argument("--texture-length", type=float, default=0.0,
                   help="correlation length of the within-field texture, pixels (default 0: "
                        "every pixel an independent draw from its class's real pixels)")
    p.add_argument("--abundance-length", type=float, default=0.0,
                   help="correlation length of smooth abundance maps, pixels: every pixel a "
                        "linear mixture of all classes' real pixels, labelled by the most "
                        "abundant class, instead of fields (default 0: fields)")
    p.add_argument("--abundance-sharpness", type=float, default=4.0,
                   help="inverse temperature of the softmax from smooth fields to abundances "
                        "(default 4; larger: purer pixels)")
    p.add_argument("--layout", default=None,
                   help="class map (GeoTIFF/ENVI/.mat ground truth) whose crop is the field map "
                        "instead of Voronoi fields (its unlabelled pixels: --layout-unlabelled)")
    p.add_argument("--layout-var", default=None, help=".mat variable of the --layout class map")
    p.add_argument("--layout-unlabelled", default="nodata", choices=["nodata", "background"],
                   help="what the --layout map's unlabelled pixels hold: nodata (default) or the "
                        "source scene's real unlabelled pixels (valid, label 0)")
    p.add_argument("--layout-origin", type=int, nargs=2, default=(0, 0), metavar=("ROW", "COL"),
                   help="top-left pixel of the crop in the --layout map (default 0 0); without "
                        "--height/--width the crop runs to the map's edge")
    p.add_argument("--chunk", type=int, default=256, help="chunk side in pixels (default 256)")
    p.add_argument("--shard", type=int, default=None,
                   help="shard side in pixels (multiple of --chunk; default: no sharding)")
    p.add_argument("--windows-per-task", type=int, default=4,
                   help="chunk (shard) windows generated by one Ray task (default 4)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    return p


def spec_from_args(
    args: argparse.Namespace, library: synthetic.ClassLibrary
) -> synthetic.SynthSpec:
    """The mosaic spec of a parsed command line (shape from --size-gb or --height/--width, or
    from the --layout crop).

    Raises:
        ValueError: Neither a size nor both sides, an invalid size/parameter, or a --layout origin
            outside the class map. (A crop leaving the map or labelling fewer than two classes,
            and a background fill from a scene without unlabelled pixels, are refused by
            :func:`sscc_core.io.synthetic.synthetic_template` before any window is written.)
    """
    itemsize = 4 if args.dtype == "float32" else 2
    if args.layout is not None:
        if args.size_gb is not None:
            raise ValueError("--size-gb: not with --layout (the crop of the class map sets the "
                             "shape)")
        rows, cols = synthetic.layout_map(args.layout, args.layout_var).shape
        row, col = args.layout_origin
        if not (0 <= row < rows and 0 <= col < cols):
            raise ValueError(f"--layout-origin: ({row}, {col}) is outside the {rows} x {cols} "
                             f"class map {args.layout}")
        height = args.height if args.height is not None else rows - row
        width = args.width if args.width is not None else cols - col
    elif args.size_gb is not None:
        height, width = synthetic.shape_for_size(
            args.size_gb, library.n_bands, itemsize, args.height, args.width)
    elif args.height is not None and args.width is not None:
        height, width = args.height, args.width
    else:
        raise ValueError("give --size-gb, or both --height and --width")
    return synthetic.SynthSpec(
        height=height, width=width, seed=args.seed, source=args.source, dtype=args.dtype,
        snr=args.snr, field_size=args.field_size, mix_width=args.mix_width,
        line_width=args.line_width, max_gap=args.max_gap, drop_line_p=args.drop_line_p,
        nan_fraction=args.nan_fraction, texture_length=args.texture_length,
        layout=args.layout, layout_var=args.layout_var, layout_origin=tuple(args.layout_origin),
        layout_unlabelled=args.layout_unlabelled, abundance_length=args.abundance_length,
        abundance_sharpness=args.abundance_sharpness,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Generate the mosaic with Ray tasks; print progress and throughput; return a summary."""
    for name in ("chunk", "windows_per_task"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(args, name)}")
    library = synthetic.class_library(args.source)
    spec = spec_from_args(args, library)
    step = args.shard or args.chunk
    todo = synthetic.windows(spec, step)
    groups = [todo[i : i + args.windows_per_task]
              for i in range(0, len(todo), args.windows_per_task)]
    total = library.n_bands * spec.height * spec.width * spec.itemsize
    print(f"synth: {spec.source} {library.n_bands} bands x {spec.height} x {spec.width} "
          f"{spec.dtype} ({total / 1e9:.3f} GB), seed {spec.seed}, {len(todo)} windows in "
          f"{len(groups)} tasks", flush=True)
    if spec.layout is not None:
        print(f"synth: {synthetic.layout_summary(spec, library.n_classes)}", flush=True)
    start = time.perf_counter()
    with store.atomic_store(args.out, args.overwrite) as tmp:
        store.create_store(synthetic.synthetic_template(spec, library), tmp, args.chunk, args.shard)
        ensure_ray()
        task = ray.remote(synthetic.fill_windows)
        lib_ref = ray.put(library)
        refs = [task.remote(spec, lib_ref, str(tmp), g) for g in groups]
        done = {"tasks": 0, "windows": 0, "bytes": 0}
        every = max(1, len(groups) // 20)

        def progress(i: int, written: int) -> None:
            done["tasks"] += 1
            done["windows"] += len(groups[i])
            done["bytes"] += written
            if done["tasks"] % every == 0 or done["tasks"] == len(groups):
                rate = done["bytes"] / 1e6 / max(time.perf_counter() - start, 1e-9)
                print(f"synth: {done['windows']}/{len(todo)} windows "
                      f"({100 * done['windows'] / len(todo):.0f}%), {rate:.1f} MB/s", flush=True)

        gather_tasks(refs, progress)
    seconds = time.perf_counter() - start
    rate = done["bytes"] / 1e6 / seconds
    print(f"synth: wrote {done['bytes'] / 1e9:.3f} GB of reflectance to {args.out} in "
          f"{seconds:.1f} s: {rate:.1f} MB/s", flush=True)
    return {"store": args.out, "shape": (library.n_bands, spec.height, spec.width),
            "bytes": done["bytes"], "seconds": seconds, "mb_per_s": rate}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sscc synth``; returns the process exit code (2 on user errors)."""
    return run_stage("synth", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
