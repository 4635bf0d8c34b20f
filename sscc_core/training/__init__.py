"""Layer 5 of ``sscc_core``: training (the reference trainer) and fitting the readout after it
(the label-free selection). Fitting reads readout vectors through :mod:`sscc_core.labelling`'s
labeller, so the vectors it clusters are exactly those labelling will assign."""
