"""Layer 4 of ``sscc_core``: labelling a scene tile by tile, the label store, exports and the run
report. Imports :mod:`sscc_core.model`, :mod:`sscc_core.io` and the foundation modules."""
