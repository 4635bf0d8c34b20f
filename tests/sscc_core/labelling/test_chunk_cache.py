"""The decoded-chunk cache the labelling readers read through: values equal the array's, its
size is bounded, and a stripe sweep decodes each chunk once."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from sscc_core.io import synthetic
from sscc_core.io.tiling import read_with_halo, tile_grid
from sscc_core.labelling.chunk_cache import ChunkCache, cache_capacity
from sscc_core.labelling.plan import read_segments


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    """A 70 x 90 synthetic mosaic of real Salinas-A spectra, chunks of 32 pixels."""
    path = tmp_path_factory.mktemp("cache") / "tiny.zarr"
    return synthetic.write_synthetic(synthetic.SynthSpec(height=70, width=90, seed=3), path, chunk=32)


@pytest.mark.parametrize("tile_size", [16, 32, 64])
def test_chunk_cache_reads_equal_the_array(tiny_store, tile_size):
    group = zarr.open_group(tiny_store, mode="r")
    rng = np.random.default_rng(tile_size)
    for name in ("reflectance", "valid"):
        array = group[name]
        whole = array[:]
        cache = ChunkCache(array, tile_size)
        assert cache.capacity == (tile_size // 32 + 2) ** 2
        for _ in range(25):
            y0, x0 = rng.integers(0, 70), rng.integers(0, 90)
            y1, x1 = y0 + rng.integers(1, 60), x0 + rng.integers(1, 60)
            key = (Ellipsis, slice(y0, y1), slice(x0, x1))
            np.testing.assert_array_equal(cache[key], whole[key])
            assert len(cache.chunks) <= cache.capacity
        np.testing.assert_array_equal(cache[..., 5:5, 0:3], whole[..., 5:5, 0:3])
    refl = ChunkCache(group["reflectance"], 32)
    np.testing.assert_array_equal(refl[3, 10:20, 4:9], group["reflectance"][3, 10:20, 4:9])


def test_stripe_sweep_decodes_each_chunk_once(tmp_path):
    """Reading every tile of a 6 x 8 chunk grid with a halo, in the segments' order through a
    cache of the stripe's width, decodes each of the 48 chunks once per stripe that reaches it
    (the two chunk columns beside the stripes' border twice: 48 + 12); the same cache of one
    tile's width in row-major order decodes them about 3 times."""
    path = synthetic.write_synthetic(synthetic.SynthSpec(height=96, width=128, seed=1),
                                     tmp_path / "grid.zarr", chunk=16)
    valid = zarr.open_group(path, mode="r")["valid"]
    tiles = tile_grid(96, 128, 16)
    assert cache_capacity((16, 16), 16, 4) == 3 * 6
    striped = ChunkCache(valid, 16, stripe_tiles=4)
    for segment in read_segments(tiles, stripe_tiles=4, segment_rows=16):
        for tile in segment:
            np.testing.assert_array_equal(read_with_halo(striped, tile, 3),
                                          read_with_halo(valid, tile, 3))
    assert striped.decoded == 48 + 2 * 6
    plain = ChunkCache(valid, 16)
    for tile in tiles:
        read_with_halo(plain, tile, 3)
    assert plain.decoded > 2.5 * 48
