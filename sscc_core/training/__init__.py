"""Layer 5 of ``sscc_core``: training (the reference trainer, and the Ray-free steps the Ray
trainer of ``pipelines.train`` maps over Ray: training tiles and their views, size checks, a run's
directory and pre-processing) and fitting the readout after it (the label-free selection, the
final readout fit). Fitting reads readout vectors through :mod:`sscc_core.labelling`'s labeller,
so the vectors it clusters are exactly those labelling will assign."""
