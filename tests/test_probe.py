"""Probe suite: planted signals are found, noise is not, baselines see only training folds,
intervals are honest, angles are scored as angles."""

from __future__ import annotations

import os
import runpy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from astropt.probe import (
    RIDGE_ALPHAS,
    FoldPCA,
    PixelSource,
    angular_error,
    auto_targets,
    fold_plan,
    headline_table,
    holm,
    nmad,
    parse_target,
    reduce_features,
    resampled_t,
    resolve_protocol,
    ridge_classifier_cv,
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


FAST = {"label_sizes": None}


def test_planted_linear_signal_noise_and_separable_class():
    ids, x, catalogue = planted()
    run = run_probes({"model": (ids, x, catalogue)}, **FAST)
    summary = run.summary.set_index("target")
    assert set(summary.index) == {"linear", "noise", "separable"}  # dr8_id is an id, not a target
    assert summary.loc["linear", "model"] > 0.99
    assert -0.1 < summary.loc["noise", "model"] < 0.05
    results = run.results.set_index(["target", "metric"]).value
    assert results["separable", "accuracy"] > 0.98
    assert results["separable", "balanced_accuracy"] > 0.98
    assert abs(results["noise", "spearman"]) < 0.25
    assert results["linear", "nmad"] < 0.1 * catalogue.linear.std()
    # Every galaxy is predicted once per repeat: 5 folds x 3 repeats by default.
    assert len(run.folds) == 3 * len(ids)
    assert (run.folds.groupby("repeat").id.nunique() == len(ids)).all()
    rng = np.random.default_rng(0)
    sample = rng.normal(scale=2.0, size=20_000)
    assert nmad(sample) == pytest.approx(2.0, rel=0.03)
    sample[:500] = 1e6  # 2.5% wild outliers barely move it
    assert nmad(sample) == pytest.approx(2.0, rel=0.1)


@pytest.mark.slow
def test_baselines_are_probed_on_the_same_folds():
    ids, x, catalogue = planted()
    rng = np.random.default_rng(5)
    order = rng.permutation(len(ids))  # a baseline stored in another row order
    random_features = rng.normal(size=x.shape).astype(np.float32)
    sets = {
        "model": (ids, x, catalogue),
        "near": (ids[order], x[order] + 0.1 * random_features[order], catalogue.iloc[order]),
        "random": (ids[::-1], random_features[::-1], catalogue.iloc[::-1]),
    }
    run = run_probes(sets, label_sizes=(30, 100, None))
    # Each set alone gets the same folds: they depend on the set of ids only.
    for name, source in sets.items():
        alone = run_probes({name: source}, targets=["linear", "separable"], **FAST)
        pd.testing.assert_frame_equal(alone.folds, run.folds)
    summary = run.summary.set_index("target")
    assert summary.loc["linear", "model"] > 0.99
    assert summary.loc["linear", "random"] < 0.2
    compare = run.comparisons.set_index(["level", "name", "baseline"])
    assert compare.loc[("target", "linear", "random"), "outcome"] == "win"
    assert set(compare.loc["family"].index.get_level_values("baseline")) == {"near", "random"}
    # Label-efficiency subsets: same sizes for every set, more labels help a real signal.
    curve = run.label_efficiency.query("target == 'linear'")
    assert sorted(curve.n_labels.unique()) == [30, 100, 320]
    model_curve = curve.query("embedding == 'model'").set_index("n_labels").value
    assert model_curve[320] > model_curve[30]


def test_folds_depend_on_the_set_of_ids_and_are_stratified():
    ids = np.arange(100, 300)
    labels = (ids % 4 == 0).astype(int)  # a 25% class
    protocol = resolve_protocol("repeated")
    plan = fold_plan(ids, protocol, labels, seed=3)
    shuffle = np.random.default_rng(0).permutation(len(ids))
    plan_shuffled = fold_plan(ids[shuffle], protocol, labels[shuffle], seed=3)
    assert len(plan) == 15
    for (r, _, test), (r2, _, test2) in zip(plan, plan_shuffled):
        assert r == r2 and set(ids[test]) == set(ids[shuffle][test2])
    for repeat in range(3):
        tests = [test for r, _, test in plan if r == repeat]
        assert sorted(np.concatenate(tests)) == list(range(len(ids)))  # each row tested once
        for test in tests:
            assert labels[test].sum() == 10  # 40 rows per fold, 25% of them the class
    assert set(ids[fold_plan(ids, protocol, labels, seed=4)[0][2]]) != set(ids[plan[0][2]])


def test_pixel_pca_is_fitted_on_the_training_fold_only(monkeypatch):
    from sklearn.decomposition import PCA

    # Unit: a direction only test rows vary along never reaches the components.
    rng = np.random.default_rng(0)
    x = np.zeros((120, 30))
    x[:100, :10] = rng.normal(size=(100, 10))
    x[100:, 20] = 100.0 * rng.normal(size=20)
    reduced = reduce_features(x, np.arange(100), 5)
    assert np.ptp(reduced[100:], axis=0).max() < 1e-4  # test rows differ only along dim 20
    assert np.ptp(reduce_features(x, np.arange(120), 5)[100:], axis=0).max() > 100  # a leak shows

    # End to end: every PCA the probes fit sees exactly one fold's training galaxies.
    ids, features, catalogue = planted(n=200)
    pixels = np.concatenate([ids[:, None], rng.normal(size=(200, 47))], axis=1)  # col 0 = id
    fitted: list[set] = []
    original_fit = PCA.fit

    def spy(self, data, *args, **kwargs):
        fitted.append(set(np.asarray(data)[:, 0].round().astype(int)))
        return original_fit(self, data, *args, **kwargs)

    monkeypatch.setattr(PCA, "fit", spy)
    sets = {"model": (ids, features, catalogue), "pixels": PixelSource((ids, pixels, None))}
    run = run_probes(sets, targets=["linear", "separable"], **FAST)
    assert run.info["pca_components"] == {"pixels": features.shape[1]}
    strata = catalogue.separable.to_numpy().astype(int)
    plan = fold_plan(ids, resolve_protocol("repeated"), strata, seed=0)
    assert len(fitted) == len(plan)
    for seen, (_, train, test) in zip(fitted, plan):
        assert seen == set(ids[train]) and not seen & set(ids[test])


def test_gram_pca_of_wide_pixels_is_the_training_rows_pca_and_blind_to_test_rows():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(5)
    x = rng.normal(size=(60, 400)) @ np.diag(np.linspace(3.0, 0.1, 400))  # wide: d >> n
    train, test = np.arange(45), np.arange(45, 60)
    reducer = FoldPCA(x, 10)
    assert reducer.uses_gram
    got = reducer(train)
    # The same projections as scikit-learn's exact PCA of the training rows, up to each
    # component's sign.
    want = PCA(n_components=10, svd_solver="full").fit(x[train]).transform(x)
    signs = np.sign((got * want).sum(axis=0))
    np.testing.assert_allclose(got * signs, want, atol=1e-4)
    # Test rows replaced by anything: the components (hence every training row's
    # projection) do not move.
    other = x.copy()
    other[test] = 1000.0 * rng.normal(size=(len(test), 400))
    np.testing.assert_allclose(FoldPCA(other, 10)(train)[train], got[train], atol=1e-6)
    # Another fold of the same reducer reuses the Gram matrix and fits on its own rows.
    again = reducer(np.arange(15, 60))
    fresh = PCA(n_components=10, svd_solver="full").fit(x[15:]).transform(x)
    signs = np.sign((again * fresh).sum(axis=0))
    np.testing.assert_allclose(again * signs, fresh, atol=1e-4)


def test_interval_of_noise_against_itself_or_other_noise_covers_zero():
    ids, x, catalogue = planted(n=300)
    rng = np.random.default_rng(11)
    noise = rng.normal(size=(300, 16)).astype(np.float32)
    other = rng.normal(size=(300, 16)).astype(np.float32)
    sets = {"noise": (ids, noise, catalogue), "same": (ids, noise), "other": (ids, other)}
    run = run_probes(sets, targets=["noise", "linear", "separable"], **FAST)
    compare = run.comparisons.set_index(["level", "name", "baseline"])
    for target in ("noise", "linear", "separable"):
        same = compare.loc[("target", target, "same")]
        assert same.improvement == 0 and same.ci_low <= 0 <= same.ci_high
        assert same.outcome == "tie"
        versus = compare.loc[("target", target, "other")]
        assert versus.ci_low < 0 < versus.ci_high and versus.outcome == "tie"
    scores = run.scores.query("level == 'target' and embedding == 'noise'").set_index("name")
    assert scores.loc["linear", "ci_low"] < 0.05  # no signal: the interval reaches down to ~0


def test_improvement_is_paired_per_baseline_with_its_outcome():
    ids, x, catalogue = planted()
    noise = np.random.default_rng(9).normal(size=x.shape).astype(np.float32)
    truth, blind = (ids, x, catalogue), (ids, noise, catalogue)
    # A copy of the model's features among useless baselines: against the copy the
    # model gains exactly nothing (a tie); against noise it gains its whole score.
    run = run_probes(
        {"model": truth, "noise_a": blind, "copy": truth},
        targets=["linear", "separable"],
        **FAST,
    )
    compare = run.comparisons.query("level == 'target'").set_index(["name", "baseline"])
    for target in ("linear", "separable"):
        assert compare.loc[(target, "copy"), "improvement"] == 0.0
        assert compare.loc[(target, "copy"), "outcome"] == "tie"
        assert compare.loc[(target, "noise_a"), "outcome"] == "win"
    assert compare.loc[("linear", "noise_a"), "improvement"] > 0.9
    assert 0.35 < compare.loc[("separable", "noise_a"), "improvement"] <= 0.55
    # A model worse than its baseline shows a loss.
    loss = run_probes({"model": blind, "truth": truth}, targets=["linear"], **FAST)
    worse = loss.comparisons.query("level == 'target'").iloc[0]
    assert worse.improvement < -0.9 and worse.outcome == "loss"


def test_several_models_are_each_compared_with_every_later_set():
    ids, x, catalogue = planted()
    noise = np.random.default_rng(9).normal(size=x.shape).astype(np.float32)
    truth, blind = (ids, x, catalogue), (ids, noise, catalogue)
    sets = {"model": truth, "second": blind, "copy": truth, "other": (ids, noise[:, ::-1])}
    both = run_probes(sets, targets=["linear"], models=2, **FAST)
    compare = both.comparisons.query("level == 'target'").set_index(["model", "baseline"])
    assert sorted(compare.index) == sorted(
        [("model", "second"), ("model", "copy"), ("model", "other"),
         ("second", "copy"), ("second", "other")]
    )  # fmt: skip
    # The second model (noise) against a copy of the truth: the whole score lost.
    assert compare.loc[("second", "copy"), "improvement"] < -0.9
    assert compare.loc[("second", "copy"), "outcome"] == "loss"
    assert compare.loc[("second", "other"), "outcome"] == "tie"
    # The first model's rows are those of a run with one model (same folds and resamples).
    one = run_probes(sets, targets=["linear"], **FAST).comparisons
    first = both.comparisons[both.comparisons.model == "model"].reset_index(drop=True)
    pd.testing.assert_frame_equal(first, one)
    with pytest.raises(ValueError, match="models"):
        run_probes(sets, targets=["linear"], models=5, **FAST)


def test_resampled_t_interval_and_holm_by_hand():
    from scipy import stats

    values = np.array([0.10, 0.14, 0.08, 0.12, 0.11, 0.15, 0.09, 0.13, 0.10, 0.12])
    ratio = 0.25  # 5-fold: n_test / n_train
    mean, low, high, p = resampled_t(values, ratio)
    se = np.sqrt((1 / 10 + ratio) * values.var(ddof=1))  # Nadeau & Bengio's correction
    assert mean == pytest.approx(0.114)
    assert high - mean == pytest.approx(mean - low) == pytest.approx(stats.t.ppf(0.975, 9) * se)
    assert p == pytest.approx(2 * stats.t.sf(mean / se, 9))
    # The uncorrected interval (s / sqrt(J)) would be sqrt(1 + J * ratio) = 1.87x narrower.
    assert (high - low) / (2 * stats.t.ppf(0.975, 9) * values.std(ddof=1) / np.sqrt(10)) == (
        pytest.approx(np.sqrt(1 + 10 * ratio))
    )
    # The interval excludes zero exactly when p < 0.05; no spread: a point.
    shifted = values - 0.114 + 0.0245
    _, low, _, p = resampled_t(shifted, ratio)
    assert (low > 0) == (p < 0.05)
    assert resampled_t(np.zeros(15), ratio) == (0.0, 0.0, 0.0, 1.0)
    # Holm: sorted p-values times (m, m-1, ...), running maximum, capped at 1.
    adjusted = holm([0.01, 0.04, 0.03, np.nan, 0.005])
    np.testing.assert_allclose(adjusted[[4, 0, 2, 1]], [0.02, 0.03, 0.06, 0.06])
    assert np.isnan(adjusted[3])


def test_circular_target_is_scored_by_angle():
    assert angular_error(np.array([179.0, 10.0, 90.0]), np.array([1.0, 170.0, 0.0])) == (
        pytest.approx([2.0, 20.0, 90.0])
    )
    rng = np.random.default_rng(2)
    n = 300
    angle = rng.uniform(0, 180, n)
    phase = np.radians(2 * angle)
    features = np.stack([np.cos(phase), np.sin(phase)], axis=1) + rng.normal(
        scale=0.05, size=(n, 2)
    )
    features = np.concatenate([features, rng.normal(size=(n, 6))], axis=1)  # fmt: skip
    ids = np.arange(n)
    catalogue = pd.DataFrame({"pos_angle": angle})
    assert auto_targets(catalogue)[0].task == "circular"
    sets = {"model": (ids, features, catalogue), "blind": (ids, rng.normal(size=(n, 8)))}
    run = run_probes(sets, **FAST)
    scores = run.summary.set_index("target")
    assert scores.loc["pos_angle", "metric"] == "angular_error"
    assert scores.loc["pos_angle", "model"] < 3.0  # degrees, wrap-around included
    assert 40 < scores.loc["pos_angle", "blind"] < 50  # random angles: 45 deg on average
    compare = run.comparisons.set_index(["level", "name", "baseline"])
    assert compare.loc[("target", "pos_angle", "blind"), "improvement"] > 35  # positive = better
    assert compare.loc[("target", "pos_angle", "blind"), "outcome"] == "win"


def test_ridge_classifier_agrees_with_scikit_learn():
    from sklearn.linear_model import RidgeClassifier
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 8)) * rng.uniform(0.5, 5, 8)
    for classes in (2, 4):
        y = np.digitize(x[:, 0] + x[:, 1] + rng.normal(size=200), [-2, 0, 2][: classes - 1] if
                        classes > 2 else [1.5])  # fmt: skip
        alpha, predict = ridge_classifier_cv(x, y, alphas=np.array([3.0]))
        scaler = StandardScaler().fit(x)
        reference = RidgeClassifier(alpha=3.0, class_weight="balanced").fit(scaler.transform(x), y)
        x_new = rng.normal(size=(50, 8)) * 3
        assert alpha == 3.0
        np.testing.assert_array_equal(predict(x_new), reference.predict(scaler.transform(x_new)))


