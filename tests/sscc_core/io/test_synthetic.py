"""Synthetic mosaics from real spectra: determinism across windowings, ground truth, nodata,
store layout, and the ``sscc synth`` CLI (Ray tasks) against the in-process writer."""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from pipelines import synth
from sscc_core.io import synthetic as S
from sscc_core.io import store

VARS = ("reflectance", "valid", "labels", "abundance", "mix_class")


@pytest.fixture(scope="module")
def library() -> S.ClassLibrary:
    return S.class_library("salinasA")


def small_spec(**changes) -> S.SynthSpec:
    """150 x 200 mosaic with small fields and lines so every feature occurs."""
    params = dict(height=150, width=200, seed=7, field_size=40, line_width=70, max_gap=6,
                  drop_line_p=0.03, mix_width=2.0, snr=100.0)
    params.update(changes)
    return S.SynthSpec(**params)


def arrays(ds) -> dict[str, np.ndarray]:
    return {v: np.asarray(ds[v].values) for v in VARS}


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    for v in VARS:
        assert a[v].dtype == b[v].dtype, v
        np.testing.assert_array_equal(a[v], b[v], err_msg=v)


def test_library_pools_are_the_labelled_pixels(library: S.ClassLibrary) -> None:
    assert library.n_classes == 6 and library.n_bands == 204
    assert library.pixels.shape == (5348, 204)
    assert library.source_class_ids == (1, 10, 11, 12, 13, 14)
    for c in range(1, 7):
        np.testing.assert_allclose(library.means[c - 1], library.pool(c).mean(axis=0))


def test_any_windowing_and_order_gives_identical_stores(tmp_path: Path, library) -> None:
    spec = small_spec()
    whole = arrays(S.synthetic_window(spec, library, 0, spec.height, 0, spec.width))
    n32 = len(S.windows(spec, 32))
    order = list(np.random.default_rng(0).permutation(n32))
    a = S.write_synthetic(spec, tmp_path / "a.zarr", library, chunk=32, order=order)
    b = S.write_synthetic(spec, tmp_path / "b.zarr", library, chunk=48, shard=96)
    assert_same(arrays(store.open_cube(a)), whole)
    assert_same(arrays(store.open_cube(b)), whole)
    # An unaligned window equals the same crop of the whole mosaic.
    crop = arrays(S.synthetic_window(spec, library, 37, 101, 13, 150))
    assert_same(crop, {v: x[..., 37:101, 13:150] for v, x in whole.items()})


def test_seed_changes_everything(library) -> None:
    a = arrays(S.synthetic_window(small_spec(), library, 0, 150, 0, 200))
    b = arrays(S.synthetic_window(small_spec(seed=8), library, 0, 150, 0, 200))
    assert (a["labels"] != b["labels"]).mean() > 0.3
    assert (a["reflectance"] != b["reflectance"]).mean() > 0.9


def test_pure_pixels_are_real_pixels_of_their_class(library) -> None:
    spec = small_spec(snr=math.inf)
    win = arrays(S.synthetic_window(spec, library, 0, spec.height, 0, spec.width))
    refl = win["reflectance"].reshape(204, -1).T
    labels, mix, ab = win["labels"].ravel(), win["mix_class"].ravel(), win["abundance"].ravel()
    pure = win["valid"].ravel() & (mix == 0)
    assert set(np.unique(labels[pure])) == set(range(1, 7))
    np.testing.assert_array_equal(ab[pure], 1.0)
    pools = {c: {row.tobytes() for row in library.pool(c).astype(np.int16)} for c in range(1, 7)}
    assert all(refl[i].tobytes() in pools[labels[i]] for i in np.flatnonzero(pure))
    # Mixed pixels: another class, abundance in [0.5, 1), within mix_width of that class's field.
    mixed = np.flatnonzero(win["valid"].ravel() & (mix > 0))
    assert 0.01 < mixed.size / pure.sum() < 0.3
    assert (mix[mixed] != labels[mixed]).all()
    assert (ab[mixed] >= 0.5).all() and (ab[mixed] < 1).all()
    near, _, _ = S.field_layout(spec, 6, 0, spec.height, 0, spec.width)
    r = int(spec.mix_width) + 1
    padded = np.pad(near, r, constant_values=0)
    ys, xs = np.unravel_index(mixed, near.shape)
    at_edge = [(padded[y : y + 2 * r + 1, x : x + 2 * r + 1] == mix[i]).any()
               for i, y, x in zip(mixed, ys, xs)]
    assert np.mean(at_edge) > 0.99


