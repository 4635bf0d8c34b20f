"""Several flight lines: --store lists, globs and manifests expand in order; bad lines refuse in one
line naming the store."""

from __future__ import annotations

from pathlib import Path

import fsspec
import numpy as np
import pytest

from sscc_core.io import store
from sscc_core.io.cube import make_cube
from sscc_core import storage
from sscc_core.io.lines import Line, expand_stores, line_name, resolve_lines


@pytest.fixture(scope="module")
def lines_dir(tmp_path_factory: pytest.TempPathFactory, salinas: np.ndarray) -> Path:
    """Three small stores cut from Salinas-A (fl01, fl02, fl03) and one with 20 bands fewer."""
    root = tmp_path_factory.mktemp("lines")
    wl = np.linspace(400.0, 2500.0, 204)
    for i, name in enumerate(("fl01", "fl02", "fl03")):
        crop = salinas[:, 20 * i: 20 * i + 24, :30]
        store.write_cube(make_cube(crop, wavelength=wl, name=name), root / f"{name}.zarr", chunk=16)
    store.write_cube(make_cube(salinas[:184, :24, :30], wavelength=wl[:184], name="short"),
                     root / "other" / "short.zarr", chunk=16)
    return root


def test_list_glob_and_manifest_name_the_same_lines_in_order(lines_dir: Path) -> None:
    stores = [str(lines_dir / f"{n}.zarr") for n in ("fl01", "fl02", "fl03")]
    expected = [Line(n, s) for n, s in zip(("fl01", "fl02", "fl03"), stores)]
    assert resolve_lines(stores) == expected
    assert resolve_lines([str(lines_dir / "fl0*.zarr")]) == expected
    manifest = lines_dir / "lines.txt"
    manifest.write_text("# three lines\nfl01.zarr\n\n" + stores[1] + "\n  fl03.zarr\n")
    assert resolve_lines([str(manifest)]) == expected
    assert [s for s, _ in expand_stores([str(manifest)])][0] == str(lines_dir / "fl01.zarr")
    # a list mixing the forms keeps the order given
    assert [line.name for line in resolve_lines(
        [stores[2], str(lines_dir / "fl0[12].zarr")])] == ["fl03", "fl01", "fl02"]


def test_line_names_are_store_stems() -> None:
    assert line_name("s3://b/lines/fl01.zarr/") == "fl01"
    assert line_name("/data/run.zarr") == "run"
    assert line_name("gs://b/cube") == "cube"


def test_bad_lines_are_refused_in_one_line_naming_the_store(lines_dir: Path) -> None:
    fl01, fl02 = str(lines_dir / "fl01.zarr"), str(lines_dir / "fl02.zarr")
    with pytest.raises(ValueError, match=r"no-such-\*\.zarr: the pattern matches no store"):
        resolve_lines([str(lines_dir / "no-such-*.zarr")])
    missing = lines_dir / "missing.txt"
    missing.write_text(f"{fl01}\ngone.zarr\n")
    with pytest.raises(ValueError, match=rf"gone\.zarr: no Zarr cube store here \(from manifest "
                                         rf"{missing}\)$"):
        resolve_lines([str(missing)])
    with pytest.raises(ValueError, match=r"fl02\.zarr: the store is named twice"):
        resolve_lines([fl01, fl02, str(lines_dir / "fl02.zarr")])
    with pytest.raises(ValueError, match=r"band counts differ between lines: .*fl01\.zarr has 204 "
                                         r"bands, .*short\.zarr has 184$"):
        resolve_lines([fl01, str(lines_dir / "other" / "short.zarr")])
    twin = lines_dir / "twin"
    twin.mkdir()
    store.write_cube(store.open_cube(fl01).load(), twin / "fl01.zarr", chunk=16)
    with pytest.raises(ValueError, match="share the name 'fl01'; their outputs would collide"):
        resolve_lines([fl01, str(twin / "fl01.zarr")])
    empty = lines_dir / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="manifest .*empty.txt: lists no store"):
        resolve_lines([str(empty)])
    nested = lines_dir / "nested.txt"
    nested.write_text("empty.txt\n")
    with pytest.raises(ValueError, match="is not a cube store \\(a manifest lists stores"):
        resolve_lines([str(nested)])


def test_lines_on_object_storage_by_glob_and_manifest(s3_env, lines_dir: Path) -> None:
    """Stores on a real S3 API server: an s3:// glob and a manifest object name the same lines,
    relative manifest entries resolved against the manifest's prefix; a missing one is refused."""
    fsspec.filesystem("s3", skip_instance_cache=True).mkdir("lines")
    for name in ("fl01", "fl02"):
        storage.upload_dir(lines_dir / f"{name}.zarr", f"s3://lines/run/{name}.zarr")
    expected = [Line(n, f"s3://lines/run/{n}.zarr") for n in ("fl01", "fl02")]
    assert resolve_lines(["s3://lines/run/fl*.zarr"]) == expected
    storage.write_bytes("s3://lines/run/lines.txt", b"fl01.zarr\ns3://lines/run/fl02.zarr\n")
    assert resolve_lines(["s3://lines/run/lines.txt"]) == expected
    storage.write_bytes("s3://lines/run/bad.txt", b"fl01.zarr\nfl09.zarr\n")
    with pytest.raises(ValueError, match=r"^s3://lines/run/fl09\.zarr: no Zarr cube store here "
                                         r"\(from manifest s3://lines/run/bad\.txt\)$"):
        resolve_lines(["s3://lines/run/bad.txt"])
