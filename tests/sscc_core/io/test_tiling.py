"""Tiling invariant: halo-tiled patches equal whole-scene patches, for every pixel and tile size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from sscc_core.io.tiling import (
    Tile,
    extract_patches,
    extract_patches_at,
    nonempty_tiles,
    pad_index,
    read_with_halo,
    tile_grid,
    tile_valid,
)

PATCH = 11
HALO = PATCH // 2


@pytest.fixture(scope="module")
def cube(indian_pines: np.ndarray) -> np.ndarray:
    """Eight real bands of Indian Pines (8-bit), (8, 145, 145) uint8 (patch memory stays small)."""
    return np.ascontiguousarray(indian_pines[::25])


def _whole_scene_patches(scene: np.ndarray) -> np.ndarray:
    """(H*W, C, P, P) reference: reflect-pad the whole scene, then cut every pixel's patch."""
    padded = np.pad(scene, ((0, 0), (HALO, HALO), (HALO, HALO)), mode="reflect")
    return extract_patches(padded, PATCH)


def _tiled_patches(arr, tile_size: int) -> np.ndarray:
    """The same patches assembled tile by tile from halo reads."""
    c, h, w = arr.shape
    out = np.empty((h, w, c, PATCH, PATCH), dtype=arr.dtype)
    for t in tile_grid(h, w, tile_size):
        block = read_with_halo(arr, t, HALO)
        assert block.shape == (c, t.height + 2 * HALO, t.width + 2 * HALO)
        patches = extract_patches(block, PATCH)
        out[t.y0 : t.y1, t.x0 : t.x1] = patches.reshape(t.height, t.width, c, PATCH, PATCH)
    return out.reshape(h * w, c, PATCH, PATCH)


def test_tile_grid_covers_scene_once_with_smaller_edge_tiles() -> None:
    tiles = tile_grid(145, 100, 64)
    cover = np.zeros((145, 100), int)
    for t in tiles:
        cover[t.y0 : t.y1, t.x0 : t.x1] += 1
    assert np.all(cover == 1)
    assert len(tiles) == 3 * 2
    assert tiles[-1] == Tile(row=2, col=1, y0=128, y1=145, x0=64, x1=100)
    assert (tiles[-1].height, tiles[-1].width) == (17, 36)
    assert tile_grid(64, 64, 32, chunks=(32, 32))[0] == Tile(0, 0, 0, 32, 0, 32)
    with pytest.raises(ValueError, match="not a multiple of the store chunk"):
        tile_grid(64, 64, 48, chunks=(32, 32))


@pytest.mark.parametrize("mode", ["reflect", "symmetric", "edge"])
def test_pad_index_matches_numpy_pad(mode: str) -> None:
    for size in (1, 2, 3, 7):
        for pad in (0, 1, 5, 17):
            expected = np.pad(np.arange(size), pad, mode=mode)
            got = pad_index(np.arange(-pad, size + pad), size, mode)
            np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("tile_size", [16, 37, 64])
def test_halo_read_equals_window_of_padded_scene(cube: np.ndarray, tile_size: int) -> None:
    padded = np.pad(cube, ((0, 0), (HALO, HALO), (HALO, HALO)), mode="reflect")
    for t in tile_grid(145, 145, tile_size):
        window = padded[:, t.y0 : t.y1 + 2 * HALO, t.x0 : t.x1 + 2 * HALO]
        np.testing.assert_array_equal(read_with_halo(cube, t, HALO), window)


@pytest.mark.parametrize("mode", ["reflect", "symmetric", "edge"])
def test_halo_wider_than_small_scene(cube: np.ndarray, mode: str) -> None:
    scene = cube[:, 20:23, 40:44]  # 3 x 4 pixels, halo 5 wraps the mirror more than once
    padded = np.pad(scene, ((0, 0), (HALO, HALO), (HALO, HALO)), mode=mode)
    for t in tile_grid(3, 4, 2):
        window = padded[:, t.y0 : t.y1 + 2 * HALO, t.x0 : t.x1 + 2 * HALO]
        np.testing.assert_array_equal(read_with_halo(scene, t, HALO, mode), window)


@pytest.mark.parametrize("tile_size", [16, 37, 64])
def test_tiled_patches_equal_whole_scene_patches(cube: np.ndarray, tile_size: int) -> None:
    np.testing.assert_array_equal(_tiled_patches(cube, tile_size), _whole_scene_patches(cube))


