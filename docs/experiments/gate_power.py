"""How often the held-out gate passes a change of a known size: the gate's power, simulated on runs.

Label-scored development script (docs/RESULTS.md, *What a held-out test of this size can
detect*); not in the package. The thirteenth test's gate (:mod:`held_out_gate`) was calibrated
against no change. This asks the other question: if a change raised every scene's ACC by
``delta``, how often would the gate adopt it? It simulates tests from the shipped configuration's
own runs: each simulated test draws ``scenes`` scenes (with replacement) from those with at least
``2 * seeds`` runs, splits each drawn scene's runs at random into a "shipped" and a "changed" set
of ``seeds`` runs, adds ``delta`` to the changed set, and applies :func:`held_out_gate.gate`. So
the runs' real spread between seeds (bimodal where the rule's choice flips) carries into the
simulated tests; what it leaves out is a change that helps some scenes and hurts others, which
only makes passing harder.

Reported per (scenes, delta) and per ``--z`` (the ``se`` rule's standard errors, 2 in the
thirteenth test's gate): the share of simulated tests whose mean gain is significant
(permutation p < ``ALPHA``), whose scenes all pass the ``se`` rule, and which pass both (the
gate); delta 0 gives the false adoptions.

Usage (from the repository root)::

    .venv/bin/python docs/experiments/gate_power.py 'RUNS/*.json' ... [--tests 200] [--z 2 3]
"""

from __future__ import annotations

import argparse
import collections

import numpy as np

import held_out_gate

SEEDS = 3  # runs per configuration and scene in a simulated test
SCENES = (8, 16, 24, 40)  # scenes per simulated test
DELTAS = (0.0, 0.03, 0.05)  # the change's true effect on every scene, ACC


def pooled(patterns: list[str]) -> dict[str, np.ndarray]:
    """Every scene's runs (ACC of the rule's choice) over the files matching ``patterns``."""
    runs: dict[str, dict[int, float]] = collections.defaultdict(dict)
    for pattern in patterns:
        for scene, by_seed in held_out_gate.by_scene(pattern).items():
            runs[scene].update(by_seed)
    return {scene: np.array(list(by_seed.values())) for scene, by_seed in sorted(runs.items())}


def simulate(runs: dict[str, np.ndarray], scenes: int, delta: float, tests: int,
             rng: np.random.Generator) -> dict[str, float]:
    """Shares of ``tests`` simulated tests that pass each part of the gate and the whole gate."""
    usable = [acc for acc in runs.values() if acc.size >= 2 * SEEDS]
    mean_ok = se_ok = both = 0
    for _ in range(tests):
        shipped, changed = {}, {}
        for i, j in enumerate(rng.integers(len(usable), size=scenes)):
            acc = rng.permutation(usable[j])
            shipped[str(i)] = dict(enumerate(acc[:SEEDS]))
            changed[str(i)] = dict(enumerate(acc[SEEDS:2 * SEEDS] + delta))
        result = held_out_gate.gate(shipped, changed)
        significant, no_drop = result["p"] < held_out_gate.ALPHA, result["fails"]["se"] == 0
        mean_ok += significant
        se_ok += no_drop
        both += significant and no_drop
    return {"mean": mean_ok / tests, "se": se_ok / tests, "gate": both / tests}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("patterns", nargs="+", help="globs of the shipped configuration's run files")
    parser.add_argument("--tests", type=int, default=200, help="simulated tests per cell")
    parser.add_argument("--z", type=float, nargs="+", default=[held_out_gate.Z],
                        help="standard errors the se rule tolerates (one table row set each)")
    args = parser.parse_args()
    held_out_gate.PERMUTATIONS = 2_000  # enough to resolve p < ALPHA in a simulation
    runs = pooled(args.patterns)
    usable = [acc for acc in runs.values() if acc.size >= 2 * SEEDS]
    variances = np.array([acc.var(ddof=1) for acc in runs.values() if acc.size >= 3])
    print(f"{len(runs)} scenes, {sum(a.size for a in runs.values())} runs; {len(usable)} scenes with "
          f">= {2 * SEEDS} runs are drawn from. Seed std over the {variances.size} scenes with >= 3 runs: "
          f"root mean variance {np.sqrt(variances.mean()):.3f}, median {np.median(np.sqrt(variances)):.3f}")
    print("| se rule z | scenes | delta | mean gain significant | no scene fails the se rule | gate passes |")
    print("| --- | --- | --- | --- | --- | --- |")
    for z in args.z:
        held_out_gate.Z = z
        rng = np.random.default_rng(0)  # the same simulated tests for every z
        for scenes in SCENES:
            for delta in DELTAS:
                share = simulate(runs, scenes, delta, args.tests, rng)
                print(f"| {z:g} | {scenes} | {delta:+.2f} | {share['mean']:.2f} | {share['se']:.2f} | "
                      f"{share['gate']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
