"""Assemble the run report of a label store: label map and legend, cluster spectra, training
curves and provenance, agreement with ground truth, and the change from a previous version.

Every statistic is streamed (:mod:`sscc_core.labelling.report.stats`), the map is a tile pyramid
(:mod:`sscc_core.labelling.report.pyramid`), and every number shown is also written to ``report.json``.
A section whose input is missing or incompatible is left out with a note saying why; inputs that
make the whole report meaningless (a cube on another grid, a training run of another model)
raise ``ValueError``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

import sscc_core
from sscc_core import storage
from sscc_core.model.checkpoint import checkpoint_file, load_checkpoint
from sscc_core.labelling.export import (
    cluster_class_counts, cluster_mean_spectra, label_colormap, plot_spectra,
)
from sscc_core.labelling.labelstore import LabelStore
from sscc_core.metrics import evaluate_table
from sscc_core.labelling.report.figures import plot_spectra_grid, plot_training
from sscc_core.labelling.report.html import Section, esc, image, page, swatch, table, viewer
from sscc_core.labelling.report.pyramid import write_pyramid
from sscc_core.labelling.report.stats import (
    PixelArea, change_between, cluster_counts, pixel_area, spectra_sample,
)
from sscc_core.versioning import read_current

SPECTRA_PIXELS = 4_000_000
"""Pixel budget of the spectra pass: larger cubes are read in a seeded sample of chunks."""
TOP_FLOWS = 20
UNCHANGED_RGBA = (205, 205, 205, 255)
REPORT_FILE = "index.html"
NO_RUN = ("no training run given (--run: the training run directory or its checkpoint): training "
          "curves left out")


@dataclass(frozen=True)
class TrainingRun:
    """What the report shows of the training that produced the labels.

    Attributes:
        source: The checkpoint file read.
        model_version: The checkpoint's model version.
        epochs: Epochs completed.
        history: Per-epoch summaries (loss parts, ``clusters_used``, ``assign_entropy``, ``lr``,
            ``seconds``), as training logged them.
        selection: The label-free readout choice (criterion, choice, candidates) or ``None``.
        store: The cube store the run trained on.
    """

    source: str
    model_version: str
    epochs: int
    history: tuple[dict[str, Any], ...]
    selection: dict[str, Any] | None
    store: str


def load_training(path: str | Path) -> TrainingRun:
    """The training record of a run directory (``<storage>/<run-name>``, holding ``final``) or of
    a checkpoint (its directory or ``model.pt``).

    Raises:
        FileNotFoundError: Neither a run directory nor a checkpoint is there.
        ValueError: The checkpoint is unreadable or not an SSCC checkpoint.
    """
    p = Path(path)
    target = p / "final" if (p / "final").exists() else p
    file = checkpoint_file(target)
    if not Path(file).is_file():
        raise FileNotFoundError(f"{path}: no training run here (expected a run directory holding "
                                "final/ or a checkpoint)")
    ckpt = load_checkpoint(file)
    extra = ckpt.extra or {}
    return TrainingRun(
        source=file, model_version=ckpt.model_version, epochs=ckpt.epoch,
        history=tuple(extra.get("history") or ()), selection=extra.get("selection"),
        store=str(extra.get("store", "")),
    )


def is_report(path: str | Path) -> bool:
    """Whether ``path`` (a local folder or a URL) holds a previous report."""
    return storage.exists(storage.join(path, REPORT_FILE)) and \
        storage.exists(storage.join(path, "report.json"))


def find_training(run: str | None, labels: str | Path) -> tuple[TrainingRun | None, str]:
    """The training run to show, and the note when there is none.

    ``run`` when given (it must exist); else the checkpoint the ``current`` pointer of a
    ``sscc reprocess`` root names, when ``labels`` is one.

    Raises:
        FileNotFoundError: ``run`` names nothing.
        ValueError: ``run`` is not a readable checkpoint.
    """
    if run:
        return load_training(run), ""
    pointer = read_current(labels) if Path(labels).is_dir() else None
    checkpoint = (pointer or {}).get("checkpoint")
    if checkpoint and Path(checkpoint).exists():
        return load_training(checkpoint), ""
    return None, NO_RUN


@dataclass(frozen=True)
class ReportResult:
    """What was written.

    Attributes:
        index: The report's ``index.html``.
        notes: ``{section id: note}`` for every section left out or qualified.
    """

    index: Path
    notes: dict[str, str] = field(default_factory=dict)


def check_grid(labels: xr.DataArray, cube: xr.Dataset, cube_path: str, labels_path: str) -> None:
    """Refuse a cube that is not on the labels' grid (size or coordinates).

    Raises:
        ValueError: Different size, or the same size with other ``y``/``x`` coordinates.
    """
    grid = (int(cube.sizes["y"]), int(cube.sizes["x"]))
    if grid != labels.shape:
        raise ValueError(f"{cube_path}: cube grid {grid[0]} x {grid[1]} is not the grid of the "
                         f"labels {labels_path} ({labels.shape[0]} x {labels.shape[1]})")
    for axis in ("y", "x"):
        if not np.array_equal(cube[axis].values, labels[axis].values):
            raise ValueError(f"{cube_path}: cube and labels {labels_path} have the same size but "
                             f"different {axis} coordinates")


def check_training(run: TrainingRun, store: LabelStore) -> None:
    """Refuse the training run of another model than the one that made the labels.

    Raises:
        ValueError: The checkpoint's model version is not the label store's.
    """
    if run.model_version != store.model_version:
        raise ValueError(f"{run.source}: checkpoint of model {run.model_version}, but the labels "
                         f"{store.path} were made by model {store.model_version}")


def _fmt(value: float, digits: int = 4) -> str:
    """A metric with fixed digits."""
    return f"{value:.{digits}f}"


def _area_header(area: PixelArea | None) -> list[str]:
    """Legend column for areas (in km² for metre CRSs)."""
    if area is None:
        return []
    return ["area (km²)" if area.unit in ("metre", "meter") else f"area ({area.unit}²)"]


def _area_cell(n: int, area: PixelArea | None) -> list[str]:
    """Area of ``n`` pixels in the legend's unit."""
    if area is None:
        return []
    value = n * area.value / (1e6 if area.unit in ("metre", "meter") else 1.0)
    return [f"{value:,.4g}"]


