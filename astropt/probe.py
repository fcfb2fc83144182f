"""Linear probes of galaxy embeddings: what do the vectors know?

The probe suite answers the question the way the field does (AstroPT, Zoobot):
for each catalogue property, fit a *linear* model from embedding to property
on labelled training galaxies and score it on held-out galaxies; compare with
baselines that had no pretraining; watch how the score grows with the number of
labels.

* Regression targets (continuous columns): features standardised, ridge
  regression with the strength chosen by k-fold cross-validation on the
  training part; scored by R^2, NMAD and MAE of the residuals, Spearman rho.
* Classification targets (booleans, low-cardinality integers such as
  ``galaxy10``, vote fractions thresholded at 0.5): standardised features,
  multinomial logistic regression with ``C`` chosen by stratified k-fold
  cross-validation (log loss); scored by accuracy, balanced accuracy, macro F1.
* One split for everything: the held-out test ids are drawn from the sorted ids
  with a fixed seed, so the model and every baseline are trained and tested on
  the same galaxies.

Entry point: :func:`run_probe_suite` (also behind ``probe/linear_probe.py`` and
``probe/linear_probe.ipynb``).
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import pandas as pd

from astropt.options import Command, run_command

Task = Literal["regression", "classification"]
HEADLINE = {"regression": "r2", "classification": "balanced_accuracy"}
METRICS = {
    "regression": ("r2", "nmad", "mae", "spearman"),
    "classification": ("accuracy", "balanced_accuracy", "macro_f1"),
}
RIDGE_ALPHAS = 10.0 ** np.arange(-2.0, 6.01, 0.5)
LOGISTIC_CS = 10.0 ** np.arange(-3.0, 1.01, 1.0)
DEFAULT_LABEL_SIZES: tuple[int | None, ...] = (30, 100, 300, 1000, 3000, None)  # None = all
# AstroPT's probe targets (absolute magnitudes, sSFR, stellar mass, redshift, Galaxy
# Zoo answers) as the synthetic survey names them; label-efficiency curves default to these.
HEADLINE_TARGETS = (
    "mag_abs_g",
    "mag_abs_z",
    "log_ssfr",
    "log_mstar",
    "redshift",
    "smooth_frac>0.5",
    "is_edge_on",
    "has_spiral",
    "is_artefact",
    "galaxy10",
)
CATEGORICAL_COLUMNS = ("galaxy10",)
MAX_CLASSES = 10


# --------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Target:
    """One probe target: a catalogue column, how to read it, and which task it is."""

    name: str  # as reported, e.g. "redshift" or "smooth_frac>0.5"
    column: str
    task: Task
    threshold: float | None = None  # classification of column > threshold

    def values(self, catalogue: pd.DataFrame) -> np.ndarray:
        """Float targets (NaN = missing) for regression; integer class labels (-1 = missing)."""
        raw = catalogue[self.column]
        if self.task == "regression":
            return pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        if self.threshold is not None:
            numbers = pd.to_numeric(raw, errors="coerce").to_numpy(
                dtype=np.float64, na_value=np.nan
            )
            labels = (numbers > self.threshold).astype(np.int64)
            labels[np.isnan(numbers)] = -1
            return labels
        codes, _ = pd.factorize(raw, sort=True)  # NaN -> -1
        return codes.astype(np.int64)


def _is_id_column(name: str) -> bool:
    lowered = name.lower()
    return (
        lowered in ("id", "objid", "index") or lowered.endswith("_id") or lowered.startswith("id_")
    )


def _is_vote_fraction(name: str, values: pd.Series) -> bool:
    lowered = name.lower()
    if not any(key in lowered for key in ("frac", "fraction", "vote")):
        return False
    finite = values.dropna()
    return len(finite) > 0 and finite.min() >= 0.0 and finite.max() <= 1.0


def auto_targets(catalogue: pd.DataFrame, max_classes: int = MAX_CLASSES) -> list[Target]:
    """Every numeric catalogue column except ids, with its task.

    Booleans, ``galaxy10`` and integer columns with at most ``max_classes``
    distinct values are classification; other numbers are regression. Vote
    fractions (a ``frac``/``fraction``/``vote`` column within [0, 1]) are also
    probed as the classification ``column>0.5``. Constant columns are skipped.
    """
    targets: list[Target] = []
    for name in catalogue.columns:
        series = catalogue[name]
        if _is_id_column(str(name)) or series.nunique(dropna=True) < 2:
            continue
        if pd.api.types.is_bool_dtype(series):
            targets.append(Target(name, name, "classification"))
        elif pd.api.types.is_integer_dtype(series):
            few = series.nunique() <= max_classes
            is_class = few or name in CATEGORICAL_COLUMNS
            targets.append(Target(name, name, "classification" if is_class else "regression"))
        elif pd.api.types.is_float_dtype(series):
            if name in CATEGORICAL_COLUMNS:
                targets.append(Target(name, name, "classification"))
                continue
            targets.append(Target(name, name, "regression"))
            if _is_vote_fraction(str(name), series):
                targets.append(Target(f"{name}>0.5", name, "classification", 0.5))
    return targets


def parse_target(spec: str, catalogue: pd.DataFrame) -> Target:
    """``"col"`` (task inferred), ``"col>0.5"`` (thresholded), ``"col:regression"``/``"col:classification"``."""
    if ">" in spec:
        column, _, threshold = spec.partition(">")
        _require_column(column, catalogue)
        return Target(spec, column, "classification", float(threshold))
    column, _, task = spec.partition(":")
    _require_column(column, catalogue)
    if task:
        if task not in get_args(Task):
            raise ValueError(f"target task must be regression or classification, got {task!r}")
        return Target(column, column, task)  # type: ignore[arg-type]
    found = [t for t in auto_targets(catalogue[[column]]) if t.name == column]
    if not found:
        raise ValueError(f"column {column!r} is not a numeric property with at least two values")
    return found[0]


def _require_column(column: str, catalogue: pd.DataFrame) -> None:
    if column not in catalogue.columns:
        import difflib

        near = difflib.get_close_matches(column, [str(c) for c in catalogue.columns], n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise KeyError(f"no catalogue column {column!r}{hint}")


def resolve_targets(
    targets: Sequence[str | Target] | None, catalogue: pd.DataFrame
) -> list[Target]:
    """``None``: :func:`auto_targets`; else each spec through :func:`parse_target`."""
    if targets is None:
        return auto_targets(catalogue)
    return [t if isinstance(t, Target) else parse_target(t, catalogue) for t in targets]


# --------------------------------------------------------------------------- data
def _load(source) -> tuple[np.ndarray, np.ndarray, pd.DataFrame | None]:
    if isinstance(source, (str, Path)):
        from astropt.embed import read_embeddings

        return read_embeddings(source)
    ids, features, *rest = source
    catalogue = rest[0] if rest else None
    return np.asarray(ids), np.asarray(features, dtype=np.float32), catalogue


def load_embedding_sets(
    embeddings: Mapping[str, object],
) -> tuple[np.ndarray, dict[str, np.ndarray], pd.DataFrame]:
    """Load and align several embedding sets on their common ids.

    ``embeddings``: name -> export path, or ``(ids, features (n, d), catalogue)``;
    the first entry is the primary one (its catalogue and id order are used;
    ``None`` entries are skipped). Returns ``(ids, {name: features}, catalogue)``
    with every feature matrix in the order of ``ids``.
    """
    loaded = {name: _load(src) for name, src in embeddings.items() if src is not None}
    if not loaded:
        raise ValueError("no embeddings given")
    primary = next(iter(loaded))
    ids, _, catalogue = loaded[primary]
    if catalogue is None:
        catalogue = pd.DataFrame(index=pd.Index(ids, name="id"))
    common = pd.Index(ids)
    if common.has_duplicates:
        raise ValueError(f"embedding set {primary!r} has duplicate ids")
    for name, (other_ids, _, _) in loaded.items():
        other = pd.Index(other_ids)
        if other.has_duplicates:
            raise ValueError(f"embedding set {name!r} has duplicate ids")
        if len(other) != len(common) or not other.isin(common).all():
            missing = (~common.isin(other)).sum()
            warnings.warn(
                f"embedding set {name!r} covers a different set of galaxies "
                f"({missing} of the primary's are missing); probing their common ids",
                stacklevel=2,
            )
        common = common[common.isin(other)]
    keep = pd.Index(ids).get_indexer(common)
    features = {}
    for name, (other_ids, feats, _) in loaded.items():
        features[name] = np.ascontiguousarray(feats[pd.Index(other_ids).get_indexer(common)])
    catalogue = catalogue.iloc[keep].reset_index(drop=True)
    return np.asarray(common), features, catalogue


def make_split(ids: np.ndarray, test_fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """Boolean mask over ``ids``: True = held-out test galaxy.

    Depends only on the *set* of ids and the seed (ids are sorted first), so
    any embedding of the same galaxies gets the same split.
    """
    ids = np.asarray(ids)
    n = len(ids)
    n_test = int(round(test_fraction * n))
    if not 0 < n_test < n:
        raise ValueError(
            f"a test fraction of {test_fraction} leaves no train or no test rows of {n}"
        )
    order = np.argsort(ids, kind="stable")
    chosen = order[np.random.default_rng(seed).permutation(n)[:n_test]]
    mask = np.zeros(n, dtype=bool)
    mask[chosen] = True
    return mask


# --------------------------------------------------------------------------- metrics
def nmad(residuals: np.ndarray) -> float:
    """Normalised median absolute deviation ``1.4826 * median(|r - median(r)|)`` (a robust std)."""
    residuals = np.asarray(residuals, dtype=np.float64)
    return float(1.4826 * np.median(np.abs(residuals - np.median(residuals))))


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    from scipy.stats import spearmanr
    from sklearn.metrics import mean_absolute_error, r2_score

    rho = spearmanr(y, pred).statistic if np.std(pred) > 0 else 0.0
    return {
        "r2": float(r2_score(y, pred)),
        "nmad": nmad(pred - y),
        "mae": float(mean_absolute_error(y, pred)),
        "spearman": float(rho),
    }


def classification_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # classes absent from a small test set
        return {
            "accuracy": float(accuracy_score(y, pred)),
            "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
            "macro_f1": float(f1_score(y, pred, average="macro")),
        }


# --------------------------------------------------------------------------- probes
def _standardise(train: np.ndarray, *others: np.ndarray):
    mean = train.mean(axis=0)
    scale = train.std(axis=0)
    scale[scale < 1e-12] = 1.0  # constant features carry nothing; avoid dividing by 0
    return [(x - mean) / scale for x in (train, *others)]


def _ridge_path(x: np.ndarray, y: np.ndarray):
    """SVD pieces of centred ridge: predictions for any alpha cost one small product."""
    y_mean = y.mean(axis=0)
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    return u.T @ (y - y_mean), s, vt, y_mean


def ridge_cv(
    x: np.ndarray,
    y: np.ndarray,
    alphas: np.ndarray = RIDGE_ALPHAS,
    folds: int = 5,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """Ridge regression of ``y (n, T)`` on ``x (n, d)`` with k-fold CV per target.

    Features are standardised with each training fold's statistics; the alpha
    with the least summed squared validation error is chosen per target, then
    the model is refitted on all rows. Returns ``(alpha (T,), coef (d, T),
    intercept (T,), predict)`` where ``predict(x_new) -> (m, T)`` applies the
    training standardisation. One SVD per fold serves every alpha and target.
    """
    from sklearn.model_selection import KFold

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(len(x), -1)
    alphas = np.asarray(alphas, dtype=np.float64)
    k = min(folds, len(x))
    errors = np.zeros((len(alphas), y.shape[1]))
    if k >= 2:
        for train, valid in KFold(k, shuffle=True, random_state=seed).split(x):
            xt, xv = _standardise(x[train], x[valid])
            uty, s, vt, y_mean = _ridge_path(xt, y[train])
            xv_rot = xv @ vt.T  # (nv, r)
            for i, alpha in enumerate(alphas):
                pred = xv_rot @ ((s / (s**2 + alpha))[:, None] * uty) + y_mean
                errors[i] += ((pred - y[valid]) ** 2).sum(axis=0)
        best = alphas[np.argmin(errors, axis=0)]
    else:
        best = np.full(y.shape[1], 1.0)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-12] = 1.0
    uty, s, vt, y_mean = _ridge_path((x - mean) / scale, y)
    coef = np.stack(
        [vt.T @ ((s / (s**2 + a)) * uty[:, j]) for j, a in enumerate(best)], axis=1
    )  # (d, T) on standardised features

    def predict(x_new: np.ndarray) -> np.ndarray:
        return ((np.asarray(x_new, dtype=np.float64) - mean) / scale) @ coef + y_mean

    return best, coef, y_mean, predict


def logistic_cv(
    x: np.ndarray, y: np.ndarray, cs: np.ndarray = LOGISTIC_CS, folds: int = 5, seed: int = 0
):
    """Logistic regression (multinomial for >2 classes) with ``C`` chosen by stratified k-fold CV.

    Features are standardised (training statistics). Classes are weighted by
    inverse frequency (``class_weight="balanced"``): the headline metric is
    balanced accuracy, and an unweighted fit of a rare class (bars, mergers,
    artefacts) predicts the majority for every embedding, which hides any
    difference between them. ``C`` minimises the class-weighted validation
    log loss. With too few members in some class for two folds, ``C = 1``.
    Returns ``(C, fitted pipeline)``.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classes, counts = np.unique(y, return_counts=True)
    k = min(folds, int(counts.min()))
    sample_weight = (len(y) / (len(classes) * counts))[np.searchsorted(classes, y)]
    best_c = 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if k >= 2 and len(cs) > 1:
            losses = np.zeros(len(cs))
            for train, valid in StratifiedKFold(k, shuffle=True, random_state=seed).split(x, y):
                xt, xv = _standardise(x[train], x[valid])
                clf = LogisticRegression(max_iter=500, warm_start=True, class_weight="balanced")
                for i, c in enumerate(sorted(cs)):  # warm starts along increasing C
                    clf.set_params(C=c).fit(xt, y[train])
                    # Summed validation log loss; columns of predict_proba follow
                    # clf.classes_, and every class is in every training fold.
                    proba = clf.predict_proba(xv)
                    column = np.searchsorted(clf.classes_, y[valid])
                    picked = proba[np.arange(len(valid)), column]
                    log_likelihood = np.log(np.clip(picked, 1e-15, None))
                    losses[i] -= (sample_weight[valid] * log_likelihood).sum()
            best_c = float(sorted(cs)[int(np.argmin(losses))])
        model = make_pipeline(
            StandardScaler(),
            LogisticRegression(C=best_c, max_iter=1000, class_weight="balanced"),
        )
        model.fit(x, y)
    return best_c, model