def test_astropt_protocol_is_five_folds_of_ridge_alpha_100():
    ids, x, catalogue = planted(n=200)
    run = run_probes({"model": (ids, x, catalogue)}, protocol="astropt", **FAST)
    assert run.info["protocol"]["alpha"] == 100.0 and run.info["stratified_on"] is None
    assert len(run.folds) == len(ids) and run.folds.fold.nunique() == 5
    assert set(run.results.hyper) == {100.0}
    assert run.summary.set_index("target").loc["linear", "model"] > 0.8  # alpha 100 shrinks


def test_families_group_targets_and_average_their_headline():
    n = 200
    rng = np.random.default_rng(6)
    x = rng.normal(size=(n, 6))
    catalogue = pd.DataFrame(
        {
            "mag_g": x[:, 0] + 0.1 * rng.normal(size=n),
            "mag_r": x[:, 0] + 0.3 * rng.normal(size=n),
            "bulge_frac": rng.random(n),
            "custom": x[:, 1],
        }
    )
    targets = auto_targets(catalogue)
    assert {t.name: t.family for t in targets} == {
        "mag_g": "apparent magnitude",
        "mag_r": "apparent magnitude",
        "bulge_frac": "bulge & concentration",
        "bulge_frac>0.5": "bulge & concentration",
        "custom": "custom",
    }
    run = run_probes({"model": (np.arange(n), x, catalogue)}, **FAST)
    families = run.families.set_index("family")
    members = run.summary.set_index("target").model
    assert families.loc["apparent magnitude", "model"] == pytest.approx(
        members[["mag_g", "mag_r"]].mean()
    )
    # A family mixing tasks headlines its first member's task (R^2 of bulge_frac).
    assert families.loc["bulge & concentration", "model"] == pytest.approx(members["bulge_frac"])


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
            "pos_angle": rng.uniform(0, 180, n),
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
        "pos_angle": "circular",
    }
    threshold = parse_target("smooth_frac>0.5", catalogue).values(catalogue)
    np.testing.assert_array_equal(threshold, (catalogue.smooth_frac > 0.5).astype(int))
    assert parse_target("arm_count:regression", catalogue).task == "regression"
    assert parse_target("redshift:circular=360", catalogue).period == 360.0
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


