"""Band z-score + PCA pre-processing: equality with scikit-learn, out-of-core fits, state I/O."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from sscc_core.config import PreprocessConfig
from sscc_core.model.preprocess import (
    MomentAccumulator, Preprocessor, accumulate_lines_moments, accumulate_moments, fit_preprocessor,
    preprocessor_from_moments,
)

class ReadRecorder:
    """Wraps a real array and records the spatial size of every window read from it."""

    def __init__(self, arr):
        self.arr = arr
        self.shape = arr.shape
        self.windows: list[tuple[int, ...]] = []

    def __getitem__(self, key):
        out = self.arr[key]
        self.windows.append(out.shape[-2:])
        return out


def _assert_same_fit(a: Preprocessor, b: Preprocessor, rtol: float) -> None:
    for name in ("band_mean", "band_std", "components", "explained_variance"):
        np.testing.assert_allclose(
            getattr(a, name), getattr(b, name), rtol=rtol, atol=rtol, err_msg=name
        )
    assert a.n_pixels == b.n_pixels


def test_streaming_fit_equals_sklearn_scaler_and_pca(indian_pines: np.ndarray) -> None:
    pp = fit_preprocessor(indian_pines, None, PreprocessConfig(n_components=8), tile_size=37)
    x = indian_pines.reshape(200, -1).T.astype(np.float64)
    scaler = StandardScaler().fit(x)
    z = scaler.transform(x)
    pca = PCA(n_components=8, svd_solver="full").fit(z)

    np.testing.assert_allclose(pp.band_mean, scaler.mean_, rtol=1e-10)
    np.testing.assert_allclose(pp.band_std, scaler.scale_, rtol=1e-10)
    cosines = np.abs(np.sum(pp.components * pca.components_, axis=1))
    np.testing.assert_allclose(cosines, 1.0, atol=1e-8)
    n = x.shape[0]  # sklearn's explained variance is the ddof=1 estimate
    unbiased = pp.explained_variance * n / (n - 1)
    np.testing.assert_allclose(unbiased, pca.explained_variance_, rtol=1e-8)
    np.testing.assert_allclose(
        pp.explained_variance_ratio, pca.explained_variance_ratio_, rtol=1e-8
    )

    ours = pp.transform_pixels(x)
    ref = StandardScaler().fit_transform(pca.transform(z))
    signs = np.sign(np.sum(ours * ref, axis=0))
    np.testing.assert_allclose(ours, ref * signs, atol=1e-4)
    np.testing.assert_allclose(ours.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(ours.std(axis=0), 1.0, atol=1e-4)


def test_components_are_sign_fixed_and_orthonormal(indian_pines: np.ndarray) -> None:
    pp = fit_preprocessor(indian_pines, None)
    rows = np.arange(pp.n_components)
    assert np.all(pp.components[rows, np.abs(pp.components).argmax(axis=1)] > 0)
    np.testing.assert_allclose(pp.components @ pp.components.T, np.eye(pp.n_components), atol=1e-10)
    assert np.all(np.diff(pp.explained_variance) <= 0)


def test_transform_block_equals_transform_pixels(indian_pines: np.ndarray) -> None:
    pp = fit_preprocessor(indian_pines, None)
    block = indian_pines[:, 10:30, 40:47]
    out = pp.transform(block)
    assert out.shape == (8, 20, 7) and out.dtype == np.float32
    np.testing.assert_allclose(out.reshape(8, -1).T, pp.transform_pixels(block.reshape(200, -1).T))
    raw = pp.transform(block, whiten=False)
    np.testing.assert_allclose(raw, out * pp.comp_std[:, None, None].astype(np.float32), rtol=1e-5)


def test_zarr_tilewise_fit_equals_in_memory_fit(indian_pines: np.ndarray, tmp_path: Path) -> None:
    valid = np.ones(indian_pines.shape[1:], bool)
    valid[50:70, 100:145] = False
    cube_z = zarr.create_array(
        store=tmp_path / "cube.zarr", shape=indian_pines.shape, chunks=(200, 32, 32), dtype="uint8"
    )
    cube_z[:] = indian_pines
    valid_z = zarr.create_array(
        store=tmp_path / "valid.zarr", shape=valid.shape, chunks=(32, 32), dtype="bool"
    )
    valid_z[:] = valid
    recorder = ReadRecorder(cube_z)

    from_zarr = fit_preprocessor(recorder, valid_z, tile_size=32)
    in_memory = fit_preprocessor(indian_pines, valid, tile_size=145)

    _assert_same_fit(from_zarr, in_memory, rtol=1e-6)
    assert max(h * w for h, w in recorder.windows) <= 32 * 32  # never more than one tile read
    assert from_zarr.n_pixels == valid.sum()


def test_nodata_pixels_are_excluded(indian_pines: np.ndarray) -> None:
    cube = indian_pines.astype(np.int16)
    valid = np.ones(cube.shape[1:], bool)
    valid[:40, :60] = False
    cube[:, ~valid] = -9999
    pp = fit_preprocessor(cube, valid, tile_size=64)
    reference = fit_preprocessor(indian_pines, valid, tile_size=64)
    _assert_same_fit(pp, reference, rtol=1e-9)
    np.testing.assert_allclose(pp.band_mean, indian_pines[:, valid].mean(axis=1), rtol=1e-10)
    np.testing.assert_allclose(pp.band_std, indian_pines[:, valid].std(axis=1), rtol=1e-10)
    out = pp.transform(cube[:, :50, :70], valid[:50, :70])
    assert np.all(out[:, ~valid[:50, :70]] == 0) and np.all(np.abs(out) < 50)
    nonfinite = cube.astype(np.float32)
    nonfinite[:, :20, :60], nonfinite[:, 20:40, :60] = np.nan, np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "invalid value encountered in matmul"
        np.testing.assert_array_equal(pp.transform(nonfinite[:, :50, :70], valid[:50, :70]), out)


def test_sampled_fit_is_seeded_bounded_and_close_to_exact(indian_pines: np.ndarray) -> None:
    exact = fit_preprocessor(indian_pines, None)
    cfg = PreprocessConfig(sample_pixels=5000, seed=3)
    a = fit_preprocessor(indian_pines, None, cfg, tile_size=40, method="sample")
    b = fit_preprocessor(indian_pines, None, cfg, tile_size=40, method="sample")
    other_seed = PreprocessConfig(sample_pixels=5000, seed=4)
    c = fit_preprocessor(indian_pines, None, other_seed, tile_size=40, method="sample")
    assert a.n_pixels == 5000
    _assert_same_fit(a, b, rtol=0)
    assert not np.allclose(a.band_mean, c.band_mean)
    np.testing.assert_allclose(a.band_mean, exact.band_mean, rtol=0.05)
    assert abs(np.dot(a.components[0], exact.components[0])) > 0.99
    big = PreprocessConfig(sample_pixels=10**6)
    everything = fit_preprocessor(indian_pines, None, big, method="sample")
    _assert_same_fit(everything, exact, rtol=1e-9)


def test_state_round_trip_through_torch_weights_only(
    indian_pines: np.ndarray, tmp_path: Path
) -> None:
    pp = fit_preprocessor(indian_pines, None)
    torch.save(pp.to_state(), tmp_path / "pre.pt")
    loaded = Preprocessor.from_state(torch.load(tmp_path / "pre.pt", weights_only=True))
    _assert_same_fit(loaded, pp, rtol=0)
    block = indian_pines[:, :16, :16]
    np.testing.assert_array_equal(loaded.transform(block), pp.transform(block))
    with pytest.raises(ValueError, match="not a preprocessor state"):
        Preprocessor.from_state({"format": "something else"})


def test_band_count_mismatch_is_a_clear_error(indian_pines: np.ndarray, salinas: np.ndarray) -> None:
    pp = fit_preprocessor(indian_pines, None)
    salinas_a = salinas
    with pytest.raises(ValueError, match="cube has 204 bands but the model was fitted on 200 bands"):
        pp.transform(salinas_a[:, :8, :8])
    with pytest.raises(ValueError, match="cube has 204 bands but the model was fitted on 200 bands"):
        pp.transform_pixels(salinas_a[:, 0, :5].T)


def test_constant_band_is_guarded(indian_pines: np.ndarray) -> None:
    cube = indian_pines.copy()
    cube[17] = 42
    pp = fit_preprocessor(cube, None)
    assert pp.band_std[17] == 1.0
    np.testing.assert_allclose(pp.components[:, 17], 0.0, atol=1e-8)
    assert np.isfinite(pp.transform(cube[:, :10, :10])).all()
    assert pp.total_variance == pytest.approx(199.0)


def test_fit_without_valid_pixels_fails_clearly(indian_pines: np.ndarray) -> None:
    with pytest.raises(ValueError, match="no valid pixel"):
        fit_preprocessor(indian_pines, np.zeros(indian_pines.shape[1:], bool))
    with pytest.raises(ValueError, match="valid mask shape"):
        fit_preprocessor(indian_pines, np.ones((10, 10), bool))


def _assert_same_moments(a: MomentAccumulator, b: MomentAccumulator) -> None:
    assert a.n == b.n
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.scatter, b.scatter)


@pytest.mark.parametrize("method", ["exact", "sample"])
def test_lines_are_fitted_as_one_cube_of_their_tiles(indian_pines: np.ndarray, method: str) -> None:
    """Two lines whose tile grids stacked make one cube's grid give that cube's moments bit for
    bit: the exact fit folds every tile of every line in order, and the sample is one uniform
    draw over the valid pixels of all lines (each line its share), not a sample per line."""
    a, b = indian_pines[:, 0:32, :60], indian_pines[:, 64:96, :60]
    valid_a, valid_b = np.ones((32, 60), bool), np.ones((32, 60), bool)
    valid_a[3:20, 5:30] = False
    stacked = np.concatenate([a, b], axis=1)
    valid = np.concatenate([valid_a, valid_b], axis=0)
    n_valid = int(valid.sum())
    lines = accumulate_lines_moments([(a, valid_a), (b, valid_b)], 16, method, 1500, seed=7)
    _assert_same_moments(lines, accumulate_moments(stacked, valid, 16, method, 1500, seed=7))
    assert lines.n == (1500 if method == "sample" else n_valid)
    if method == "sample":  # the other line's pixels are in the sample: not line a's moments
        assert not np.allclose(lines.mean, accumulate_moments(a, valid_a, 16).mean, rtol=1e-3)


def test_lines_on_different_grids_fit_the_concatenated_pixels(indian_pines: np.ndarray) -> None:
    a, b = indian_pines[:, 0:40, 0:70], indian_pines[:, 90:145, 20:57]
    valid_b = np.ones(b.shape[1:], bool)
    valid_b[10:30, 4:9] = False
    pixels = np.concatenate([a.reshape(200, -1), b[:, valid_b]], axis=1)  # (B, N)
    reference = fit_preprocessor(pixels[:, None, :], None, PreprocessConfig(n_components=8))
    moments = accumulate_lines_moments([(a, None), (b, valid_b)], tile_size=24)
    _assert_same_fit(preprocessor_from_moments(moments, 8), reference, rtol=1e-9)
    assert moments.n == 40 * 70 + valid_b.sum()
    with pytest.raises(ValueError, match=r"expected \(N, 200\) spectra, got shape \(\d+, 199\)"):
        accumulate_lines_moments([(a, None), (b[:199], valid_b)], tile_size=24)
