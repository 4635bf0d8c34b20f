"""The two halves of a labelling run's per-tile work: reading (fingerprint, halo windows,
features) and labelling (network, readout, chunk write) give the labels of
:meth:`Labeller.label_tile`, also with several tiles in one forward batch."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from sscc_core.config import ModelConfig, PostprocessConfig, SSCCConfig
from sscc_core.io.matlab import read_benchmark
from sscc_core.io.store import open_cube, write_cube
from sscc_core.io.tiling import tile_grid
from sscc_core.labelling.inference import Labeller, label_scene
from sscc_core.labelling.labelstore import LabelStoreSpec, create_label_store, tile_fingerprint
from sscc_core.labelling.plan import read_segments
from sscc_core.labelling.tile_work import TileWriter, read_tiles
from sscc_core.model.checkpoint import Checkpoint
from sscc_core.model.preprocess import fit_preprocessor
from sscc_core.training.trainer import build_training

TILE = 32  # Salinas-A is 83 x 86: 3 x 3 tiles, ragged edges, halos across tiles


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("tile_work")
    return root, write_cube(read_benchmark("salinasA"), root / "sa.zarr", chunk=TILE)


def labeller_for(store, backbone: str, mode_window: int) -> Labeller:
    """A tiny untrained model on the store, with the mode filter of ``mode_window``."""
    group = zarr.open_group(store, mode="r")
    pre = fit_preprocessor(group["reflectance"], group["valid"])
    cfg = SSCCConfig(model=ModelConfig(backbone=backbone, widths=(8, 8, 8), stem_channels=8,
                                       head_hidden=16, n_clusters=16),
                     postprocess=PostprocessConfig(mode_window=mode_window))
    model = build_training(cfg, 8).model
    return Labeller.from_checkpoint(Checkpoint(
        config=cfg, in_channels=8, n_bands=group["reflectance"].shape[0],
        model_state=model.state_dict(), preprocess_state=pre.to_state()))


@pytest.mark.parametrize("backbone,mode_window,per_batch", [("fcn", 1, 1), ("fcn", 3, 1),
                                                           ("fcn", 3, 9), ("resnet", 3, 2)])
def test_read_then_write_equals_label_scene(scene, backbone, mode_window, per_batch):
    """Bit for bit one tile per forward pass (and in patch mode, whose batches are patches);
    equally shaped tiles in one dense batch: the same labels, confidence to float rounding
    (the CPU convolution may sum in another order for another batch size)."""
    root, store = scene
    labeller = labeller_for(store, backbone, mode_window)
    group = zarr.open_group(store, mode="r")
    ref_labels, ref_conf = label_scene(labeller, group["reflectance"], group["valid"], TILE)
    out = create_label_store(root / f"{backbone}{mode_window}_{per_batch}.zarr", open_cube(store), LabelStoreSpec(
        model_version="bbbb11112222", n_clusters=16, tile_size=TILE, confidence=True))
    tiles = [(t, "") for s in read_segments(tile_grid(83, 86, TILE)) for t in s]
    reads = list(read_tiles(str(store), labeller.reader, tiles, TILE, 4))
    assert [r.tile for r in reads] == [t for t, _ in tiles] and not any(r.error for r in reads)
    assert reads[0].fingerprint == tile_fingerprint(group["reflectance"], group["valid"],
                                                    reads[0].tile, labeller.context)
    writer = TileWriter(labeller, out)
    outcomes = [o for i in range(0, len(reads), per_batch)
                for o in writer.write(reads[i : i + per_batch])]
    assert all(o.labelled and not o.error for o in outcomes)
    labels = np.asarray(out.array("labels")[:])
    np.testing.assert_array_equal(labels, np.where(ref_labels < 0, 255, ref_labels))
    conf = np.asarray(out.array("confidence")[:])
    if backbone == "resnet" or per_batch == 1:
        np.testing.assert_array_equal(conf, ref_conf)
    else:
        np.testing.assert_allclose(conf, ref_conf, atol=1e-6)
    assert sum(o.n_valid for o in outcomes) == int((ref_labels >= 0).sum())


def test_unchanged_tiles_are_not_read_and_corrupt_input_names_the_tile(scene):
    root, store = scene
    labeller = labeller_for(store, "fcn", 1)
    tiles = tile_grid(83, 86, TILE)[:2]
    first = next(read_tiles(str(store), labeller.reader, [(tiles[0], "")], TILE, 1))
    again = list(read_tiles(str(store), labeller.reader,
                            [(tiles[0], first.fingerprint), (tiles[1], "stale")], TILE, 1))
    assert again[0].input is None and again[0].fingerprint == first.fingerprint
    assert again[1].input is not None
    out = create_label_store(root / "skip.zarr", open_cube(store), LabelStoreSpec(
        model_version="cccc11112222", n_clusters=16, tile_size=TILE))
    skipped = TileWriter(labeller, out).write(again[:1])[0]
    assert not skipped.labelled and skipped.error == "" and skipped.fingerprint == first.fingerprint

    chunk = store / "reflectance" / "c" / "0" / "0" / "0"
    good = chunk.read_bytes()
    try:
        chunk.write_bytes(np.random.default_rng(0).bytes(len(good)))
        bad = next(read_tiles(str(store), labeller.reader, [(tiles[1], "")], TILE, 1))
    finally:
        chunk.write_bytes(good)
    assert bad.input is None and bad.fingerprint == ""
    assert bad.error.startswith(f"{store}: cannot read the input of tile r0_c1 (rows 0:32, ")
    failed = TileWriter(labeller, out).write([bad])[0]
    assert not failed.labelled and failed.error == bad.error
