"""Probe fits and metrics: ridge regression and the class-balanced ridge classifier with
inner-CV strength, every metric, the per-split R^2."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from astropt.probe.protocol import RIDGE_ALPHAS, Protocol, Target


def nmad(residuals: np.ndarray) -> float:
    """Normalised median absolute deviation ``1.4826 * median(|r - median(r)|)`` (a robust std)."""
    residuals = np.asarray(residuals, dtype=np.float64)
    return float(1.4826 * np.median(np.abs(residuals - np.median(residuals))))


def angular_error(pred: np.ndarray, truth: np.ndarray, period: float = 180.0) -> np.ndarray:
    """Absolute difference of two angles on a circle of ``period`` (same unit), in [0, period/2]."""
    diff = np.abs(np.asarray(pred, np.float64) - np.asarray(truth, np.float64)) % period
    return np.minimum(diff, period - diff)


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
    """Accuracy, balanced accuracy (mean recall over the classes in ``y``) and macro F1
    (over the classes in ``y`` or ``pred``), as scikit-learn defines them; in numpy
    because the inner CV scores thousands of small predictions."""
    y, pred = np.asarray(y), np.asarray(pred)
    classes = np.union1d(y, pred)
    truth = y[:, None] == classes[None]
    guess = pred[:, None] == classes[None]
    hits = (truth & guess).sum(axis=0)
    support, predicted = truth.sum(axis=0), guess.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = hits / support
        f1 = np.where(support + predicted > 0, 2 * hits / (support + predicted), 0.0)
    return {
        "accuracy": float((y == pred).mean()),
        "balanced_accuracy": float(recall[support > 0].mean()),
        "macro_f1": float(f1.mean()),
    }


def split_r2(y: np.ndarray, pred: np.ndarray, variance: float) -> float:
    """R^2 of one split's test rows: ``1 - mean((y - pred)^2) / variance`` with ``variance``
    the target's over *all* labelled galaxies.

    Averaged over the splits of a k-fold it is the pooled out-of-fold R^2, and it is
    not biased by a small test fold's own variance (scikit-learn's R^2 of one fold is
    low by about ``(1 - R^2) / (n_test - 1)``, which a 30-galaxy fold makes 0.02)."""
    residual = np.asarray(y, np.float64) - np.asarray(pred, np.float64)
    return float(1.0 - np.mean(residual**2) / variance) if variance > 0 else math.nan


def circular_metrics(y: np.ndarray, pred: np.ndarray, period: float) -> dict[str, float]:
    errors = angular_error(pred, y, period)
    return {
        "angular_error": float(errors.mean()),
        "median_angular_error": float(np.median(errors)),
    }


def _metrics(target: Target, y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    if target.task == "regression":
        return regression_metrics(y, pred)
    if target.task == "circular":
        return circular_metrics(y, pred, target.period or 180.0)
    return classification_metrics(y, pred.astype(np.int64))


def _scaling(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of each feature of ``train`` (std 1 for constant features)."""
    mean = train.mean(axis=0)
    scale = train.std(axis=0)
    scale[scale < 1e-12] = 1.0  # constant features carry nothing; avoid dividing by 0
    return mean, scale


def _standardise(train: np.ndarray, *others: np.ndarray):
    mean, scale = _scaling(train)
    return [(x - mean) / scale for x in (train, *others)]


def _ridge_path(x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None):
    """Spectral pieces of centred (optionally row-weighted) ridge: any alpha is one small product.

    Returns ``(basis, eigenvalues, coeffs, x_mean, y_mean)`` such that the ridge
    predictions for ``alpha`` are
    ``((x_new - x_mean) @ basis) @ (coeffs / (eigenvalues + alpha)[:, None]) + y_mean``
    (:func:`_ridge_project`, :func:`_ridge_apply`): ``basis`` holds the
    eigenvectors of ``xc.T @ xc`` and ``coeffs = basis.T @ xc.T @ yc``. With at
    least as many rows as features, the ``d x d`` Gram matrix is diagonalised
    (a fraction of the cost of an SVD of the rows); with fewer, the rows' thin SVD.
    """
    if weights is None:
        x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
        xc, yc = x - x_mean, y - y_mean
    else:
        total = weights.sum()
        x_mean, y_mean = weights @ x / total, weights @ y / total
        root = np.sqrt(weights)[:, None]
        xc, yc = (x - x_mean) * root, (y - y_mean) * root
    if xc.shape[0] >= xc.shape[1]:
        eigenvalues, basis = np.linalg.eigh(xc.T @ xc)
        eigenvalues = np.maximum(eigenvalues, 0.0)  # rounding below zero
        coeffs = basis.T @ (xc.T @ yc)
    else:
        u, singular, vt = np.linalg.svd(xc, full_matrices=False)
        basis, eigenvalues = vt.T, singular**2
        coeffs = singular[:, None] * (u.T @ yc)
    return basis, eigenvalues, coeffs, x_mean, y_mean