class _Builder:
    """Holds the inputs and the colour table while the sections are made."""

    def __init__(self, out: Path, store: LabelStore, cube: xr.Dataset, cube_path: str) -> None:
        self.out, self.store, self.cube, self.cube_path = out, store, cube, cube_path
        self.labels = store.labels()
        self.k, self.nodata = store.n_clusters, store.nodata
        self.cmap = label_colormap(self.k)
        self.lut = np.array([self.cmap[c] for c in range(self.k)] + [(0, 0, 0, 0)], np.uint8)
        self.data: dict[str, Any] = {}
        self.notes: dict[str, str] = {}
        self.mapping: dict[int, int] = {}

    def codes(self, rows: slice, cols: slice) -> np.ndarray:
        """Label window with nodata as code ``k`` (transparent)."""
        lab = np.asarray(self.labels[rows, cols].values).astype(np.int32)
        lab[lab == self.nodata] = self.k
        return lab

    def section(self, sec: Section) -> Section:
        """Record a section's note and return it."""
        if sec.note:
            self.notes[sec.id] = sec.note
        return sec

    # ---- sections ----------------------------------------------------------------------------

    def map_section(self, counts: np.ndarray) -> Section:
        pyramid = write_pyramid(self.codes, *self.labels.shape, self.lut, self.out, "tiles")
        area = pixel_area(self.labels)
        transform = tuple(self.labels.rio.transform())[:6] if self.labels.rio.crs else None
        total = max(1, int(counts.sum()))
        header = ["", "cluster", "pixels", "% of labelled", *_area_header(area)]
        if self.mapping:
            header.append("matched class")
        rows = []
        for c in range(self.k):
            row = [swatch(self.cmap[c]), str(c), f"{counts[c]:,}", f"{100 * counts[c] / total:.2f}",
                   *_area_cell(int(counts[c]), area)]
            if self.mapping:
                row.append(str(self.mapping.get(c, "—")))
            rows.append(row)
        legend = f'<div class="legend" id="legend">{table(header, rows, raw=True)}</div>'
        self.data["pyramid"] = pyramid.as_dict()
        self.data["pixel_area"] = None if area is None else {"value": area.value, "unit": area.unit}
        note = "" if area else "not georeferenced in a projected CRS: areas are not given"
        body = f'<div class="maprow">{viewer(pyramid, "map", transform)}{legend}</div>'
        return self.section(Section("map", "Label map", body, note))

    def spectra_section(self, counts: np.ndarray, max_pixels: int) -> Section:
        refl = self.cube["reflectance"]
        sample = spectra_sample(refl, max_pixels)
        wavelength = self.cube["wavelength"].values if "wavelength" in self.cube.coords else None
        stats = cluster_mean_spectra(
            refl, self.labels, self.cube["valid"] if "valid" in self.cube else None, self.k,
            float(refl.attrs.get("reflectance_scale", 1.0)), nodata=self.nodata,
            windows=sample.windows,
        )
        plot_spectra(stats, wavelength, self.out / "spectra.png", self.cmap)
        plot_spectra_grid(stats, wavelength, self.out / "spectra_grid.png", self.cmap)
        self.data["spectra"] = {
            "wavelength": None if wavelength is None else [float(w) for w in wavelength],
            "count": stats.count.tolist(), "mean": _nan_to_none(stats.mean),
            "std": _nan_to_none(stats.std),
            "windows_read": len(sample.windows), "windows": sample.n_windows,
        }
        note = ("" if sample.whole else
                f"mean ± std over a random sample of {len(sample.windows)} of {sample.n_windows} "
                f"chunks ({int(stats.count.sum()):,} of {int(counts.sum()):,} labelled pixels, "
                "seed 0)")
        if wavelength is None:
            note = "; ".join(filter(None, [note, "no wavelengths in the cube: x axis is the band "
                                                 "index"]))
        body = (image("spectra.png", "cluster mean spectra", "spectra-all")
                + image("spectra_grid.png", "cluster spectra, one panel per cluster",
                        "spectra-grid"))
        return self.section(Section("spectra", "Cluster spectra (mean ± std)", body, note))

    def training_section(self, run: TrainingRun | None, missing: str) -> Section:
        if run is None:
            return self.section(Section("training", "Training", note=missing))
        self.data["training"] = {"source": run.source, "epochs": run.epochs,
                                 "history": list(run.history), "selection": run.selection}
        if not run.history:
            return self.section(Section("training", "Training", note=f"{run.source}: the "
                                        "checkpoint holds no per-epoch history"))
        plot_training(run.history, self.k, self.out / "training.png")
        last = run.history[-1]
        seconds = sum(float(h.get("seconds", 0.0)) for h in run.history)
        rows = [["epochs", run.epochs], ["training time (s)", f"{seconds:,.1f}"],
                ["last loss", f"{last['total']:.5g}"],
                ["clusters used (last epoch)", f"{int(last['clusters_used'])} of {self.k}"],
                ["assignment entropy (last epoch)", f"{last['assign_entropy']:.4f}"]]
        body = image("training.png", "training curves", "curves") + table(["", ""], rows)
        note = ""
        if int(last["clusters_used"]) < self.k:
            note = (f"the last epoch used {int(last['clusters_used'])} of K = {self.k} clusters: "
                    "the assignments collapsed onto fewer clusters")
        return self.section(Section("training", "Training", body, note))

    def truth_section(self) -> Section:
        title = "Agreement with ground truth"
        if "labels" not in self.cube:
            return self.section(Section("truth", title, note=f"{self.cube_path} has no ground "
                                        "truth (`labels`): nothing to score"))
        counts = cluster_class_counts(self.labels, self.cube["labels"], self.k)
        if not counts[:, 1:].any():
            return self.section(Section("truth", title, note="no pixel with a ground-truth class "
                                        "has a cluster: nothing to score"))
        m = evaluate_table(np.arange(1, counts.shape[1]), np.arange(self.k), counts[:, 1:].T)
        self.mapping = {int(c): int(k) for c, k in m["mapping"].items()}
        self.data["metrics"] = m
        head = table(["ACC (OA)", "AA", "kappa", "NMI", "ARI", "purity", "scored pixels"],
                     [[_fmt(m["acc"]), _fmt(m["aa"]), _fmt(m["kappa"]), _fmt(m["nmi"]),
                       _fmt(m["ari"]), _fmt(m["purity"]), f"{m['n_labelled']:,}"]],
                     cls="metrics")
        per_class = table(
            ["class", "pixels", "matched cluster", "accuracy"],
            [[c, f"{n:,}", next((k for k, v in self.mapping.items() if v == c), "—"),
              _fmt(m["per_class_acc"][c])]
             for c, n in zip(m["classes"], np.asarray(m["confusion"]).sum(1))])
        cells = []
        for i, row in enumerate(np.asarray(m["confusion_matched"])):
            share = row / max(1, sum(m["confusion"][i]))
            cells.append([f"class {m['classes'][i]}", *(
                f'<b{" class=hit" if i == j else ""} style="display:block;background:'
                f'rgba(31,119,180,{share[j]:.3f})">{v:,}</b>' if v else ""
                for j, v in enumerate(row))])
        matrix = table(["true \\ matched", *(f"class {c}" for c in m["classes"])], cells,
                       cls="matrix", raw=True)
        body = (head + "<h3>Per-class accuracy</h3>" + per_class
                + "<h3>Confusion matrix (clusters matched to classes)</h3>" + matrix)
        note = (f"scored on the {m['n_labelled']:,} pixels that have a ground-truth class and a "
                "cluster; clusters are matched one-to-one to classes (Hungarian)")
        return self.section(Section("truth", title, body, note))

    def change_section(self, previous: LabelStore | None) -> Section:
        title = "Change since the previous version"
        if previous is None:
            return self.section(Section("change", title, note="no previous version given "
                                        "(--previous): nothing to compare"))
        if previous.n_clusters != self.k:
            return self.section(Section("change", title, note=(
                f"previous version {previous.path} has K = {previous.n_clusters}, these labels "
                f"K = {self.k}: clusters cannot be matched one-to-one; not compared")))
        before = previous.labels()
        if before.shape != self.labels.shape:
            return self.section(Section("change", title, note=(
                f"previous version {previous.path} is on a {before.shape[0]} x {before.shape[1]} "
                f"grid, these labels on {self.labels.shape[0]} x {self.labels.shape[1]}; not "
                "compared")))
        change = change_between(before, self.labels, self.k, previous.nodata, self.nodata)
        lut = np.concatenate([self.lut[: self.k], [UNCHANGED_RGBA, (0, 0, 0, 0)]]).astype(np.uint8)

        def codes(rows: slice, cols: slice) -> np.ndarray:
            old = np.asarray(before[rows, cols].values).astype(np.int64)
            now = self.codes(rows, cols)
            both = (old != previous.nodata) & (now != self.k)
            kept = both & (change.match[np.where(both, old, 0)] == now)
            return np.where(both, np.where(kept, self.k, now), self.k + 1).astype(np.int32)

        pyramid = write_pyramid(codes, *self.labels.shape, lut, self.out, "change_tiles")
        both = int(change.joint.sum())
        self.data["change"] = {
            "previous": str(previous.path), "previous_model_version": previous.model_version,
            "joint": change.joint.tolist(), "match": change.match.tolist(),
            "kept": change.kept, "moved": change.moved, "only_previous": change.only_previous,
            "only_current": change.only_current,
        }
        summary = table(["labelled in both", "kept their matched cluster", "moved",
                         "% moved", "labelled only before", "labelled only now"],
                        [[f"{both:,}", f"{change.kept:,}", f"{change.moved:,}",
                          f"{100 * change.moved / max(1, both):.2f}",
                          f"{change.only_previous:,}", f"{change.only_current:,}"]])
        match_rows = [[str(i), f"{swatch(self.cmap[int(j)])} {j}", f"{change.joint[i].sum():,}",
                       f"{change.joint[i, j]:,}", f"{change.joint[i].sum() - change.joint[i, j]:,}"]
                      for i, j in enumerate(change.match)]
        matching = table(["previous cluster", "matched cluster now", "pixels before (both)",
                          "kept", "moved away"], match_rows, raw=True)
        flows = table(["previous cluster", "(matched now)", "now in cluster", "pixels"],
                      [[i, int(change.match[i]), j, f"{n:,}"]
                       for i, j, n in change.flows(TOP_FLOWS)], cls="flows")
        body = (viewer(pyramid, "change-map", None)
                + "<p>grey: pixel kept its matched cluster; colour: moved, in its new cluster's "
                  "colour; blank: labelled in one version only</p>" + summary
                + "<h3>Matching of previous clusters</h3>" + matching
                + f"<h3>Largest moves (top {TOP_FLOWS})</h3>" + flows)
        note = (f"previous version {previous.model_version} ({previous.path}); clusters matched "
                "between versions by the Hungarian assignment maximising kept pixels")
        return self.section(Section("change", title, body, note))

    def provenance_section(self, run: TrainingRun | None, created: str) -> Section:
        attrs = self.store.attrs
        rows = [["model version", attrs.get("model_version", "")],
                ["label store", str(self.store.path)],
                ["labels created", attrs.get("created", "")],
                ["input cube", self.cube_path],
                ["input recorded by the labels", attrs.get("input_store", "")],
                ["cube name / created", f"{self.cube.attrs.get('name', '')} / "
                                        f"{self.cube.attrs.get('created', '')}"],
                ["grid", f"{self.labels.shape[0]:,} x {self.labels.shape[1]:,} pixels, "
                         f"{int(self.cube.sizes.get('band', 0))} bands"],
                ["K (clusters)", self.k], ["tiles labelled", len(self.store.done_tiles())],
                ["sscc version (labels / report)",
                 f"{attrs.get('sscc_version', '')} / {sscc_core.__version__}"],
                ["report created", created]]
        if run is not None:
            rows += [["checkpoint", run.source], ["trained on", run.store]]
        body = table(["", ""], rows)
        if run is not None and run.selection:
            choice = run.selection.get("choice", {})
            body += ("<h3>Label-free choices recorded in the checkpoint</h3>"
                     f"<p>criterion: {esc(run.selection.get('criterion', ''))}</p>"
                     + table(["choice", "value"], sorted(choice.items())))
            cands = run.selection.get("candidates") or []
            if cands:
                keys = list(dict.fromkeys(k for c in cands for k in c))  # rows differ by kind
                body += table(keys, [[c.get(k, "") for k in keys] for c in cands], cls="cands")
        config = json.dumps(attrs.get("config") or {}, indent=1, sort_keys=True)
        body += f"<details><summary>configuration</summary><pre>{esc(config)}</pre></details>"
        return self.section(Section("provenance", "Provenance", body))


