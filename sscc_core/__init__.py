"""Spectral-Spatial Contrastive Clustering (SSCC) of hyperspectral images: the pure library.

Nothing in this package imports Ray; the Ray entry points live in :mod:`pipelines`.
"""

__version__ = "0.1.0"
