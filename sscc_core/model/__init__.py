"""Layer 3 of ``sscc_core``: pre-processing, the network, its loss and augmentations, the
checkpoint, and applying a readout (per-pixel outputs -> cluster ids). Imports only the
foundation modules and :mod:`sscc_core.io`."""