def probe_target(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    task: Task,
    folds: int = 5,
    seed: int = 0,
) -> dict[str, float]:
    """Fit one probe on the training rows, score it on the test rows.

    Returns the task's metrics plus ``hyper`` (chosen alpha or C). Rows with
    missing targets (NaN, or label -1) must already be dropped.
    """
    if task == "regression":
        alpha, _, _, predict = ridge_cv(x_train, y_train, folds=folds, seed=seed)
        scores = regression_metrics(y_test, predict(x_test)[:, 0])
        return dict(scores, hyper=float(alpha[0]))
    if len(np.unique(y_train)) < 2:
        return dict.fromkeys(METRICS["classification"], math.nan) | {"hyper": math.nan}
    c, model = logistic_cv(x_train, y_train, folds=folds, seed=seed)
    return dict(classification_metrics(y_test, model.predict(x_test)), hyper=c)


def _regression_batch(
    x_train: np.ndarray,
    x_test: np.ndarray,
    y_train: np.ndarray,
    y_test: np.ndarray,
    folds: int,
    seed: int,
) -> list[dict[str, float]]:
    """Several complete regression targets at once (one SVD per fold for all of them)."""
    alpha, _, _, predict = ridge_cv(x_train, y_train, folds=folds, seed=seed)
    pred = predict(x_test)
    return [
        dict(regression_metrics(y_test[:, j], pred[:, j]), hyper=float(alpha[j]))
        for j in range(y_train.shape[1])
    ]