def write_report(
    out: Path,
    store: LabelStore,
    cube: xr.Dataset,
    *,
    cube_path: str,
    training: TrainingRun | None = None,
    training_missing: str = NO_RUN,
    previous: LabelStore | None = None,
    spectra_pixels: int = SPECTRA_PIXELS,
) -> ReportResult:
    """Write the report of a label store into the folder ``out`` (created; the caller makes the
    write atomic, e.g. with :func:`sscc_core.io.store.atomic_output`).

    Args:
        out: Report folder: ``index.html``, ``report.json``, PNG figures and the map tiles.
        store: A complete label store.
        cube: The cube the labels were made from (:func:`sscc_core.io.store.open_cube`).
        cube_path: Its path, as shown in the report.
        training: The training run that made the labels' model, or ``None``.
        training_missing: The note shown when ``training`` is ``None``.
        previous: A previous version's label store to compare with, or ``None``.
        spectra_pixels: Pixel budget of the spectra pass (a larger cube is sampled by chunks).

    Returns:
        The :class:`ReportResult`.

    Raises:
        ValueError: The cube is not on the labels' grid, or ``training`` is the run of another
            model version.
    """
    b = _Builder(out, store, cube, cube_path)
    check_grid(b.labels, cube, cube_path, str(store.path))
    if training is not None:
        check_training(training, store)
    out.mkdir(parents=True, exist_ok=True)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    counts = cluster_counts(b.labels, b.k, b.nodata)
    b.data["counts"] = counts.tolist()
    truth = b.truth_section()  # first: the legend shows each cluster's matched class
    sections = [b.map_section(counts), b.spectra_section(counts, spectra_pixels),
                b.training_section(training, training_missing), truth,
                b.change_section(previous), b.provenance_section(training, created)]
    b.data.update(model_version=store.model_version, n_clusters=b.k, created=created,
                  shape=list(b.labels.shape), notes=b.notes)
    (out / "report.json").write_text(json.dumps(b.data, default=_jsonable) + "\n")
    index = out / REPORT_FILE
    h, w = b.labels.shape
    subtitle = (f"model {store.model_version} · {h:,} x {w:,} pixels · K = {b.k} · "
                f"{int(counts.sum()):,} labelled pixels · report created {created}")
    name = cube.attrs.get("name") or Path(cube_path).stem
    index.write_text(page(f"SSCC run report: {name}", subtitle, sections))
    return ReportResult(index=index, notes=dict(b.notes))


def _nan_to_none(values: np.ndarray) -> list[Any]:
    """Nested lists of a float array with NaN (empty clusters) as ``None`` (JSON null)."""
    return np.where(np.isnan(values), None, values).tolist()


def _jsonable(obj: Any) -> Any:
    """JSON hook for numpy scalars and arrays."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
