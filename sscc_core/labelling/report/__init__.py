"""The run report a person opens in a browser (``sscc report``): a self-contained static folder
with the label map (zoomable tile pyramid) and its legend, cluster spectra, training curves and
provenance, agreement with ground truth, and the change from a previous version.

Modules: :mod:`~sscc_core.labelling.report.stats` (streamed statistics), :mod:`~sscc_core.labelling.report.pyramid`
(map tiles), :mod:`~sscc_core.labelling.report.figures` (matplotlib figures), :mod:`~sscc_core.labelling.report.html`
(the page and its inline viewer), :mod:`~sscc_core.labelling.report.build` (assembly).
"""

from sscc_core.labelling.report.build import (
    NO_RUN, REPORT_FILE, SPECTRA_PIXELS, ReportResult, TrainingRun, check_grid, find_training,
    is_report, load_training, write_report,
)

__all__ = ["NO_RUN", "REPORT_FILE", "SPECTRA_PIXELS", "ReportResult", "TrainingRun", "check_grid",
           "find_training", "is_report", "load_training", "write_report"]