@pytest.mark.parametrize("rows", [40, 400])  # fewer rows than features (SVD) and more (eigh)
def test_ridge_fit_is_scikit_learns_on_both_sides_of_square(rows):
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(rows)
    x = rng.normal(size=(rows, 60)) * rng.uniform(0.1, 10, 60)
    y = x[:, :5] @ rng.normal(size=5) + rng.normal(size=rows)
    _, _, _, predict = ridge_cv(x, y, alphas=np.array([2.0]))
    scaler = StandardScaler().fit(x)
    reference = Ridge(alpha=2.0).fit(scaler.transform(x), y)
    x_new = rng.normal(size=(15, 60))
    np.testing.assert_allclose(
        predict(x_new)[:, 0], reference.predict(scaler.transform(x_new)), rtol=1e-6, atol=1e-8
    )


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
    run = run_probe_suite(sets, tmp_path, label_sizes=(30, None), label_targets="all")
    for name in ("report.md", "headline.json", "scores.csv", "comparisons.csv",
                 "probe_results.csv", "label_efficiency.csv", "folds.csv", "split_scores.csv",
                 "probe_summary.png", "label_efficiency.png"):  # fmt: skip
        assert (tmp_path / name).stat().st_size > 0, name
    report = (tmp_path / "report.md").read_text()
    headline = run.headline()
    assert headline_table(headline) in report
    assert "| family | metric | model | random |" in report
    for target in run.summary.target:
        assert f"| {target} |" in report
    assert headline["tally"]["random"]["win"] == 2  # linear and separable; noise ties
    results = pd.read_csv(tmp_path / "probe_results.csv")
    assert len(results) == 2 * (4 + 4 + 3)  # two sets x (two regressions + one classification)
    folds = pd.read_csv(tmp_path / "folds.csv")
    assert sorted(folds.id[folds.repeat == 0]) == sorted(ids)


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
    _write_plain(tmp_path / "emb.morphometrics.parquet", ids, rng.normal(size=(len(ids), 5)))
    cli = runpy.run_path(str(REPO / "probe" / "linear_probe.py"), run_name="probe_cli")
    out = tmp_path / "report"
    argv = [
        str(tmp_path / "emb.parquet"),
        "--out",
        str(out),
        "--label-sizes",
        "30",
    ]
    assert cli["main"](argv) == 0
    printed = capsys.readouterr()
    assert "| family | metric | model | random-init | morphometrics |" in printed.out
    assert "| linear | R^2 |" in printed.out
    assert "no pixels baseline" in printed.err
    results = pd.read_csv(out / "probe_results.csv")
    assert set(results.embedding) == {"model", "random-init", "morphometrics"}


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