def _ridge_project(path, x_new: np.ndarray) -> np.ndarray:
    """``x_new`` in the path's eigenbasis: computed once, shared by every alpha."""
    basis, _, _, x_mean, _ = path
    return (x_new - x_mean) @ basis


def _ridge_apply(path, projected: np.ndarray, alpha: float) -> np.ndarray:
    _, eigenvalues, coeffs, _, y_mean = path
    return projected @ (coeffs / (eigenvalues + alpha)[:, None]) + y_mean


def _ridge_predict(path, x_new: np.ndarray, alpha: float) -> np.ndarray:
    return _ridge_apply(path, _ridge_project(path, x_new), alpha)


def ridge_cv(
    x: np.ndarray,
    y: np.ndarray,
    alphas: np.ndarray = RIDGE_ALPHAS,
    folds: int = 5,
    seed: int = 0,
):
    """Ridge regression of ``y (n, T)`` on ``x (n, d)`` with k-fold CV per target.

    Features are standardised with each training fold's statistics; the alpha
    with the least summed squared validation error is chosen per target, then
    the model is refitted on all rows. Returns ``(alpha (T,), coef (d, T),
    intercept (T,), predict)`` where ``predict(x_new) -> (m, T)`` applies the
    training standardisation. One factorisation per fold serves every alpha and target;
    with a single alpha there is nothing to choose and no CV runs.
    """
    from sklearn.model_selection import KFold

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(len(x), -1)
    alphas = np.asarray(alphas, dtype=np.float64)
    k = min(folds, len(x))
    errors = np.zeros((len(alphas), y.shape[1]))
    if k >= 2 and len(alphas) > 1:
        for train, valid in KFold(k, shuffle=True, random_state=seed).split(x):
            xt, xv = _standardise(x[train], x[valid])
            path = _ridge_path(xt, y[train])
            projected = _ridge_project(path, xv)
            for i, alpha in enumerate(alphas):
                errors[i] += ((_ridge_apply(path, projected, alpha) - y[valid]) ** 2).sum(axis=0)
        best = alphas[np.argmin(errors, axis=0)]
    else:
        best = np.full(y.shape[1], alphas[0] if len(alphas) == 1 else 1.0)
    mean, scale = _scaling(x)
    basis, eigenvalues, coeffs, _, y_mean = _ridge_path((x - mean) / scale, y)
    coef = np.stack(
        [basis @ (coeffs[:, j] / (eigenvalues + a)) for j, a in enumerate(best)], axis=1
    )  # (d, T) on standardised features

    def predict(x_new: np.ndarray) -> np.ndarray:
        return ((np.asarray(x_new, dtype=np.float64) - mean) / scale) @ coef + y_mean

    return best, coef, y_mean, predict


def _balanced_path(x: np.ndarray, y: np.ndarray, classes: np.ndarray):
    """Ridge path of +-1 class indicators with rows weighted by inverse class frequency."""
    counts = (y[:, None] == classes[None]).sum(axis=0)
    weights = (len(y) / (len(classes) * counts))[np.searchsorted(classes, y)]
    indicators = np.where(y[:, None] == classes[None], 1.0, -1.0)
    return _ridge_path(x, indicators, weights)


