"""Draw the layout crops of a held-out set at random: the thirteenth test's six (``runs/ho14``).

Development script (docs/RESULTS.md, *How often the gate fails when nothing changed*); not in
the package. For each source in ``SOURCES`` it lists every 128 x 128 crop of the three class maps
on a 16-pixel grid that labels at least 3 of the source's classes (layout classes beyond the
source's count share them, as ``sscc synth`` maps them), at least 30 % of its pixels, with the
largest class at most 60 % of the labelled ones, and that lies at least 64 pixels in rows or
columns from every earlier crop of the same map (this round's included); then draws a map among
those with an eligible crop, and a crop of it. It prints the ``--layout-origin`` of each.

``--remaining`` instead counts, per source and map, the crops still eligible for a next held-out
set: away from every earlier crop and from the thirteenth test's (``THIRTEENTH``).

Usage (from the repository root)::

    .venv/bin/python docs/experiments/draw_crops.py [--remaining]
"""

from __future__ import annotations

import sys

import numpy as np

from sscc_core.io.synthetic import SynthSpec, layout_fields, layout_map

MAPS = {"pu": "../shared/data/gt_only/mhaut_paviaU_gt.mat",
        "pc": "../shared/data/gt_only/mhaut_paviaC_gt.mat",
        "sal": "../shared/data/gt_only/mhaut_salinas_gt.mat"}
EARLIER = {"pc": [(128, 544), (160, 384), (256, 512), (32, 256), (576, 64), (64, 400), (800, 448)],
           "pu": [(224, 96), (352, 16), (448, 96), (480, 0), (64, 0), (64, 16), (96, 192)],
           "sal": [(0, 0), (128, 0), (256, 0), (128, 64), (384, 64), (384, 89), (64, 64)]}
THIRTEENTH = {"pc": [(224, 432), (96, 224)], "pu": [], "sal": [(0, 80), (208, 80), (192, 16), (64, 0)]}
N_CLASSES = {"indian_pines": 16, "salinasA": 6, "jasper_ridge": 4, "samson": 3}
SOURCES = ["indian_pines", "salinasA", "jasper_ridge", "samson", "jasper_ridge", "samson"]
SEED, SIZE, GRID, APART = 171, 128, 16, 64


def crop_stats(path: str, row: int, col: int, n_source: int) -> tuple[int, float, float]:
    """(classes, labelled share, largest class's share of the labelled) of one crop, in the
    source's classes as ``sscc synth`` maps them (``layout_fields`` without mixed edges)."""
    spec = SynthSpec(height=SIZE, width=SIZE, seed=SEED, layout=path, layout_origin=(row, col), mix_width=0)
    try:
        near = layout_fields(spec, n_source)[0]
    except ValueError:  # fewer than two classes
        return 0, 0.0, 1.0
    counts = np.bincount(near[near > 0])
    return int((counts > 0).sum()), float(counts.sum() / near.size), float(counts.max() / counts.sum())


def eligible(path: str, earlier: list[tuple[int, int]], n_source: int) -> list[tuple[int, int]]:
    """Origins of the crops of one map that pass the filters of the module docstring."""
    rows, cols = layout_map(path).shape
    out = []
    for row in range(0, rows - SIZE + 1, GRID):
        for col in range(0, cols - SIZE + 1, GRID):
            if any(abs(row - r) < APART and abs(col - c) < APART for r, c in earlier):
                continue
            classes, labelled, largest = crop_stats(path, row, col, n_source)
            if classes >= 3 and labelled >= 0.30 and largest <= 0.60:
                out.append((row, col))
    return out


def main() -> None:
    rng = np.random.default_rng(SEED)
    for source in SOURCES:
        options = {m: eligible(path, EARLIER[m], N_CLASSES[source]) for m, path in MAPS.items()}
        maps = sorted(m for m, crops in options.items() if crops)
        name = maps[rng.integers(len(maps))]
        row, col = options[name][rng.integers(len(options[name]))]
        EARLIER[name].append((row, col))
        print(f"{source} on {name}: --layout-origin {row} {col}")


def remaining() -> None:
    """Print how many crops each source could still draw from each map."""
    for source, n_source in N_CLASSES.items():
        counts = {m: len(eligible(path, EARLIER[m] + THIRTEENTH[m], n_source)) for m, path in MAPS.items()}
        print(f"{source}: " + ", ".join(f"{m} {n}" for m, n in counts.items()), flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--remaining"]:
        remaining()
    else:
        main()
