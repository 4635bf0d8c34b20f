"""Layer 2 of ``sscc_core``: readers of hyperspectral formats into the canonical cube, the Zarr
cube store, mosaicking, tiling with halos, and synthetic mosaics. Imports only the foundation
modules."""