def ridge_classifier_cv(
    x: np.ndarray,
    y: np.ndarray,
    alphas: np.ndarray = RIDGE_ALPHAS,
    folds: int = 5,
    seed: int = 0,
):
    """Class-balanced ridge classifier with alpha chosen by stratified k-fold CV.

    One ridge column of +-1 indicators per class on standardised features,
    rows weighted by inverse class frequency (scikit-learn's
    ``RidgeClassifier(class_weight="balanced")``); the class with the largest
    decision value wins. The alpha with the best pooled validation balanced
    accuracy is chosen (ties: the strongest); with fewer than two members in
    some class no CV runs (alpha 1, or the only alpha given). A fit is a few
    factorisations, so the repeated k-fold protocol stays fast where logistic
    regression took seconds per fit. Returns ``(alpha, predict)`` with
    ``predict(x_new) -> labels (m,)``.
    """
    from sklearn.model_selection import StratifiedKFold

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    alphas = np.sort(np.asarray(alphas, dtype=np.float64))[::-1]  # strongest first
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        only = classes[0]
        return math.nan, lambda x_new: np.full(len(x_new), only)
    k = min(folds, int(counts.min()))
    best = alphas[0] if len(alphas) == 1 else 1.0
    if k >= 2 and len(alphas) > 1:
        pooled = np.empty((len(alphas), len(y)), dtype=y.dtype)
        for train, valid in StratifiedKFold(k, shuffle=True, random_state=seed).split(x, y):
            xt, xv = _standardise(x[train], x[valid])
            path = _balanced_path(xt, y[train], classes)
            projected = _ridge_project(path, xv)
            for i, alpha in enumerate(alphas):
                pooled[i, valid] = classes[_ridge_apply(path, projected, alpha).argmax(axis=1)]
        scores = [classification_metrics(y, p)["balanced_accuracy"] for p in pooled]
        best = float(alphas[int(np.argmax(scores))])
    mean, scale = _scaling(x)
    path = _balanced_path((x - mean) / scale, y, classes)

    def predict(x_new: np.ndarray) -> np.ndarray:
        standard = (np.asarray(x_new, dtype=np.float64) - mean) / scale
        return classes[_ridge_predict(path, standard, best).argmax(axis=1)]

    return best, predict


def _angle_columns(angles: np.ndarray, period: float) -> np.ndarray:
    phase = 2.0 * np.pi * angles / period
    return np.stack([np.cos(phase), np.sin(phase)], axis=1)


def _columns_to_angle(columns: np.ndarray, period: float) -> np.ndarray:
    return (np.arctan2(columns[:, 1], columns[:, 0]) * period / (2.0 * np.pi)) % period


def fit_predict(
    x_train: np.ndarray,
    x_test: np.ndarray,
    targets: Sequence[Target],
    values: Mapping[str, np.ndarray],
    train_rows: np.ndarray,
    protocol: Protocol,
    seed: int = 0,
) -> dict[str, tuple[np.ndarray, float]]:
    """Fit every target's probe on the labelled ``train_rows``; predict every test row.

    ``x_train``: features of ``train_rows`` (already reduced, if a baseline
    needs it); ``values``: target name -> values of *all* rows. Returns
    target name -> ``(predictions (m,), chosen alpha)``: values, class labels
    or angles in the target's period. Regression and circular targets with no
    missing training labels share one factorisation per inner fold.
    """
    out: dict[str, tuple[np.ndarray, float]] = {}
    batch, columns = [], []
    for t in targets:
        y = values[t.name][train_rows]
        if t.task == "classification":
            labelled = y >= 0
            if labelled.sum() < 2:
                continue
            alpha, predict = ridge_classifier_cv(
                x_train[labelled], y[labelled], protocol.alphas, protocol.inner_folds, seed
            )
            out[t.name] = (predict(x_test).astype(np.float64), alpha)
            continue
        y_cols = _angle_columns(y, t.period or 180.0) if t.task == "circular" else y[:, None]
        if not np.isnan(y).any():
            batch.append(t)
            columns.append(y_cols)
            continue
        labelled = ~np.isnan(y)
        if labelled.sum() < 3:
            continue
        alpha, _, _, predict = ridge_cv(
            x_train[labelled], y_cols[labelled], protocol.alphas, protocol.inner_folds, seed
        )
        out[t.name] = (_from_columns(t, predict(x_test)), float(np.median(alpha)))
    if batch:
        alpha, _, _, predict = ridge_cv(
            x_train, np.concatenate(columns, axis=1), protocol.alphas, protocol.inner_folds, seed
        )
        pred = predict(x_test)
        start = 0
        for t, cols in zip(batch, columns):
            width = cols.shape[1]
            chosen = float(np.median(alpha[start : start + width]))
            out[t.name] = (_from_columns(t, pred[:, start : start + width]), chosen)
            start += width
    return out


def _from_columns(target: Target, pred: np.ndarray) -> np.ndarray:
    if target.task == "circular":
        return _columns_to_angle(pred, target.period or 180.0)
    return pred[:, 0]