def _probe_all(
    x: np.ndarray,
    targets: list[Target],
    values: dict[str, np.ndarray],
    train_rows: np.ndarray,
    test_rows: np.ndarray,
    folds: int,
    seed: int,
) -> dict[str, dict[str, float]]:
    """Scores of every target for one feature matrix and one train/test row selection."""
    out: dict[str, dict[str, float]] = {}
    complete = [
        t
        for t in targets
        if t.task == "regression"
        and not np.isnan(values[t.name][train_rows]).any()
        and not np.isnan(values[t.name][test_rows]).any()
    ]
    if complete:
        y_tr = np.stack([values[t.name][train_rows] for t in complete], axis=1)
        y_te = np.stack([values[t.name][test_rows] for t in complete], axis=1)
        for t, scores in zip(
            complete, _regression_batch(x[train_rows], x[test_rows], y_tr, y_te, folds, seed)
        ):
            out[t.name] = scores
    for t in targets:
        if t.name in out:
            continue
        y = values[t.name]
        missing = np.isnan(y) if t.task == "regression" else y < 0
        tr, te = train_rows[~missing[train_rows]], test_rows[~missing[test_rows]]
        if len(tr) < 3 or len(te) < 1:
            continue
        out[t.name] = probe_target(x[tr], y[tr], x[te], y[te], t.task, folds, seed)
        out[t.name]["n_train"], out[t.name]["n_test"] = len(tr), len(te)
    for t in complete:
        out[t.name]["n_train"], out[t.name]["n_test"] = len(train_rows), len(test_rows)
    return out


