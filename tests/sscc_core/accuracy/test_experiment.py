"""The accuracy protocol harness, the mode filter and the ``sscc reproduce`` CLI.

Fast tests run on a small synthetic scene built from real Salinas-A class-mean spectra (three
class blocks plus noise); the slow tests check the accuracy targets of the tuned configs on
Salinas-A and Indian Pines.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.reproduce import main as reproduce_main
from pipelines.options import parse_overrides
from sscc_core.model.baselines import kmeans_fit_predict
from sscc_core.config import ModelConfig, load_config
from sscc_core.accuracy.experiment import (
    RunResult,
    Scene,
    load_scene,
    recalibrate_batchnorm,
    run_one,
    summarise,
)
from sscc_core.metrics import evaluate
from sscc_core.model.network import SSCCNet
from sscc_core.model.postprocess import NODATA, mode_filter
from sscc_core.model.preprocess import fit_preprocessor

REPO = Path(__file__).resolve().parents[3]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))

TINY = {
    "preprocess.n_components": 4,
    "preprocess.patch_size": 5,
    "model.backbone": "fcn",
    "model.stem_channels": 8,
    "model.widths": [8, 8, 8],
    "model.blocks_per_stage": 1,
    "model.head_hidden": 16,
    "train.epochs": 3,
    "train.batch_size": 64,
    "train.lr": 1e-3,
}


@pytest.fixture(scope="module")
def salinas() -> Scene:
    return load_scene("salinas_a")


@pytest.fixture(scope="module")
def synthetic(salinas: Scene) -> Scene:
    """24 x 24 scene: three vertical 8-column blocks of Salinas-A class means + 2 % noise.

    The bottom four rows are unlabelled (ground truth 0) but valid, so the two protocols train
    on different pixel sets.
    """
    rng = np.random.default_rng(0)
    pixels = salinas.cube.reshape(salinas.cube.shape[0], -1).astype(np.float64)
    flat = salinas.labels.reshape(-1)
    means = np.stack([pixels[:, flat == c].mean(axis=1) for c in (1, 3, 5)])  # (3, B)
    classes = np.repeat(np.arange(3), 8)[None, :].repeat(24, axis=0)  # (24, 24) in {0, 1, 2}
    cube = means[classes].transpose(2, 0, 1)  # (B, 24, 24)
    cube = cube * (1 + 0.02 * rng.standard_normal(cube.shape))
    labels = classes + 1
    labels[-4:] = 0
    return Scene("synthetic", cube.astype(np.float32), np.ones((24, 24), bool), labels.astype(np.int64))


def test_scene_loading(salinas: Scene) -> None:
    assert salinas.name == "salinasA"
    assert salinas.cube.shape == (204, 83, 86)
    assert salinas.n_classes == 6
    assert int((salinas.labels > 0).sum()) == 5348
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_scene("no_such_scene")


def test_kmeans_runs_match_direct_computation(synthetic: Scene) -> None:
    cfg = load_config(None, {"preprocess.n_components": 4})
    r = run_one(synthetic, "kmeans_pca", "labelled", 0, cfg)
    assert r.label_map.shape == (24, 24) and (r.label_map >= 0).all()
    assert r.metrics["acc"] > 0.95 and r.cpu_seconds > 0
    # Same as clustering the unwhitened PCA scores of the labelled pixels directly.
    pre = fit_preprocessor(synthetic.cube, synthetic.valid, cfg.preprocess)
    feats = pre.transform(synthetic.cube, whiten=False).reshape(4, -1).T
    lab = synthetic.labels.reshape(-1)
    direct = kmeans_fit_predict(feats[lab > 0], 3, 0)
    assert evaluate(lab[lab > 0], direct)["acc"] == pytest.approx(r.metrics["acc"])


def test_sscc_tiny_run_gives_valid_metrics_and_reproduces(synthetic: Scene) -> None:
    torch.set_num_threads(1)
    cfg = load_config(None, TINY)
    runs = [run_one(synthetic, "sscc", "all", 7, cfg) for _ in range(2)]
    a, b = runs
    assert np.array_equal(a.label_map, b.label_map)
    timing = ("seconds", "samples_per_s")
    assert [{k: v for k, v in h.items() if k not in timing} for h in a.history] == \
        [{k: v for k, v in h.items() if k not in timing} for h in b.history]
    assert len(a.history) == 3
    assert a.label_map.shape == (24, 24)
    assert a.label_map.min() >= 0 and a.label_map.max() < 3
    for key in ("acc", "nmi", "ari", "kappa", "purity"):
        assert -1.0 <= a.metrics[key] <= 1.0
    assert a.metrics["n_labelled"] == 20 * 24
    other = run_one(synthetic, "sscc", "all", 8, cfg)
    assert other.history[0]["total"] != a.history[0]["total"]


def test_sscc_kmeans_readout_and_mode_filter(synthetic: Scene) -> None:
    torch.set_num_threads(1)
    base = {**TINY, "postprocess.readout": "kmeans"}
    raw = run_one(synthetic, "sscc", "labelled", 0, load_config(None, base))
    cfg = load_config(None, {**base, "postprocess.mode_window": 3, "postprocess.mode_iterations": 2})
    smooth = run_one(synthetic, "sscc", "labelled", 0, cfg)
    assert raw.label_map.min() >= 0 and raw.label_map.max() < 3
    assert np.array_equal(smooth.label_map, mode_filter(raw.label_map, 3, 2))


def test_recalibrate_batchnorm_uses_clean_patch_statistics() -> None:
    torch.manual_seed(0)
    model = SSCCNet(ModelConfig(n_clusters=3, backbone="fcn", stem_channels=4, widths=(4, 4),
                                blocks_per_stage=1, head_hidden=8), 3, 5)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k
               and "num_batches" not in k}
    x = 2.0 + 3.0 * torch.randn(50, 3, 5, 5)
    recalibrate_batchnorm(model, x, batch_size=1000)
    stem_conv, stem_bn = model.backbone.layers[0], model.backbone.layers[1]
    with torch.no_grad():
        y = stem_conv(x)
    torch.testing.assert_close(stem_bn.running_mean, y.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(stem_bn.running_var, y.var(dim=(0, 2, 3), unbiased=True))
    assert stem_bn.momentum == 0.1 and not model.training
    for k, v in model.state_dict().items():
        if k in weights:
            assert torch.equal(v, weights[k]), k


def test_run_one_rejects_bad_method_and_protocol(synthetic: Scene) -> None:
    cfg = load_config()
    with pytest.raises(ValueError, match="unknown method 'dbscan'"):
        run_one(synthetic, "dbscan", "labelled", 0, cfg)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown protocol 'some'"):
        run_one(synthetic, "kmeans", "some", 0, cfg)


def _result(method: str, seed: int, acc: float) -> RunResult:
    metrics = {"acc": acc, "nmi": acc / 2, "ari": 0.1, "kappa": acc - 0.1, "purity": acc, "aa": acc,
               "n_clusters": 3}
    return RunResult("s", method, "all", seed, metrics, 2.0 * seed, 1.0, np.zeros((1, 1), int))


def test_summarise_mean_std_and_mixed_settings() -> None:
    rs = [_result("sscc", s, a) for s, a in ((0, 0.5), (1, 0.7), (2, 0.9))]
    s = summarise(rs)
    assert s["acc_mean"] == pytest.approx(0.7)
    assert s["acc_std"] == pytest.approx(np.std([0.5, 0.7, 0.9]))
    assert s["cpu_seconds_mean"] == pytest.approx(2.0)
    assert s["seeds"] == [0, 1, 2]
    with pytest.raises(ValueError, match="mix settings"):
        summarise([rs[0], _result("kmeans", 0, 0.4)])
    with pytest.raises(ValueError, match="no run results"):
        summarise([])


def test_mode_filter_constant_map_is_fixed_point() -> None:
    m = np.full((9, 11), 4)
    assert np.array_equal(mode_filter(m, 5, 3), m)


def test_mode_filter_fixes_isolated_pixels_and_keeps_nodata() -> None:
    m = np.zeros((10, 10), dtype=np.int64)
    m[:, 5:] = 1
    clean = m.copy()
    m[2, 2] = 1  # isolated error inside region 0
    m[7, 8] = 0  # isolated error inside region 1
    m[0, 0] = NODATA
    out = mode_filter(m, 3)
    expected = clean.copy()
    expected[0, 0] = NODATA
    assert np.array_equal(out, expected)
    # A straight boundary between two regions is kept (ties favour the current label).
    assert np.array_equal(mode_filter(clean, 3), clean)


def test_mode_filter_matches_bruteforce() -> None:
    rng = np.random.default_rng(1)
    m = rng.integers(-1, 4, size=(12, 13))
    out = mode_filter(m, 5, 1)
    r = 2
    for y in range(12):
        for x in range(13):
            if m[y, x] < 0:
                assert out[y, x] == m[y, x]
                continue
            win = m[max(0, y - r): y + r + 1, max(0, x - r): x + r + 1]
            counts = np.bincount(win[win >= 0], minlength=4).astype(float)
            counts[m[y, x]] += 0.5
            assert out[y, x] == counts.argmax()


def test_mode_filter_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="positive odd"):
        mode_filter(np.zeros((3, 3), int), 4)
    with pytest.raises(ValueError, match="integer label map"):
        mode_filter(np.zeros((3, 3)), 3)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_named_configs_load(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.model.backbone in ("resnet", "fcn")


def test_paper_config_is_the_recipe() -> None:
    paper = load_config(REPO / "configs" / "paper.yaml")
    default = load_config()
    assert paper.train == default.train and paper.loss == default.loss
    assert paper.augment == default.augment and paper.postprocess == default.postprocess


def test_reproduce_cli_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    rc = reproduce_main(["--dataset", "salinas_a", "--method", "kmeans_pca", "--seeds", "0", "1",
                         "--json", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert [r["seed"] for r in doc["runs"]] == [0, 1]
    direct = run_one(load_scene("salinas_a"), "kmeans_pca", "labelled", 1, load_config())
    assert doc["runs"][1]["acc"] == pytest.approx(direct.metrics["acc"])
    assert "| salinasA | kmeans_pca | labelled |" in capsys.readouterr().out


def test_reproduce_cli_user_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert reproduce_main(["--dataset", "salinas_a", "--set", "train.epochs"]) == 2
    assert "SECTION.FIELD=VALUE" in capsys.readouterr().err
    assert reproduce_main(["--dataset", "salinas_a", "--set", "train.lr=fast"]) == 2
    assert "train.lr" in capsys.readouterr().err
    assert parse_overrides(["model.widths=[8, 16]", "train.lr=1e-3"]) == {
        "model.widths": [8, 16], "train.lr": "1e-3"}  # YAML 1.1; the config reads it as 1e-3
    assert load_config(overrides={"train.lr": "1e-3"}).train.lr == 1e-3
    assert reproduce_main(["--dataset", "salinas_a", "--device", "gpu"]) == 2
    assert capsys.readouterr().err == "sscc reproduce: error: --device gpu: expected cpu, cuda or cuda:N\n"
    assert reproduce_main(["--suite", "--device", "cuda:0"]) == 2
    if torch.cuda.is_available():
        assert "--device cuda:0: the suite runs on the CPU" in capsys.readouterr().err
    else:
        assert capsys.readouterr().err == ("sscc reproduce: error: --device cuda:0: torch sees 0 CUDA "
                                           "device(s) on this machine; use --device cpu\n")


@pytest.mark.slow
def test_salinas_a_tuned_config_reaches_the_target(salinas: Scene) -> None:
    """configs/salinas_a.yaml, seed 0, one thread: measured ACC 1.000 (docs/RESULTS.md); the
    brief's target is ACC >= 0.95, well above k-means (0.84 for seed 0)."""
    torch.set_num_threads(1)
    r = run_one(salinas, "sscc", "labelled", 0, load_config(REPO / "configs" / "salinas_a.yaml"))
    km = run_one(salinas, "kmeans_pca", "labelled", 0, load_config())
    assert r.metrics["acc"] >= 0.95
    assert r.metrics["acc"] > km.metrics["acc"] + 0.1


@pytest.mark.slow
def test_indian_pines_tuned_config_reaches_the_target_and_training_matters() -> None:
    """configs/indian_pines.yaml, seed 0, one thread: measured ACC 0.644 (docs/RESULTS.md);
    target >= 0.60, well above k-means (0.35). The same readout on the untrained network
    (lr 1e-12) measured 0.542: the SSCC training, not only the graph readout, carries the score."""
    torch.set_num_threads(1)
    indian_pines = load_scene("indian_pines")
    cfg = load_config(REPO / "configs" / "indian_pines.yaml")
    r = run_one(indian_pines, "sscc", "labelled", 0, cfg)
    km = run_one(indian_pines, "kmeans_pca", "labelled", 0, load_config())
    untrained = run_one(indian_pines, "sscc", "labelled", 0,
                        load_config(REPO / "configs" / "indian_pines.yaml",
                                    {"train.epochs": 1, "train.lr": 1e-12}))
    assert r.metrics["acc"] >= 0.60
    assert r.metrics["acc"] > km.metrics["acc"] + 0.2
    assert r.metrics["acc"] > untrained.metrics["acc"] + 0.05
