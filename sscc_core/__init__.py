"""Spectral-Spatial Contrastive Clustering (SSCC) of hyperspectral images: the pure library.

Nothing in this package imports Ray; the Ray entry points live in :mod:`pipelines`. Its layers,
lowest first, each importing only from itself and the layers below (``tests/test_layers.py``):

1. foundation: :mod:`~sscc_core.config`, :mod:`~sscc_core.storage`, :mod:`~sscc_core.metrics`,
   :mod:`~sscc_core.profiling`, :mod:`~sscc_core.versioning`;
2. :mod:`sscc_core.io`: readers, the cube store, mosaics, tiling, synthetic scenes;
3. :mod:`sscc_core.model`: pre-processing, network, loss, augmentation, checkpoint, applying a
   readout;
4. :mod:`sscc_core.labelling`: labelling tile by tile, the label store, exports, the run report;
5. :mod:`sscc_core.training`: the trainer and fitting the readout after training;
6. :mod:`sscc_core.accuracy`: the accuracy protocol harness and suite.
"""

__version__ = "0.1.0"
