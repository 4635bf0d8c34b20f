"""The held-out tests' gate, applied to two sets of runs, and how often it fails when nothing changed.

Label-scored development script (docs/RESULTS.md, *How often the gate fails when nothing
changed*); not in the package. A held-out test compares the shipped configuration's runs with a
changed configuration's on the same scenes and seeds and adopts the change only if the mean over
the scenes is higher and no scene drops by more than a tolerance. From the thirteenth test the
mean gain must also be significant: its one-sided p-value under a permutation test (the runs of
each scene relabelled shipped or changed at random, scenes independently, ``PERMUTATIONS`` times)
must be below ``ALPHA``, so that a change with no effect passes this part one time in eighty
whatever the runs' distribution (they are bimodal: a seed whose rule keeps a wrong candidate loses
0.1-0.3). Two tolerances of a scene's drop are computed:

- ``spread`` (tests one to twelve): the shipped runs' seed spread (population std);
- ``se`` (from the thirteenth test): ``max(FLOOR, Z * sqrt((s_a**2 + s_b**2) / n))``, twice
  the standard error of the difference of the two means (sample stds, ``n`` seeds each), with a
  floor for scenes whose runs all agree.

Passing the same configuration's runs at other seeds as ``--changed`` measures the gate's false
failures: a scene failing there drops by seed noise alone.

Each file is the output of ``candidates.py`` (the shipped rule's choice: ``chosen_by_scale
["balanced"]`` where present, else ``chosen``) or of ``cross_network.py --scene`` (the most
agreeing candidate's ``scene_acc``); a scene is the file's scene store (or bundled name) and
protocol.

Usage (from the repository root)::

    .venv/bin/python docs/experiments/held_out_gate.py --shipped 'A/*.json' --changed 'B/*.json'
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
from pathlib import Path

import numpy as np

FLOOR = 0.02  # tolerance of the ``se`` rule where both configurations' seeds agree, ACC
Z = 2.0  # standard errors of the difference that the ``se`` rule tolerates
ALPHA = 0.0125  # one-sided level of the test on the mean gain: 0.025 split over the two tests of one change
PERMUTATIONS = 20_000  # random relabellings of the permutation test (generator seed 0)


def choice_acc(doc: dict) -> float:
    """Scene ACC of the rule's choice in one run's file."""
    if "chosen" in doc:
        return float(doc.get("chosen_by_scale", {}).get("balanced", doc["chosen"])["acc"])
    return float(max(doc["rows"], key=lambda r: r["agreement"])["scene_acc"])


def by_scene(pattern: str) -> dict[str, dict[int, float]]:
    """``{scene: {seed: ACC of the rule's choice}}`` over the files matching ``pattern``."""
    out: dict[str, dict[int, float]] = collections.defaultdict(dict)
    for path in sorted(glob.glob(pattern)):
        doc = json.loads(Path(path).read_text())
        scene = f"{Path(doc['spec']).name.removesuffix('.zarr')}|{doc['protocol']}"
        out[scene][int(doc["seed"])] = choice_acc(doc)
    return out


def tolerances(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """The two rules' tolerated drop for shipped runs ``a`` and changed runs ``b`` (ACC)."""
    se = np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / min(a.size, b.size))
    return {"spread": float(a.std()), "se": float(max(FLOOR, Z * se))}


def gate(shipped: dict[str, dict[int, float]], changed: dict[str, dict[int, float]]) -> dict:
    """Per scene the two means and each rule's verdict; over scenes the means and the failures."""
    rows, fails = [], collections.Counter()
    scenes = sorted(set(shipped) & set(changed))
    if not scenes:
        raise SystemExit(f"held_out_gate: no scene has runs of both configurations "
                         f"(shipped: {sorted(shipped) or 'none'}; changed: {sorted(changed) or 'none'})")
    for scene in scenes:
        a, b = np.array(list(shipped[scene].values())), np.array(list(changed[scene].values()))
        tol = tolerances(a, b)
        drop = float(a.mean() - b.mean())
        verdict = {rule: drop > t for rule, t in tol.items()}
        fails.update(rule for rule, bad in verdict.items() if bad)
        rows.append({"scene": scene, "shipped": a.tolist(), "changed": b.tolist(), "drop": drop,
                     "tolerance": tol, "fails": verdict})
    gain = float(np.mean([-r["drop"] for r in rows]))
    p = permutation_p([r["shipped"] for r in rows], [r["changed"] for r in rows], gain)
    return {"rows": rows, "fails": {rule: fails[rule] for rule in ("spread", "se")},
            "shipped_mean": float(np.mean([np.mean(r["shipped"]) for r in rows])),
            "changed_mean": float(np.mean([np.mean(r["changed"]) for r in rows])),
            "gain": gain, "p": p, "passes": p < ALPHA and fails["se"] == 0}


def permutation_p(shipped: list[list[float]], changed: list[list[float]], gain: float) -> float:
    """One-sided p-value of the mean gain over scenes: the share of random relabellings of each
    scene's runs (scenes independently) whose mean gain is at least ``gain``."""
    rng = np.random.default_rng(0)
    null = np.zeros(PERMUTATIONS)
    for a, b in zip(shipped, changed):
        runs = np.array(a + b)
        order = rng.random((PERMUTATIONS, runs.size)).argsort(axis=1)
        relabelled = runs[order]
        null += relabelled[:, len(a):].mean(axis=1) - relabelled[:, :len(a)].mean(axis=1)
    null /= len(shipped)
    return float((1 + np.sum(null >= gain - 1e-12)) / (PERMUTATIONS + 1))


def report(result: dict) -> str:
    """A markdown table of :func:`gate`'s result."""
    lines = ["| scene | shipped | changed | drop | spread rule | se rule |", "| --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        a = np.array(r["shipped"])
        marks = {rule: f"{r['tolerance'][rule]:.3f}{' **fails**' if r['fails'][rule] else ''}"
                 for rule in ("spread", "se")}
        lines.append(f"| {r['scene']} | {a.mean():.3f} ± {a.std():.3f} | {np.mean(r['changed']):.3f} | "
                     f"{r['drop']:+.3f} | {marks['spread']} | {marks['se']} |")
    lines.append(f"\n{len(result['rows'])} scenes; mean shipped {result['shipped_mean']:.3f}, "
                 f"changed {result['changed_mean']:.3f}; gain {result['gain']:+.3f} "
                 f"(permutation p {result['p']:.3f}, the gate needs < {ALPHA}); scenes failing: "
                 f"spread rule {result['fails']['spread']}, se rule {result['fails']['se']}. "
                 f"The gate of the thirteenth test {'passes' if result['passes'] else 'fails'}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shipped", required=True, help="glob of the shipped configuration's files")
    parser.add_argument("--changed", required=True, help="glob of the changed configuration's files")
    args = parser.parse_args()
    print(report(gate(by_scene(args.shipped), by_scene(args.changed))))


if __name__ == "__main__":
    main()
