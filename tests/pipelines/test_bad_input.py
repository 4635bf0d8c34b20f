"""The bad-input matrix, one test per row: each bad input gets a clear error (exit 2 with
``sscc <stage>: error: ...``) or the documented handling (nodata, warning), never a crash or a
silent wrong answer."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from pipelines import cli, predict
from sscc_core.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from sscc_core.labelling.inference import check_wavelengths
from sscc_core.io.cube import make_cube
from sscc_core.io.matlab import read_benchmark
from sscc_core.io.store import write_cube
from sscc_core.labelling.labelstore import open_label_store
from tests.pipelines.test_predict import TILE, make_checkpoint, reference, stored


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bad_input")


@pytest.fixture(scope="module")
def salinas(root):
    """Salinas-A store (204 bands, no wavelengths) and a tiny fcn checkpoint fitted on it."""
    store = write_cube(read_benchmark("salinasA"), root / "sa.zarr", chunk=TILE)
    return store, make_checkpoint(root, store, "fcn", seed=0)


def predict_main(ckpt, store, out, *extra) -> int:
    return predict.main(["--checkpoint", str(ckpt), "--store", str(store), "--out", str(out),
                         "--tile-size", str(TILE), *extra])


def last_error(capsys, stage: str = "predict") -> str:
    """The ``sscc <stage>: error: ...`` message at the end of stderr (it may span lines)."""
    err = capsys.readouterr().err
    prefix = f"sscc {stage}: error: "
    assert prefix in err, err[-2000:]
    return err[err.rindex(prefix):]


def test_wrong_band_count(root, salinas, capsys):
    store, ckpt = salinas
    cut = write_cube(read_benchmark("salinasA").isel(band=slice(0, 200)), root / "sa200.zarr",
                     chunk=TILE)
    assert predict_main(ckpt, cut, root / "bands.zarr") == 2
    assert "cube has 200 bands but the model was fitted on" in last_error(capsys)
    assert not (root / "bands.zarr").exists()


@pytest.fixture(scope="module")
def pines(root):
    """A 40 x 40 corner of Indian Pines (8-bit, 200 bands, AVIRIS wavelengths) and a checkpoint
    that records those wavelengths."""
    ds = read_benchmark("indian_pines").isel(y=slice(0, 40), x=slice(0, 40))
    store = write_cube(ds, root / "ip.zarr", chunk=TILE)
    ckpt = load_checkpoint(make_checkpoint(root, store, "fcn", seed=1))
    wl = tuple(float(w) for w in ds["wavelength"].values)
    path = save_checkpoint(dataclasses.replace(ckpt, wavelength=wl), root / "ip_ckpt")
    return ds, store, path


def test_wrong_wavelength_grid(root, pines, capsys):
    ds, _, ckpt = pines
    shifted = ds.assign_coords(wavelength=ds["wavelength"] + np.linspace(0, 12.5, ds.sizes["band"]))
    store = write_cube(shifted, root / "ip_shifted.zarr", chunk=TILE)
    assert predict_main(ckpt, store, root / "wl.zarr") == 2
    err = last_error(capsys)
    assert "cube wavelengths differ from the model's by up to 12.50 nm (band 199" in err
    assert not (root / "wl.zarr").exists()
    # within the tolerance passes; an unknown side warns and proceeds
    model = ds["wavelength"].values
    assert check_wavelengths(model, model + 0.4) is True
    with pytest.warns(UserWarning, match="the cube has no band wavelengths"):
        assert check_wavelengths(model, ()) is False
    with pytest.warns(UserWarning, match="the checkpoint has no band wavelengths"):
        assert check_wavelengths((), model) is False
    with pytest.raises(ValueError, match="model has 200 band wavelengths, cube has 3"):
        check_wavelengths(model, model[:3])


NODATA = -9999.0


@pytest.fixture(scope="module")
def holes(root, salinas, ray_session):
    """Salinas-A as float32 with tile r0_c2 all nodata and NaN/inf pixels inside tile r1_c1,
    ingested and labelled once."""
    _, ckpt = salinas
    raw = read_benchmark("salinasA")["reflectance"].values.astype(np.float32)
    raw[:, 0:32, 64:86] = NODATA
    nan_px = [(40, 40), (41, 50), (50, 33)]
    inf_px = [(60, 60)]
    for y, x in nan_px:
        raw[17, y, x] = np.nan
    for y, x in inf_px:
        raw[:, y, x] = np.inf
    ds = make_cube(raw, nodata=NODATA)
    store = write_cube(ds, root / "holes.zarr", chunk=TILE)
    out = root / "holes_labels.zarr"
    summary = predict.run(predict.build_parser().parse_args(
        ["--checkpoint", str(ckpt), "--store", str(store), "--out", str(out),
         "--tile-size", str(TILE), "--actors", "1", "--confidence"]))
    return store, ckpt, out, summary, nan_px + inf_px, ds.attrs["n_nonfinite"]


def test_all_nodata_tile_is_skipped_and_store_completes(holes):
    store, ckpt, out, summary, _, _ = holes
    assert summary["tiles"] == summary["tiles_labelled"] == 8  # r0_c2 is not a tile to label
    labels, conf = stored(out)
    assert (labels[0:32, 64:86] == 255).all() and (conf[0:32, 64:86] == 0).all()
    lab = open_label_store(out)
    assert (0, 2) not in lab.done_tiles() and len(lab.done_tiles()) == 8
    assert lab.complete
    np.testing.assert_array_equal(labels, reference(ckpt, store)[0])


def test_nan_and_inf_pixels_are_masked_and_labelled_nodata(holes):
    store, ckpt, out, _, bad, n_nonfinite = holes
    assert n_nonfinite == len(bad)
    valid = zarr.open_group(store, mode="r")["valid"][:]
    assert not any(valid[y, x] for y, x in bad)
    labels, conf = stored(out)
    for y, x in bad:
        assert labels[y, x] == 255 and conf[y, x] == 0
    assert np.isfinite(conf).all()
    neighbours = labels[35:65, 30:65][valid[35:65, 30:65]]
    assert (neighbours < 16).all() and len(np.unique(neighbours)) > 1
    np.testing.assert_array_equal(labels, reference(ckpt, store)[0])


TINY = ["--set", "model.backbone=fcn", "--set", "model.widths=[8,8,8]", "--set",
        "model.stem_channels=8", "--set", "model.head_hidden=16", "--set", "tile.tile_size=32",
        "--set", "train.protocol=all"]


def test_fewer_training_pixels_than_clusters_or_batch(root, capsys):
    """A 12 x 12 scene has 144 pixels: K = 200 or a batch of 256 cannot be trained (refused on
    the driver, before any worker starts)."""
    small = write_cube(read_benchmark("salinasA").isel(y=slice(0, 12), x=slice(0, 12)),
                       root / "sa12.zarr", chunk=TILE)
    base = ["train", "--store", str(small), "--storage-path", str(root / "runs"), *TINY]
    assert cli.main([*base, "--run-name", "k", "--set", "model.n_clusters=200",
                     "--set", "train.batch_size=64"]) == 2
    assert "144 training pixels (protocol 'all') are fewer than model.n_clusters=200" in \
        last_error(capsys, "train")
    assert cli.main([*base, "--run-name", "b", "--set", "model.n_clusters=6",
                     "--set", "train.batch_size=256"]) == 2
    assert "144 training pixels (protocol 'all') cannot fill one batch of train.batch_size=256" \
        in last_error(capsys, "train")


def test_random_bytes_checkpoint(root, salinas, capsys):
    store, _ = salinas
    bad = root / "random.pt"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="not a loadable SSCC checkpoint"):
        load_checkpoint(bad)
    assert predict_main(bad, store, root / "r.zarr") == 2
    assert "random.pt: not a loadable SSCC checkpoint" in last_error(capsys)


def test_foreign_torch_checkpoint(root, salinas, capsys):
    store, _ = salinas
    foreign = root / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(3)}, "epoch": 4}, foreign)
    assert predict_main(foreign, store, root / "f.zarr") == 2
    assert "foreign.pt: not an SSCC checkpoint (format None, expected 'sscc-checkpoint/1')" in \
        last_error(capsys)


class Payload:
    """An arbitrary object whose unpickling would run code (create a file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_object_is_refused_without_running_code(root, salinas, capsys):
    store, _ = salinas
    marker = root / "code_ran"
    evil = root / "evil.pt"
    torch.save({"format": "sscc-checkpoint/1", "model_state": Payload(marker)}, evil)
    plain = root / "evil.pkl"
    plain.write_bytes(pickle.dumps(Payload(marker)))
    for path in (evil, plain):
        with pytest.raises(CheckpointError, match="not a loadable SSCC checkpoint"):
            load_checkpoint(path)
        assert predict_main(path, store, root / "e.zarr") == 2
        assert "not a loadable SSCC checkpoint" in last_error(capsys)
    assert not marker.exists()
    pickle.loads(plain.read_bytes())  # the payload is real: unpickling without the guard runs it
    assert marker.exists()


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("train:\n  lr: fast\n", "train.lr: expected float, got 'fast'"),
        ("train:\n  learning_rate: 0.1\n", "train.learning_rate: unknown field"),
        ("model: {n_clusters: 6\n", "not valid YAML"),
        ("model:\n  n_clusters: 1\n", "model.n_clusters: must be >= 2, got 1"),
        ("postprocess:\n  smooth_sigma: -1\n", "postprocess.smooth_sigma: must be >= 0 pixels, got -1"),
        ("postprocess:\n  readout: dbscan\n", "postprocess.readout: expected one of"),
        ("train:\n  seed: -1\n", "train.seed: must be in [0, 2147483647], got -1"),
        ("preprocess:\n  seed: 4294967296\n", "preprocess.seed: must be in [0, 2147483647], got 4294967296"),
        ("model:\n  instance_dim: -1\n", "model.instance_dim: must be >= 0 (0 = no instance head), got -1"),
        ("loss:\n  instance_weight: -0.5\n", "loss.instance_weight: must be >= 0, got -0.5"),
    ],
    ids=["wrong-type", "unknown-field", "bad-yaml", "out-of-range", "negative-sigma", "bad-readout",
         "negative-seed", "huge-seed", "negative-instance-dim", "negative-instance-weight"],
)
def test_malformed_config_through_the_cli(root, yaml_text, message, capsys):
    config = root / "bad.yaml"
    config.write_text(yaml_text)
    missing_store = root / "never_read.zarr"  # the config is refused before the store is opened
    assert cli.main(["train", "--config", str(config), "--store", str(missing_store),
                     "--run-name", "bad", "--storage-path", str(root / "runs")]) == 2
    assert message in last_error(capsys, "train")
    assert not (root / "runs" / "bad").exists()


def test_malformed_override_through_the_cli(root, capsys):
    assert cli.main(["train", "--store", str(root / "x.zarr"), "--run-name", "o",
                     "--set", "train.epochs=many"]) == 2
    assert "train.epochs: expected int, got 'many'" in last_error(capsys, "train")
