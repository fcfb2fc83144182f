"""Probe suite: planted signals are found, noise is not, one split for every embedding set."""

from __future__ import annotations

import os
import runpy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from astropt.probe import (
    RIDGE_ALPHAS,
    auto_targets,
    make_split,
    nmad,
    parse_target,
    ridge_cv,
    run_probe_suite,
    run_probes,
)

REPO = Path(__file__).resolve().parents[1]


def planted(n: int = 400, d: int = 24, seed: int = 0):
    """Features with known relations to the catalogue columns.

    ``linear``: an exact linear map of the features; ``noise``: independent of
    them; ``separable``: the sign of feature 0, which is kept at least 1 away
    from 0 (a margin, so a linear classifier can be perfect).
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    x[:, 0] += np.where(x[:, 0] >= 0, 1.0, -1.0)
    ids = rng.permutation(np.arange(10_000, 10_000 + n))
    catalogue = pd.DataFrame(
        {
            "dr8_id": ids,
            "linear": x @ rng.normal(size=d) + 3.0,
            "noise": rng.normal(size=n),
            "separable": x[:, 0] > 0,
        }
    )
    return ids, x.astype(np.float32), catalogue


def test_planted_linear_signal_noise_and_separable_class():
    ids, x, catalogue = planted()
    run = run_probes({"model": (ids, x, catalogue)}, label_sizes=None)
    summary = run.summary.set_index("target")
    assert set(summary.index) == {"linear", "noise", "separable"}  # dr8_id is an id, not a target
    assert summary.loc["linear", "model"] > 0.99
    assert -0.1 < summary.loc["noise", "model"] < 0.05
    results = run.results.set_index(["target", "metric"]).value
    assert results["separable", "accuracy"] > 0.98
    assert results["separable", "balanced_accuracy"] > 0.98
    assert abs(results["noise", "spearman"]) < 0.25
    assert results["linear", "nmad"] < 0.1 * catalogue.linear.std()


@pytest.mark.slow
def test_baselines_are_probed_on_the_same_split():
    ids, x, catalogue = planted()
    rng = np.random.default_rng(5)
    order = rng.permutation(len(ids))  # a baseline stored in another row order
    random_features = rng.normal(size=x.shape).astype(np.float32)
    sets = {
        "model": (ids, x, catalogue),
        "pca": (ids[order], x[order] + 0.1 * random_features[order], catalogue.iloc[order]),
        "random": (ids[::-1], random_features[::-1], catalogue.iloc[::-1]),
    }
    run = run_probes(sets, label_sizes=(30, 100, None))
    test_ids = set(run.split.id[run.split.split == "test"])
    assert len(test_ids) == 80
    # Each set alone gets the same held-out galaxies: the split depends on the ids only.
    for name, source in sets.items():
        alone = run_probes({name: source}, targets=["linear"], label_sizes=None)
        assert set(alone.split.id[alone.split.split == "test"]) == test_ids
    counts = run.results.groupby(["target", "embedding"])[["n_train", "n_test"]].first()
    assert counts.groupby("target").nunique().max().max() == 1
    summary = run.summary.set_index("target")
    assert summary.loc["linear", "model"] > 0.99
    assert summary.loc["linear", "random"] < 0.2
    # Label-efficiency subsets: same sizes for every set, more labels help a real signal.
    curve = run.label_efficiency.query("target == 'linear'")
    assert sorted(curve.n_labels.unique()) == [30, 100, 320]
    model_curve = curve.query("embedding == 'model'").set_index("n_labels").value
    assert model_curve[320] > model_curve[30]


def test_improvement_is_over_the_best_baseline():
    ids, x, catalogue = planted()
    noise = np.random.default_rng(9).normal(size=x.shape).astype(np.float32)
    truth, blind = (ids, x, catalogue), (ids, noise, catalogue)
    # A copy of the model's features among two useless baselines, in the middle:
    # the best baseline is the copy, so the model gains exactly nothing.
    run = run_probes(
        {"model": truth, "noise_a": blind, "copy": truth, "noise_b": blind},
        targets=["linear", "separable"],
        label_sizes=None,
    )
    np.testing.assert_array_equal(run.summary.improvement, [0.0, 0.0])
    # Useless baselines only: the gain is the model's whole score (R^2 ~ 1, balanced accuracy
    # ~ 1 against ~ 0 and ~ 0.5); a model worse than its baseline shows a loss.
    gains = run_probes({"model": truth, "noise": blind}, targets=["linear", "separable"],
                       label_sizes=None).summary.set_index("target").improvement  # fmt: skip
    assert gains["linear"] > 0.9 and 0.35 < gains["separable"] <= 0.5
    loss = run_probes({"model": blind, "truth": truth}, targets=["linear"], label_sizes=None)
    assert loss.summary.improvement.item() < -0.9


def test_split_depends_on_the_set_of_ids_not_their_order():
    ids = np.arange(100, 300)
    mask = make_split(ids, 0.25, seed=3)
    shuffled = np.random.default_rng(0).permutation(ids)
    mask_shuffled = make_split(shuffled, 0.25, seed=3)
    assert mask.sum() == 50
    assert set(ids[mask]) == set(shuffled[mask_shuffled])
    assert set(ids[make_split(ids, 0.25, seed=4)]) != set(ids[mask])


def test_auto_targets_tasks_and_ids():
    n = 60
    rng = np.random.default_rng(0)
    catalogue = pd.DataFrame(
        {
            "dr8_id": np.arange(n),
            "objid": np.arange(n) + 7,
            "redshift": rng.uniform(0, 0.3, n).astype(np.float32),
            "is_edge_on": rng.random(n) > 0.7,
            "galaxy10": rng.integers(0, 10, n),
            "arm_count": rng.integers(0, 4, n),
            "n_pixels": rng.integers(0, 10_000, n),
            "smooth_frac": rng.random(n),
            "constant": np.ones(n),
            "name": [f"g{i}" for i in range(n)],
        }
    )
    tasks = {t.name: t.task for t in auto_targets(catalogue)}
    assert tasks == {
        "redshift": "regression",
        "is_edge_on": "classification",
        "galaxy10": "classification",
        "arm_count": "classification",
        "n_pixels": "regression",
        "smooth_frac": "regression",
        "smooth_frac>0.5": "classification",
    }
    threshold = parse_target("smooth_frac>0.5", catalogue).values(catalogue)
    np.testing.assert_array_equal(threshold, (catalogue.smooth_frac > 0.5).astype(int))
    assert parse_target("arm_count:regression", catalogue).task == "regression"
    with pytest.raises(KeyError, match="redshift"):
        parse_target("redshfit", catalogue)


def test_ridge_cv_agrees_with_scikit_learn():
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GridSearchCV, KFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(1)
    x = rng.normal(size=(150, 12)) * rng.uniform(0.1, 10, 12)
    y = x @ rng.normal(size=12) + rng.normal(scale=5.0, size=150)
    alpha, _, _, predict = ridge_cv(x, y, folds=5, seed=0)
    search = GridSearchCV(
        make_pipeline(StandardScaler(), Ridge()),
        {"ridge__alpha": list(RIDGE_ALPHAS)},
        cv=KFold(5, shuffle=True, random_state=0),
        scoring="neg_mean_squared_error",
    ).fit(x, y)
    assert alpha[0] == pytest.approx(search.best_params_["ridge__alpha"])
    x_new = rng.normal(size=(20, 12))
    np.testing.assert_allclose(predict(x_new)[:, 0], search.predict(x_new), rtol=1e-6, atol=1e-8)


def test_nmad_is_a_robust_standard_deviation():
    rng = np.random.default_rng(0)
    sample = rng.normal(scale=2.0, size=20_000)
    assert nmad(sample) == pytest.approx(2.0, rel=0.03)
    sample[:500] = 1e6  # 2.5% wild outliers barely move it
    assert nmad(sample) == pytest.approx(2.0, rel=0.1)


@pytest.mark.slow
def test_report_files(tmp_path):
    ids, x, catalogue = planted(n=300)
    rng = np.random.default_rng(2)
    sets = {"model": (ids, x, catalogue), "random": (ids, rng.normal(size=x.shape), None)}
    summary = run_probe_suite(sets, tmp_path, label_sizes=(30, None), label_targets="all")
    for name in ("report.md", "probe_results.csv", "label_efficiency.csv", "split.csv",
                 "probe_summary.png", "label_efficiency.png"):  # fmt: skip
        assert (tmp_path / name).stat().st_size > 0, name
    report = (tmp_path / "report.md").read_text()
    assert "| target | task | metric | n_train | n_test | model | random | improvement |" in report
    for target in summary.target:
        assert f"| {target} |" in report
    results = pd.read_csv(tmp_path / "probe_results.csv")
    assert len(results) == 2 * (4 + 4 + 3)  # two sets x (two regressions + one classification)
    split = pd.read_csv(tmp_path / "split.csv")
    assert sorted(split.id) == sorted(ids) and (split.split == "test").sum() == 60


def _write_plain(path: Path, ids, features, catalogue=None) -> None:
    frame = pd.DataFrame({"id": ids})
    if catalogue is not None:
        for column in catalogue.columns:
            frame[column] = catalogue[column].to_numpy()
    frame["embedding"] = list(np.asarray(features, dtype=np.float32))
    frame.to_parquet(path)


@pytest.mark.slow
def test_command_line_finds_baselines_beside_the_export(tmp_path, capsys):
    ids, x, catalogue = planted(n=200)
    rng = np.random.default_rng(3)
    _write_plain(tmp_path / "emb.parquet", ids, x, catalogue.drop(columns="dr8_id"))
    _write_plain(tmp_path / "emb.random.parquet", ids, rng.normal(size=x.shape))
    cli = runpy.run_path(str(REPO / "probe" / "linear_probe.py"), run_name="probe_cli")
    out = tmp_path / "report"
    assert cli["main"]([str(tmp_path / "emb.parquet"), "--out", str(out), "--label-sizes", ""]) == 0
    printed = capsys.readouterr()
    assert "| linear | regression | r2 |" in printed.out
    assert "no pca baseline" in printed.err
    results = pd.read_csv(out / "probe_results.csv")
    assert set(results.embedding) == {"model", "random"}


@pytest.mark.slow
def test_notebook_runs_on_a_small_file(tmp_path):
    import nbclient  # test extras: a missing one is an error, not a skip
    import nbformat

    ids, x, catalogue = planted(n=200)
    _write_plain(tmp_path / "emb.parquet", ids, x, catalogue.drop(columns="dr8_id"))
    notebook = nbformat.read(REPO / "probe" / "linear_probe.ipynb", as_version=4)
    env = {
        "ASTROPT_EMBEDDINGS": str(tmp_path / "emb.parquet"),
        "ASTROPT_PROBE_OUT": str(tmp_path / "out"),
        "ASTROPT_NOTEBOOK_UMAP": "0",  # UMAP has its own tests; its JIT start-up is slow
    }
    old = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # the kernel inherits the environment
    try:
        nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3").execute()
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert (tmp_path / "out" / "report.md").is_file()
    outputs = "".join(
        str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for o in cell.outputs
    )
    assert "200 galaxies" in outputs