def test_tiled_patches_from_zarr_read_only_their_window(cube: np.ndarray, tmp_path: Path) -> None:
    arr = zarr.create_array(
        store=tmp_path / "cube.zarr", shape=cube.shape, chunks=(8, 32, 32), dtype="uint8"
    )
    arr[:] = cube
    np.testing.assert_array_equal(_tiled_patches(arr, 64), _whole_scene_patches(cube))
    t = tile_grid(145, 145, 64)[4]  # an interior tile: the read window is the tile plus halo
    block = read_with_halo(arr, t, HALO)
    interior = cube[:, t.y0 - HALO : t.y1 + HALO, t.x0 - HALO : t.x1 + HALO]
    np.testing.assert_array_equal(block, interior)


def test_extract_patches_equals_naive_loop(cube: np.ndarray) -> None:
    t = Tile(0, 0, 30, 50, 60, 77)
    block = read_with_halo(cube, t, HALO)
    patches = extract_patches(block, PATCH)
    assert patches.shape == (20 * 17, 8, PATCH, PATCH)
    for r, c in [(0, 0), (19, 16), (7, 3), (12, 16)]:
        y, x = t.y0 + r, t.x0 + c
        naive = cube[:, y - HALO : y + HALO + 1, x - HALO : x + HALO + 1]
        np.testing.assert_array_equal(patches[r * t.width + c], naive)


def test_extract_patches_at_selects_the_same_patches(cube: np.ndarray) -> None:
    t = Tile(1, 1, 37, 74, 37, 74)
    block = read_with_halo(cube, t, HALO)
    mask = cube[0, t.y0 : t.y1, t.x0 : t.x1] > 128
    coords = np.argwhere(mask)
    subset = extract_patches_at(block, coords, PATCH)
    np.testing.assert_array_equal(subset, extract_patches(block, PATCH)[mask.reshape(-1)])
    assert extract_patches_at(block, np.zeros((0, 2), int), PATCH).shape == (0, 8, PATCH, PATCH)
    with pytest.raises(ValueError, match="outside the 37 x 37 tile"):
        extract_patches_at(block, np.array([[0, 37]]), PATCH)
    with pytest.raises(ValueError, match="positive odd"):
        extract_patches(block, 4)


def test_valid_masks_and_empty_tiles() -> None:
    valid = np.zeros((100, 90), bool)
    valid[10:20, 70:75] = True
    tiles = tile_grid(100, 90, 32)
    assert tile_valid(valid, tiles[2]).shape == (32, 26)
    assert tile_valid(valid, tiles[2]).sum() == 10 * 5
    assert nonempty_tiles(valid, tiles) == [tiles[2]]


def test_read_with_halo_rejects_bad_input(cube: np.ndarray) -> None:
    with pytest.raises(ValueError, match="outside the 145 x 145 scene"):
        read_with_halo(cube, Tile(0, 0, 140, 150, 0, 10), HALO)
    with pytest.raises(ValueError, match="halo must be >= 0"):
        read_with_halo(cube, Tile(0, 0, 0, 10, 0, 10), -1)
    with pytest.raises(ValueError, match="pad mode"):
        read_with_halo(cube, Tile(0, 0, 0, 10, 0, 10), 2, mode="wrap")


def test_read_with_halo_pads_a_2d_mask_like_the_cube(cube: np.ndarray) -> None:
    mask = cube[0] > np.median(cube[0])
    whole = np.pad(mask, HALO, mode="reflect")
    for t in tile_grid(*mask.shape, 37):
        window = whole[t.y0 : t.y1 + 2 * HALO, t.x0 : t.x1 + 2 * HALO]
        np.testing.assert_array_equal(read_with_halo(mask, t, HALO), window)
    with pytest.raises(ValueError, match=r"\(band, y, x\) or \(y, x\)"):
        read_with_halo(cube[0, 0], Tile(0, 0, 0, 1, 0, 1), HALO)


def test_halo_read_inside_the_scene_is_a_copy(cube: np.ndarray) -> None:
    """A window needing no padding is returned without gathering, still never a view of the
    caller's array."""
    tile = Tile(1, 1, 10, 20, 10, 20)
    block = read_with_halo(cube, tile, 3)
    np.testing.assert_array_equal(block, cube[:, 7:23, 7:23])
    block[...] = 0
    assert cube[:, 7:23, 7:23].any()