def write_layout(tmp_path: Path) -> Path:
    """A 30 x 40 class map: ids 3 and 5 above ids 9 and 12 (rows 0-14 / 15-29), the left and
    right pairs split by an unlabelled column 20."""
    gt = np.zeros((30, 40), dtype=np.uint8)
    gt[:15, :20], gt[:15, 21:], gt[15:, :20], gt[15:, 21:] = 3, 5, 9, 12
    path = tmp_path / "gt.mat"
    scipy.io.savemat(path, {"gt": gt})
    return path


def test_layout_classes_are_distinct_or_use_every_library_class() -> None:
    few = S.layout_classes(4, 6, seed=1)
    assert len(set(few.tolist())) == 4 and set(few.tolist()) <= set(range(1, 7))
    many = S.layout_classes(9, 6, seed=1)
    assert len(many) == 9 and set(many.tolist()) == set(range(1, 7))
    np.testing.assert_array_equal(S.layout_classes(9, 6, seed=1), many)
    assert not np.array_equal(S.layout_classes(9, 6, seed=2), many)


def test_layout_scene_follows_the_class_map_in_any_window(tmp_path: Path, library) -> None:
    path = write_layout(tmp_path)
    spec = S.SynthSpec(height=26, width=36, seed=4, snr=math.inf, max_gap=0, drop_line_p=0,
                       layout=str(path), layout_origin=(2, 3), texture_length=3.0)
    whole = arrays(S.synthetic_window(spec, library, 0, 26, 0, 36))
    classes = S.layout_fields(spec, library.n_classes)[3]
    assert sorted(classes) == [3, 5, 9, 12] and len(set(classes.values())) == 4
    gt = scipy.io.loadmat(path)["gt"][2:28, 3:39]
    expected = np.vectorize(lambda v: classes.get(int(v), 0))(gt)
    np.testing.assert_array_equal(whole["labels"], expected)
    np.testing.assert_array_equal(whole["valid"], gt > 0)  # unlabelled column -> nodata
    # Edges: the distance to the nearest pixel of another class, less half a pixel, under
    # mix_width 2 mixes: map (14, 8) is 1 px above class 9, map (7, 19) 2 px left of class 5
    # (across the unlabelled column), map (12, 8) 3 px above class 9 stays pure.
    edges = [((12, 5), 9, 0.625), ((5, 16), 5, 0.875), ((10, 5), None, 1.0)]
    for (y, x), other, abundance in edges:
        assert whole["mix_class"][y, x] == (classes[other] if other else 0)
        assert whole["abundance"][y, x] == pytest.approx(abundance)
    pure = whole["valid"] & (whole["mix_class"] == 0)
    refl = whole["reflectance"].transpose(1, 2, 0)
    pools = {c: {row.tobytes() for row in library.pool(c).astype(np.int16)}
             for c in classes.values()}
    assert all(refl[y, x].tobytes() in pools[whole["labels"][y, x]]
               for y, x in zip(*np.nonzero(pure)))
    # Any window, and a store written in 16-px chunks, equal the whole mosaic.
    crop = arrays(S.synthetic_window(spec, library, 7, 20, 9, 30))
    assert_same(crop, {v: a[..., 7:20, 9:30] for v, a in whole.items()})
    ds = store.open_cube(S.write_synthetic(spec, tmp_path / "l.zarr", library, chunk=16))
    assert_same(arrays(ds), whole)
    assert ds.attrs["layout_classes"] == {str(k): v for k, v in classes.items()}
    assert ds.attrs["name"] == "synthetic-salinasA-gt-r2c3-seed4"
    # With a background, the unlabelled column holds real unlabelled pixels of the source instead.
    filled = replace(spec, layout_unlabelled="background")
    back = arrays(S.synthetic_window(filled, library, 0, 26, 0, 36))
    unlabelled = gt == 0
    assert back["valid"].all() and (back["labels"][unlabelled] == 0).all()
    assert (back["abundance"][unlabelled] == 0).all() and (back["mix_class"][unlabelled] == 0).all()
    pool = {row.tobytes() for row in library.background.astype(np.int16)}
    assert len(pool) > 1000
    assert all(back["reflectance"][:, y, x].tobytes() in pool
               for y, x in zip(*np.nonzero(unlabelled)))
    filled_ds = store.open_cube(S.write_synthetic(filled, tmp_path / "bg.zarr", library, chunk=16))
    assert filled_ds.attrs["name"] == "synthetic-salinasA-gt-r2c3-bg-seed4"
    for v in VARS:  # the labelled pixels are unchanged
        np.testing.assert_array_equal(back[v][..., ~unlabelled], whole[v][..., ~unlabelled],
                                      err_msg=v)