# --------------------------------------------------------------------------- suite
@dataclass
class ProbeRun:
    """Everything a probe suite computed (the DataFrames behind the report files)."""

    summary: pd.DataFrame  # one row per target: headline metric per embedding, improvement
    results: pd.DataFrame  # long: embedding, target, task, metric, value, n_train, n_test, hyper
    label_efficiency: pd.DataFrame  # long: embedding, target, task, metric, n_labels, value
    split: pd.DataFrame  # id, split ("train" / "test")
    files: dict[str, Path]


def run_probes(
    embeddings: Mapping[str, object],
    targets: Sequence[str | Target] | None = None,
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    folds: int = 5,
    label_sizes: Iterable[int | None] | None = DEFAULT_LABEL_SIZES,
    label_targets: Sequence[str] | Literal["all"] | None = None,
    progress: bool = False,
    threads: int | None = 1,
) -> ProbeRun:
    """Probe every target with every embedding set on one shared split (no files written).

    ``embeddings``: name -> export path or ``(ids, features, catalogue)``; the
    first is the model, the others baselines. ``targets``: specs for
    :func:`parse_target` (default: :func:`auto_targets` of the primary
    catalogue). ``label_sizes``: training-set sizes of the label-efficiency
    curves (``None`` = all training rows; nested random subsets from ``seed``);
    ``label_targets``: which targets get curves (default: the
    ``HEADLINE_TARGETS`` present, else the first eight; ``"all"``).
    ``threads``: BLAS threads for the fits (None = the library default). The
    matrices are small, so extra threads rarely help, and on busy or
    oversubscribed cores OpenBLAS threads make the fits 10-80x slower.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads):
        return _run_probes(
            embeddings, targets, seed, test_fraction, folds, label_sizes, label_targets, progress
        )


def _run_probes(
    embeddings, targets, seed, test_fraction, folds, label_sizes, label_targets, progress
) -> ProbeRun:
    ids, features, catalogue = load_embedding_sets(embeddings)
    target_list = resolve_targets(targets, catalogue)
    if not target_list:
        raise ValueError("no probe targets: the catalogue has no numeric columns with two values")
    values = {t.name: t.values(catalogue) for t in target_list}
    is_test = make_split(ids, test_fraction, seed)
    test_rows = np.flatnonzero(is_test)
    # Train rows in sorted-id order, then a seeded permutation: the same galaxies
    # in every label-efficiency subset for every embedding set.
    train_rows = np.flatnonzero(~is_test)
    train_rows = train_rows[np.argsort(ids[train_rows], kind="stable")]
    train_rows = train_rows[np.random.default_rng(seed + 1).permutation(len(train_rows))]

    records: list[dict] = []
    names = list(features)
    steps = _progress(names, progress, "probes")
    for name in steps:
        scores = _probe_all(features[name], target_list, values, train_rows, test_rows, folds, seed)
        for t in target_list:
            if t.name not in scores:
                continue
            got = scores[t.name]
            for metric in METRICS[t.task]:
                records.append(
                    {
                        "embedding": name,
                        "target": t.name,
                        "task": t.task,
                        "metric": metric,
                        "value": got[metric],
                        "n_train": int(got["n_train"]),
                        "n_test": int(got["n_test"]),
                        "hyper": got["hyper"],
                    }
                )
    results = pd.DataFrame.from_records(
        records,
        columns=["embedding", "target", "task", "metric", "value", "n_train", "n_test", "hyper"],
    )
    curves = _label_efficiency(
        features, target_list, values, train_rows, test_rows, folds, seed,
        label_sizes, _choose_label_targets(label_targets, target_list), progress,
    )  # fmt: skip
    split = pd.DataFrame({"id": ids, "split": np.where(is_test, "test", "train")})
    return ProbeRun(_summary(results, target_list, names), results, curves, split, {})


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc)


def _choose_label_targets(
    label_targets: Sequence[str] | str | None, targets: list[Target]
) -> list[Target]:
    if label_targets == "all":
        return list(targets)
    by_name = {t.name: t for t in targets}
    if label_targets is None:
        chosen = [by_name[n] for n in HEADLINE_TARGETS if n in by_name]
        return chosen or list(targets[:8])
    missing = [n for n in label_targets if n not in by_name]
    if missing:
        raise KeyError(f"label-efficiency targets {missing} are not among the probe targets")
    return [by_name[n] for n in label_targets]


def _label_efficiency(
    features, targets, values, train_rows, test_rows, folds, seed, sizes, chosen, progress
) -> pd.DataFrame:
    columns = ["embedding", "target", "task", "metric", "n_labels", "value"]
    if sizes is None or not chosen:
        return pd.DataFrame(columns=columns)
    counts = sorted({len(train_rows) if s is None else min(int(s), len(train_rows)) for s in sizes})
    records = []
    jobs = [(name, n) for name in features for n in counts]
    for name, n in _progress(jobs, progress, "label efficiency"):
        subset = train_rows[:n]  # nested subsets: a prefix of one seeded permutation
        scores = _probe_all(features[name], chosen, values, subset, test_rows, folds, seed)
        for t in chosen:
            metric = HEADLINE[t.task]
            value = scores.get(t.name, {}).get(metric, math.nan)
            records.append(
                {"embedding": name, "target": t.name, "task": t.task, "metric": metric,
                 "n_labels": n, "value": value}
            )  # fmt: skip
    return pd.DataFrame.from_records(records, columns=columns)


def _summary(results: pd.DataFrame, targets: list[Target], names: list[str]) -> pd.DataFrame:
    rows = []
    for t in targets:
        metric = HEADLINE[t.task]
        sel = results[(results.target == t.name) & (results.metric == metric)]
        if sel.empty:
            continue
        row = {
            "target": t.name,
            "task": t.task,
            "metric": metric,
            "n_train": int(sel.n_train.iloc[0]),
            "n_test": int(sel.n_test.iloc[0]),
        }
        by_name = dict(zip(sel.embedding, sel.value))
        for name in names:
            row[name] = by_name.get(name, math.nan)
        baselines = [by_name[n] for n in names[1:] if n in by_name and not math.isnan(by_name[n])]
        primary = by_name.get(names[0], math.nan)
        row["improvement"] = primary - max(baselines) if baselines else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def run_probe_suite(
    embeddings: Mapping[str, object],
    out_dir: str | Path,
    targets: Sequence[str | Target] | None = None,
    seed: int = 0,
    **options,
) -> pd.DataFrame:
    """Probes, baselines and label-efficiency curves, written as a report; returns the summary.

    ``embeddings``: ``{"model": path, "pca": path, "random": path}`` (name ->
    export path or ``(ids, features, catalogue)``; the first is the model,
    the rest baselines; ``None`` entries are skipped). Writes into ``out_dir``:
    ``report.md`` (headline table: target, metric, each embedding set,
    improvement of the model over the best baseline; all metrics; curves),
    ``probe_results.csv`` (every number), ``label_efficiency.csv``,
    ``split.csv`` (the shared train/test ids), ``probe_summary.png`` and
    ``label_efficiency.png``. ``options`` go to :func:`run_probes`.
    Returns the summary DataFrame (one row per target).
    """
    run = run_probes(embeddings, targets, seed=seed, **options)
    write_report(run, out_dir, embeddings=embeddings, seed=seed)
    return run.summary


# --------------------------------------------------------------------------- report
def _fmt(value) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub markdown table of ``frame`` (floats to 3 decimals)."""
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def write_report(
    run: ProbeRun,
    out_dir: str | Path,
    embeddings: Mapping[str, object] | None = None,
    seed: int = 0,
) -> dict[str, Path]:
    """Write the report files of a :class:`ProbeRun` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "report": out / "report.md",
        "results": out / "probe_results.csv",
        "label_efficiency": out / "label_efficiency.csv",
        "split": out / "split.csv",
        "summary_png": out / "probe_summary.png",
        "label_efficiency_png": out / "label_efficiency.png",
    }
    run.results.to_csv(files["results"], index=False)
    run.label_efficiency.to_csv(files["label_efficiency"], index=False)
    run.split.to_csv(files["split"], index=False)
    names = [c for c in run.summary.columns if c not in
             ("target", "task", "metric", "n_train", "n_test", "improvement")]  # fmt: skip
    plot_summary(run.summary, names, files["summary_png"])
    plot_label_efficiency(run.label_efficiency, files["label_efficiency_png"])

    n_test = int((run.split.split == "test").sum())
    lines = [
        "# Linear probe report",
        "",
        f"{len(run.split)} galaxies: {len(run.split) - n_test} train, {n_test} test "
        f"(held-out split drawn from the sorted ids with seed {seed}; the same galaxies "
        "for every embedding set, see `split.csv`).",
        "",
        "Embedding sets: "
        + ", ".join(
            f"`{name}`" + (f" ({src})" if isinstance(src, (str, Path)) else "")
            for name, src in (embeddings or {n: None for n in names}).items()
            if name in names
        )
        + ". The first is the model; `improvement` is its score minus the best other set.",
        "",
        "Regression: standardised features, ridge with k-fold-CV strength; R^2 shown. "
        "Classification: logistic regression with k-fold-CV C; balanced accuracy shown.",
        "",
        "## Headline",
        "",
        markdown_table(run.summary),
        "",
        "![summary](probe_summary.png)",
        "",
        "## All metrics",
        "",
    ]
    if not run.results.empty:
        wide = run.results.pivot_table(
            index=["target", "metric"], columns="embedding", values="value", sort=False
        ).reset_index()
        wide = wide[["target", "metric", *[n for n in names if n in wide.columns]]]
        lines.append(markdown_table(wide))
    lines += ["", "## Label efficiency", ""]
    if not run.label_efficiency.empty:
        curves = run.label_efficiency.pivot_table(
            index=["target", "metric", "n_labels"], columns="embedding", values="value", sort=False
        ).reset_index()
        curves = curves[["target", "metric", "n_labels", *[n for n in names if n in curves]]]
        lines += ["![label efficiency](label_efficiency.png)", "", markdown_table(curves)]
    else:
        lines.append("(not computed)")
    lines.append("")
    files["report"].write_text("\n".join(lines))
    run.files.update(files)
    return files


def plot_summary(summary: pd.DataFrame, names: list[str], path: str | Path) -> Path:
    """Grouped bars: the headline metric of every target for every embedding set."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 0.55 * len(summary) + 2), 4.0), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(names))
    positions = np.arange(len(summary))
    for i, name in enumerate(names):
        ax.bar(positions + i * width, summary[name].to_numpy(dtype=float), width, label=name)
    ax.set_xticks(positions + width * (len(names) - 1) / 2)
    ax.set_xticklabels(summary.target, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("R^2 (regression) / balanced accuracy (classes)")
    ax.axhline(0, color="black", lw=0.6)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_label_efficiency(curves: pd.DataFrame, path: str | Path) -> Path | None:
    """One panel per target: headline metric against the number of labelled galaxies."""
    if curves.empty:
        return None
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    targets = list(dict.fromkeys(curves.target))
    ncols = min(4, len(targets))
    nrows = math.ceil(len(targets) / ncols)
    fig = Figure(figsize=(3.4 * ncols, 2.8 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, target in zip(axes, targets):
        sel = curves[curves.target == target]
        for name, group in sel.groupby("embedding", sort=False):
            ax.plot(group.n_labels, group.value, marker="o", ms=3, label=name)
        ax.set_xscale("log")
        sizes = sorted(sel.n_labels.unique())
        ax.set_xticks(sizes, [str(int(n)) for n in sizes])
        ax.xaxis.set_minor_formatter(NullFormatter())  # log minor labels overlap
        ax.set_title(target, fontsize=9)
        ax.set_xlabel("labelled galaxies", fontsize=8)
        ax.set_ylabel(sel.metric.iloc[0], fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[len(targets) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    fig.savefig(path, dpi=110)
    return Path(path)


def discover_embeddings(path: str | Path) -> dict[str, Path | None]:
    """``{"model": path, "pca": ..., "random": ...}`` with the baselines found beside ``path``."""
    from astropt.embed import baseline_paths

    found: dict[str, Path | None] = {"model": Path(path)}
    for name, candidate in baseline_paths(path).items():
        found[name] = candidate if candidate.exists() else None
    return found


# --------------------------------------------------------------------------- command line
@dataclass
class ProbeOptions:
    """Options of ``astropt probe`` (``python probe/linear_probe.py``)."""

    embeddings: str  # embedding export (folder or parquet file)
    out: str = "report"  # report folder
    pca: str | None = None  # pixel-PCA baseline export (default: beside the export)
    random: str | None = None  # random-init baseline export (default: beside the export)
    baselines: bool = True  # false: probe the model's embeddings only
    # columns, 'col>0.5' thresholds, 'col:regression' (default: every numeric column)
    targets: list[str] | None = None
    seed: int = 0  # train/test split, folds and label subsets
    test_fraction: float = 0.2  # galaxies held out for testing
    folds: int = 5  # k of the k-fold CV on the training part
    # training-set sizes of the label-efficiency curves, e.g. 30,100,all ('' to skip)
    label_sizes: list[str] = field(
        default_factory=lambda: ["30", "100", "300", "1000", "3000", "all"]
    )
    label_targets: list[str] | None = None  # targets with label-efficiency curves ('all')
    threads: int = 1  # BLAS threads of the fits

    def __post_init__(self) -> None:
        for size in self.label_sizes:
            if size not in ("all", "") and not size.isdigit():
                raise ValueError(f"label_sizes: {size!r} is neither a count nor 'all'")


def run_probe(opts: ProbeOptions) -> int:
    """Probe an export and its baselines; write the report; print the headline table."""
    from astropt.embed import export_baselines_for, read_manifest

    sets = discover_embeddings(opts.embeddings)
    if opts.pca:
        sets["pca"] = Path(opts.pca)
    if opts.random:
        sets["random"] = Path(opts.random)
    if not opts.baselines:
        sets = {"model": sets["model"]}
    missing = tuple(name for name, path in sets.items() if path is None)
    if missing:
        meta = (read_manifest(opts.embeddings) or {}).get("meta", {})
        if "model_config" in meta:
            print(f"computing the {' and '.join(missing)} baseline(s)", file=sys.stderr)
            sets.update(export_baselines_for(opts.embeddings, which=missing, seed=opts.seed))
        else:
            print(
                f"no {' or '.join(missing)} baseline beside {opts.embeddings} and no record of "
                "its model and data to compute them: probing without",
                file=sys.stderr,
            )
    label_targets = opts.label_targets
    if label_targets == ["all"]:
        label_targets = "all"
    sizes = [None if size in ("all", "") else int(size) for size in opts.label_sizes]
    summary = run_probe_suite(
        sets,
        opts.out,
        targets=opts.targets,
        seed=opts.seed,
        test_fraction=opts.test_fraction,
        folds=opts.folds,
        label_sizes=[s for s in sizes if s != 0] or None,
        label_targets=label_targets,
        threads=opts.threads,
        progress=True,
    )
    print(markdown_table(summary))
    print(f"report: {Path(opts.out) / 'report.md'}", file=sys.stderr)
    return 0


COMMAND = Command(
    ProbeOptions,
    run_probe,
    "Linear probes of an embedding export, with baselines and label-efficiency curves.",
    positional=("embeddings",),
    examples=(
        "astropt probe emb.parquet out=report/ label_sizes=30,all",
        "python probe/linear_probe.py emb.parquet --out report/ --label-sizes 30,all",
    ),
)


def main(argv: list[str] | None = None) -> int:
    """``python probe/linear_probe.py`` (the same as ``astropt probe``)."""
    return run_command(COMMAND, argv, "python probe/linear_probe.py")
