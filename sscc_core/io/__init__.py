"""Readers of hyperspectral formats into the canonical cube, and the Zarr store layout."""