def test_layout_summary_counts_the_crops_labelled_pixels_and_classes(tmp_path: Path, library) -> None:
    path = write_layout(tmp_path)
    spec = S.SynthSpec(height=20, width=30, seed=4, layout=str(path), layout_origin=(10, 5))
    assert S.layout_summary(spec, 6) == (  # rows 10:30 x columns 5:35 less column 20; ids 3 5 9 12
        f"layout rows 10:30, columns 5:35 of {path}: 580 labelled pixels (97%) in 4 classes, "
        "the largest 38.8% of them; unlabelled pixels are nodata")  # id 9: 15 rows x 15 columns
    assert S.layout_fields(spec, 6) is S.layout_fields(spec, 6)  # once per process, not per window
    assert f"{path}: 580 labelled pixels (97%) in 2 classes, " in S.layout_summary(spec, 2)  # 4 ids, 2 classes


def test_layout_cli_errors(tmp_path: Path, capsys) -> None:
    path = str(write_layout(tmp_path))
    out = tmp_path / "m.zarr"
    cases = [
        (["--size-gb", "1"], "--size-gb: not with --layout"),
        (["--layout-origin", "30", "0"],
         "--layout-origin: (30, 0) is outside the 30 x 40 class map"),
        (["--layout-origin", "20", "0", "--height", "20"],
         "synthetic layout: rows 20:40, columns 0:40 leave the 30 x 40 class map"),
        (["--layout-origin", "0", "20", "--width", "1"],
         f"synthetic layout: rows 0:30, columns 20:21 of {path} label 0 pixels in 0 class(es); "
         "a clustering bench needs at least 2 classes"),
        (["--height", "15", "--width", "20"],  # id 3 alone
         f"synthetic layout: rows 0:15, columns 0:20 of {path} label 300 pixels in 1 class(es); "
         "a clustering bench needs at least 2 classes"),
        (["--source", "jasper_ridge", "--layout-unlabelled", "background"],
         "synthetic layout_unlabelled: jasper_ridge labels every pixel"),
    ]
    for extra, message in cases:
        assert synth.main(["--out", str(out), "--layout", path, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("sscc synth: error: ") and message in err, (extra, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gt.mat"]


def test_texture_field_is_uniform_smooth_and_the_same_in_any_window() -> None:
    spec = small_spec(texture_length=8.0)
    u = S.texture_field(spec, 0, 256, 0, 256)
    assert 0 < u.min() and u.max() < 1
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):  # uniform marginal (1,024 lattice values here)
        assert abs((u < q).mean() - q) < 0.05, q
    lag = lambda d: np.corrcoef(u[:, :-d].ravel(), u[:, d:].ravel())[0, 1]
    assert lag(1) > 0.95 and lag(32) < 0.1
    np.testing.assert_array_equal(S.texture_field(spec, 37, 101, 13, 150), u[37:101, 13:150])
    with pytest.raises(ValueError, match=r"^texture_field: needs texture_length > 0, got 0.0$"):
        S.texture_field(small_spec(), 0, 4, 0, 4)
    with pytest.raises(ValueError, match=r"^synthetic texture_length: must be >= 0 pixels \(0 for "
                       r"no texture\), got -1.0$"):
        small_spec(texture_length=-1.0)


def test_textured_fields_vary_gradually_with_real_pixels_of_their_class(library) -> None:
    for c in range(1, 7):  # each class's ordered pool is a permutation of that pool
        lo, hi = library.offsets[c - 1], library.offsets[c]
        np.testing.assert_array_equal(np.sort(library.order[lo:hi]), np.arange(lo, hi))
    spec = small_spec(snr=math.inf, texture_length=8.0)
    whole = arrays(S.synthetic_window(spec, library, 0, spec.height, 0, spec.width))
    crop = arrays(S.synthetic_window(spec, library, 37, 101, 13, 150))
    assert_same(crop, {v: x[..., 37:101, 13:150] for v, x in whole.items()})
    plain = arrays(S.synthetic_window(small_spec(snr=math.inf), library, 0, spec.height, 0, spec.width))
    np.testing.assert_array_equal(whole["labels"], plain["labels"])  # the same fields

    def neighbour_step(win: dict[str, np.ndarray]) -> float:
        """Mean squared spectral difference of horizontally adjacent pure pixels of one class."""
        refl = win["reflectance"].astype(np.float64)
        pure = win["valid"] & (win["mix_class"] == 0)
        pair = pure[:, :-1] & pure[:, 1:] & (win["labels"][:, :-1] == win["labels"][:, 1:])
        return float(((refl[:, :, 1:] - refl[:, :, :-1]) ** 2).sum(0)[pair].mean())

    assert neighbour_step(whole) < 0.6 * neighbour_step(plain)  # 0.45 measured: PC1 is ordered, the rest is not
    refl = whole["reflectance"].reshape(204, -1).T
    labels, pure = whole["labels"].ravel(), (whole["valid"] & (whole["mix_class"] == 0)).ravel()
    pools = {c: {row.tobytes() for row in library.pool(c).astype(np.int16)} for c in range(1, 7)}
    assert all(refl[i].tobytes() in pools[labels[i]] for i in np.flatnonzero(pure))


def test_abundance_scene_mixes_every_class_by_smooth_abundances(library) -> None:
    spec = small_spec(snr=math.inf, dtype="float32", abundance_length=12.0, texture_length=8.0)
    whole = arrays(S.synthetic_window(spec, library, 0, spec.height, 0, spec.width))
    crop = arrays(S.synthetic_window(spec, library, 37, 101, 13, 150))
    assert_same(crop, {v: x[..., 37:101, 13:150] for v, x in whole.items()})
    abund = S.abundances(spec, 6, 0, spec.height, 0, spec.width)
    assert abund.shape == (6, 150, 200) and (abund > 0).all()
    np.testing.assert_allclose(abund.sum(axis=0), 1.0)
    # Reference: each pixel is sum_c a_c * (class c's pool pixel at the texture's quantile).
    u = np.minimum(S.texture_field(spec, 0, spec.height, 0, spec.width), 1 - 1e-12)
    expected = np.zeros((150, 200, 204))
    for c in range(1, 7):
        lo, n = library.offsets[c - 1], library.offsets[c] - library.offsets[c - 1]
        expected += abund[c - 1][..., None] * library.pixels[library.order[lo + (u * n).astype(int)]]
    valid = whole["valid"]
    assert 0.8 < valid.mean() < 1  # the nodata stripes are still cut
    np.testing.assert_allclose(whole["reflectance"].transpose(1, 2, 0)[valid], expected[valid],
                               rtol=1e-5, atol=1e-2)
    # Ground truth: the most abundant class, its fraction, the second most abundant class.
    order = np.argsort(-abund, axis=0)
    np.testing.assert_array_equal(whole["labels"][valid], order[0][valid] + 1)
    np.testing.assert_array_equal(whole["mix_class"][valid], order[1][valid] + 1)
    np.testing.assert_allclose(whole["abundance"][valid], abund.max(axis=0)[valid], rtol=1e-6)
    assert set(np.unique(whole["labels"][valid])) == set(range(1, 7))
    # Smooth over about 12 px: neighbours share their dominant class, far pixels do not.
    a0 = abund[0]
    lag = lambda d: np.corrcoef(a0[:, :-d].ravel(), a0[:, d:].ravel())[0, 1]
    assert lag(1) > 0.9 and lag(48) < 0.3
    # Sharper softmax, purer pixels; the dominant class's fraction is below 1 somewhere.
    soft = S.abundances(replace(spec, abundance_sharpness=2.0), 6, 0, 150, 0, 200).max(axis=0)
    assert np.median(soft) < np.median(abund.max(axis=0)) < 1
    # Field scenes are untouched by the new parameters' defaults: byte for byte what the code
    # before the abundance option (6ba34ce) wrote for a plain and a textured field scene.
    plain = small_spec()
    assert plain.abundance_length == 0 and S.field_layout(plain, 6, 0, 8, 0, 8)[0].dtype == np.int16
    digest = hashlib.sha256()
    for field_spec in (plain, small_spec(texture_length=8.0)):
        window = arrays(S.synthetic_window(field_spec, library, 0, 150, 0, 200))
        for v in VARS:
            digest.update(np.ascontiguousarray(window[v]).tobytes())
    assert digest.hexdigest()[:16] == "d6fcfeb568686d9a"


def test_abundance_scene_errors(tmp_path: Path, capsys) -> None:
    with pytest.raises(ValueError, match=r"^synthetic abundance_length: must be >= 0 pixels \(0 "
                       r"for fields\), got -1.0$"):
        small_spec(abundance_length=-1.0)
    with pytest.raises(ValueError, match=r"^synthetic abundance_sharpness: must be a finite "
                       r"number > 0, got 0.0$"):
        small_spec(abundance_length=8.0, abundance_sharpness=0.0)
    with pytest.raises(ValueError, match=r"^synthetic abundance_length: smooth abundances replace "
                       r"the fields, so not with a layout \(gt.mat\)$"):
        small_spec(abundance_length=8.0, layout="gt.mat")
    with pytest.raises(ValueError, match=r"^abundances: needs abundance_length > 0, got 0.0$"):
        S.abundances(small_spec(), 6, 0, 4, 0, 4)
    path = str(write_layout(tmp_path))
    out = tmp_path / "m.zarr"
    argv = ["--out", str(out), "--height", "30", "--width", "40", "--abundance-length", "8"]
    assert synth.main([*argv, "--abundance-sharpness", "-1"]) == 2
    assert "synthetic abundance_sharpness: must be a finite number > 0" in capsys.readouterr().err
    assert synth.main([*argv, "--layout", path]) == 2
    assert "smooth abundances replace the fields" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gt.mat"]


def test_noisy_pure_pixels_stay_nearest_their_class(library) -> None:
    spec = small_spec(snr=100.0)
    win = arrays(S.synthetic_window(spec, library, 0, spec.height, 0, spec.width))
    keep = win["valid"].ravel() & (win["mix_class"].ravel() == 0)
    pick = np.random.default_rng(0).choice(np.flatnonzero(keep), 1500, replace=False)
    x = win["reflectance"].reshape(204, -1).T[pick].astype(np.float64)
    y = win["labels"].ravel()[pick]
    pool = library.pixels.astype(np.float64)
    owner = np.repeat(np.arange(1, 7), np.diff(library.offsets))
    d2 = (x**2).sum(1)[:, None] - 2 * x @ pool.T + (pool**2).sum(1)[None]
    nearest = d2.argmin(axis=1)
    assert (owner[nearest] == y).mean() > 0.95
    sigma = np.sqrt((library.means**2).mean()) / spec.snr
    residual = x - pool[nearest]
    assert abs(residual.std() / sigma - 1) < 0.1


def test_nodata_stripes_and_nan_pixels_are_invalid(library) -> None:
    spec = small_spec(dtype="float32", nan_fraction=0.02)
    win = arrays(S.synthetic_window(spec, library, 0, spec.height, 0, spec.width))
    refl, valid = win["reflectance"], win["valid"]
    stripes = S.nodata_mask(spec, 0, spec.height, 0, spec.width)
    # Each flight line: whole seam columns at its start, then whole dropped row segments.
    seams = stripes.all(axis=0)
    dropped = 0
    for x0 in range(0, spec.width, spec.line_width):
        line = stripes[:, x0 : x0 + spec.line_width]
        gap = int(seams[x0 : x0 + spec.line_width].sum())
        assert gap <= spec.max_gap and seams[x0 : x0 + gap].all()
        rows = line[:, gap:]
        assert (rows.all(axis=1) == rows.any(axis=1)).all()
        dropped += int(rows.all(axis=1).sum())
    assert seams.sum() >= 1 and 0 < dropped < 0.1 * spec.height * 3
    assert (refl[:, stripes] == S.NODATA).all()
    nan = np.isnan(refl).all(axis=0)
    assert not (nan & stripes).any() and 0.01 < nan.mean() < 0.03
    assert (np.isnan(refl).any(axis=0) == nan).all()
    np.testing.assert_array_equal(valid, ~(stripes | nan))
    assert (win["labels"][~valid] == 0).all() and (win["labels"][valid] > 0).all()
    assert (refl[:, valid] != S.NODATA).all()
    with pytest.raises(ValueError, match="nan_fraction: NaN needs dtype float32"):
        small_spec(nan_fraction=0.1)


def test_indian_pines_library_and_dtype_checks(tmp_path: Path) -> None:
    ip = S.class_library("indian_pines")
    assert ip.n_classes == 16 and ip.n_bands == 200 and ip.source_dtype == "uint8"
    spec = small_spec(source="indian_pines", snr=math.inf, height=64, width=64)
    out = S.write_synthetic(spec, tmp_path / "ip.zarr", ip, chunk=32)
    ds = store.open_cube(out)
    assert ds["reflectance"].dtype == np.int16 and ds["wavelength"].shape == (200,)
    pure = ds["valid"].values & (ds["mix_class"].values == 0)
    assert set(np.unique(ds["reflectance"].values[:, pure])) <= set(range(256))
    samson = S.class_library("samson")
    with pytest.raises(ValueError, match="samson .*float64.* does not fit int16 exactly"):
        S.synthetic_template(small_spec(source="samson"), samson)
    with pytest.raises(ValueError, match="spec wants 'salinasA', library is 'samson'"):
        S.synthetic_window(small_spec(), samson, 0, 8, 0, 8)


def test_shape_for_size() -> None:
    assert S.shape_for_size(0.1, 204, 2) == (496, 496)  # 245,098 pixels
    assert S.shape_for_size(0.1, 204, 2, width=1000) == (246, 1000)
    assert S.shape_for_size(48, 204, 2, height=4096) == (4096, 28723)
    h, w = S.shape_for_size(48, 204, 2)
    assert 0 <= h * w * 204 * 2 - 48e9 < 2 * h * 204 * 2
    for kwargs, message in [
        (dict(size_gb=0), "positive number of GB"),
        (dict(size_gb=-1), "positive number of GB"),
        (dict(size_gb=float("nan")), "positive number of GB"),
        (dict(size_gb=1e-9), "less than one pixel"),
        (dict(size_gb=1e-6, width=10_000), "less than one row"),
        (dict(size_gb=1, height=10, width=10), "at most one of height/width"),
        (dict(size_gb=1, width=0), "width: must be >= 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            S.shape_for_size(n_bands=204, itemsize=2, **kwargs)


def test_cli_errors_exit_2_and_leave_nothing(tmp_path: Path, capsys) -> None:
    out = tmp_path / "m.zarr"
    cases = [
        (["--size-gb", "-1"], "positive number of GB"),
        (["--size-gb", "0"], "positive number of GB"),
        ([], "give --size-gb, or both --height and --width"),
        (["--height", "64"], "give --size-gb, or both --height and --width"),
        (["--size-gb", "0.01", "--height", "64", "--width", "64"], "at most one of height/width"),
        (["--height", "64", "--width", "64", "--snr", "0"], "snr: must be > 0"),
        (["--height", "64", "--width", "64", "--chunk", "0"], "--chunk: must be >= 1"),
        (["--height", "64", "--width", "64", "--chunk", "32", "--shard", "48"],
         "multiple of chunk"),
    ]
    for extra, message in cases:
        assert synth.main(["--out", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("sscc synth: error: ") and message in err, (extra, err)
    assert list(tmp_path.iterdir()) == []


def test_cli_ray_tasks_write_the_same_store(tmp_path: Path, library, ray_session, capsys) -> None:
    out = tmp_path / "cli.zarr"
    argv = ["--out", str(out), "--size-gb", "0.0025", "--width", "100", "--seed", "3",
            "--field-size", "40", "--line-width", "64", "--chunk", "32", "--windows-per-task", "3"]
    assert synth.main(argv) == 0
    printed = capsys.readouterr().out
    assert "8/8 windows (100%)" in printed and "MB/s" in printed
    ds = store.open_cube(out)
    h, w = S.shape_for_size(0.0025, 204, 2, width=100)
    assert ds["reflectance"].shape == (204, h, w) and (h, w) == (62, 100)
    assert ds["reflectance"].dtype == np.int16
    assert ds["reflectance"].encoding["chunks"] == (204, 32, 32)
    assert ds["reflectance"].attrs["nodata"] == S.NODATA
    assert ds["reflectance"].attrs["reflectance_scale"] == 1.0
    assert ds["valid"].dtype == bool and ds["labels"].dtype == np.int16
    assert ds["labels"].attrs["source_class_ids"] == [1, 10, 11, 12, 13, 14]
    assert ds.attrs["synthetic"]["seed"] == 3 and ds.attrs["synthetic"]["source"] == "salinasA"
    np.testing.assert_array_equal(ds["y"].values, np.arange(h))
    spec = S.SynthSpec(height=h, width=w, seed=3, field_size=40, line_width=64)
    ref = S.write_synthetic(spec, tmp_path / "ref.zarr", library, chunk=64)
    assert_same(arrays(ds), arrays(store.open_cube(ref)))
    assert synth.main(argv) == 2
    assert "already exists" in capsys.readouterr().err
